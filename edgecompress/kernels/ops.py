"""The ``torch.ops.edgecompress`` ops: loaded from the compiled library, or, where it cannot be built,
defined here with the same schemas on top of the PyTorch reference (one warning). Fake (meta)
implementations are registered for both, so the ops trace under ``torch.compile``/``torch.export``.

>>> from edgecompress.kernels import ops
>>> ops.load()            # compiles cpp_kernels/ on first use (~30 s), cached afterwards   # doctest: +SKIP
'avx512_vnni'
"""

from __future__ import annotations

import threading

import torch

from edgecompress.kernels import _build, reference

SCHEMAS = {
    "kernel_isa": "kernel_isa() -> str",
    "set_kernel_isa": "set_kernel_isa(str isa) -> str",
    "kernel_threads": "kernel_threads() -> int",
    "approx_reciprocal": "approx_reciprocal(Tensor x) -> Tensor",
    "quantize_u8": "quantize_u8(Tensor x, float scale, int zero_point) -> Tensor",
    "int8_pack_weight": "int8_pack_weight(Tensor weight, int groups) -> Tensor",
    "int8_conv2d": ("int8_conv2d(Tensor x, float x_scale, int x_zero_point, Tensor w_packed, Tensor w_scale, "
                    "Tensor w_zero_point, Tensor? bias, int out_channels, int[2] kernel_size, int[2] stride, "
                    "int[2] padding, int[2] dilation, int groups, int activation, float out_scale, "
                    "int out_zero_point, ScalarType out_dtype) -> Tensor"),
    "sparse_conv2d": ("sparse_conv2d(Tensor x, Tensor row_ptr, Tensor col_idx, Tensor values, Tensor? bias, "
                      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int activation) -> Tensor"),
    "sparse_plan": ("sparse_plan(Tensor row_ptr, Tensor col_idx, int in_channels, int height, int width, "
                    "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int block_channels=0) -> Tensor"),
    "sparse_conv2d_planned": ("sparse_conv2d_planned(Tensor x, Tensor plan, Tensor row_ptr, Tensor values, Tensor? bias, "
                              "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
                              "int activation) -> Tensor"),
}

_lock = threading.Lock()
_state: dict = {"backend": None, "reason": None, "so": None}
_libs: list = []  # keep torch.library.Library objects alive


def load(verbose: bool = False) -> str:
    """Make the ops available; returns the backend: the compiled path's ISA (``avx512_vnni``,
    ``avx2``, ``ref``) or ``"python"`` (the reference fallback)."""
    with _lock:
        if _state["backend"] is None:
            if _build.disabled():
                _state["reason"] = "EDGECOMPRESS_DISABLE_KERNELS is set"
                _define_python_ops()
            else:
                try:
                    _state["so"] = _build.build_and_load(verbose=verbose)
                    _state["backend"] = "cpp"
                except Exception as e:  # noqa: BLE001 - any build/load failure means the fallback
                    _state["reason"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                    _build.warn_fallback(_state["reason"])
                    _define_python_ops()
            _register_fakes()
    return backend()


def backend() -> str:
    if _state["backend"] is None:
        return "unloaded"
    if _state["backend"] == "python":
        return "python"
    return torch.ops.edgecompress.kernel_isa()


def compiled() -> bool:
    load()
    return _state["backend"] == "cpp"


def fallback_reason() -> str | None:
    return _state["reason"]


def _define_python_ops() -> None:
    lib = torch.library.Library("edgecompress", "DEF")
    for schema in SCHEMAS.values():
        lib.define(schema)
    lib.impl("kernel_isa", lambda: "python", "CompositeExplicitAutograd")

    def set_isa(isa: str) -> str:
        if isa not in ("python", "ref"):
            raise RuntimeError(f"set_kernel_isa: the C++ kernels are not built ({_state['reason']}); only the Python "
                               "reference path exists")
        return "python"

    lib.impl("set_kernel_isa", set_isa, "CompositeExplicitAutograd")
    lib.impl("kernel_threads", lambda: torch.get_num_threads(), "CompositeExplicitAutograd")
    def approx_reciprocal(x):
        raise RuntimeError(f"approx_reciprocal needs the compiled C++ kernels (RCPPS cannot be emulated bit for bit): "
                           f"{_state['reason']}")

    lib.impl("approx_reciprocal", approx_reciprocal, "CPU")
    lib.impl("quantize_u8", reference.quantize_u8, "CPU")
    lib.impl("int8_pack_weight", reference.pack_weight, "CPU")
    lib.impl("int8_conv2d", reference.int8_conv2d, "CPU")
    lib.impl("sparse_conv2d", reference.sparse_conv2d, "CPU")
    lib.impl("sparse_plan", reference.sparse_plan, "CPU")
    lib.impl("sparse_conv2d_planned", reference.sparse_conv2d_planned, "CPU")
    _libs.append(lib)
    _state["backend"] = "python"


def _register_fakes() -> None:
    @torch.library.register_fake("edgecompress::approx_reciprocal", lib=_fake_lib())
    def _(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("edgecompress::quantize_u8", lib=_fake_lib())
    def _(x, scale, zero_point):
        fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return torch.empty(x.shape, dtype=torch.uint8, device=x.device).contiguous(memory_format=fmt)

    @torch.library.register_fake("edgecompress::int8_pack_weight", lib=_fake_lib())
    def _(weight, groups):
        oc, icg, kh, kw = weight.shape
        plan = reference.pack_plan_cuda if weight.device.type == "cuda" else reference.pack_plan
        return weight.new_empty((plan(oc, icg, kh, kw, groups)["total"],), dtype=torch.int8)

    @torch.library.register_fake("edgecompress::int8_conv2d", lib=_fake_lib())
    def _(x, x_scale, x_zero_point, w_packed, w_scale, w_zero_point, bias, out_channels, kernel_size, stride,
          padding, dilation, groups, activation, out_scale, out_zero_point, out_dtype):
        return torch.empty(_conv_out_shape(x, out_channels, kernel_size, stride, padding, dilation), dtype=out_dtype,
                           device=x.device).contiguous(
            memory_format=torch.channels_last)

    @torch.library.register_fake("edgecompress::sparse_conv2d", lib=_fake_lib())
    def _(x, row_ptr, col_idx, values, bias, kernel_size, stride, padding, dilation, activation):
        return x.new_empty(_conv_out_shape(x, row_ptr.shape[0] - 1, kernel_size, stride, padding, dilation))

    @torch.library.register_fake("edgecompress::sparse_plan", lib=_fake_lib())
    def _(row_ptr, col_idx, in_channels, height, width, kernel_size, stride, padding, dilation, block_channels=0):
        # the plan's length depends on the nonzeros' layout (its channel-block table)
        return row_ptr.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int32)

    @torch.library.register_fake("edgecompress::sparse_conv2d_planned", lib=_fake_lib())
    def _(x, plan, row_ptr, values, bias, kernel_size, stride, padding, dilation, activation):
        return x.new_empty(_conv_out_shape(x, row_ptr.shape[0] - 1, kernel_size, stride, padding, dilation))


def _conv_out_shape(x, out_channels, kernel_size, stride, padding, dilation) -> tuple:
    n, _, h, w = x.shape
    return (n, out_channels, reference.conv_out_size(h, kernel_size[0], stride[0], padding[0], dilation[0]),
            reference.conv_out_size(w, kernel_size[1], stride[1], padding[1], dilation[1]))


def _fake_lib():
    lib = torch.library.Library("edgecompress", "FRAGMENT")
    _libs.append(lib)
    return lib


# ---- thin typed wrappers (load on first call) ------------------------------------------------------
def approx_reciprocal(x: torch.Tensor) -> torch.Tensor:
    """This CPU's RCPPS approximation of 1/x (float32; x86 only; needs the compiled kernels)."""
    load()
    return torch.ops.edgecompress.approx_reciprocal(x)


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    load()
    return torch.ops.edgecompress.quantize_u8(x, float(scale), int(zero_point))


def int8_pack_weight(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    load()
    return torch.ops.edgecompress.int8_pack_weight(weight, int(groups))


def int8_conv2d(x, x_scale, x_zero_point, w_packed, w_scale, w_zero_point, bias, out_channels, kernel_size,
                stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, activation=0, out_scale=1.0,
                out_zero_point=0, out_dtype=torch.float32) -> torch.Tensor:
    load()
    return torch.ops.edgecompress.int8_conv2d(
        x, float(x_scale), int(x_zero_point), w_packed, w_scale, w_zero_point, bias, int(out_channels),
        list(kernel_size), list(stride), list(padding), list(dilation), int(groups), int(activation),
        float(out_scale), int(out_zero_point), out_dtype)


def sparse_pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR (row_ptr, col_idx, values) of a conv weight [OC, IC, KH, KW] over its nonzeros, columns
    ``ic*KH*KW + kh*KW + kw``."""
    w = weight.detach().float().flatten(1)
    nz = w != 0
    row_ptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    row_ptr[1:] = nz.sum(1).cumsum(0)
    cols = nz.nonzero()[:, 1]  # row-major order: rows ascending, columns ascending within a row
    return row_ptr.to(torch.int32), cols.to(torch.int32).contiguous(), w[nz].contiguous()


def sparse_conv2d(x, row_ptr, col_idx, values, bias, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  activation=0) -> torch.Tensor:
    load()
    return torch.ops.edgecompress.sparse_conv2d(x, row_ptr, col_idx, values, bias, list(kernel_size), list(stride),
                                                list(padding), list(dilation), int(activation))


def sparse_plan(row_ptr, col_idx, in_channels, height, width, kernel_size, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), block_channels: int = 0) -> torch.Tensor:
    """The CPU kernel's plan for these CSR weights on a ``in_channels x height x width`` input: the
    input layout and every nonzero's source offset, computed once (``SparseConv2d`` caches it per input
    size) instead of on every ``sparse_conv2d`` call. ``block_channels``: input channels per block of
    the SpMM (0: sized for L1; ``in_channels`` or more: one block)."""
    load()
    return torch.ops.edgecompress.sparse_plan(row_ptr, col_idx, int(in_channels), int(height), int(width),
                                              list(kernel_size), list(stride), list(padding), list(dilation),
                                              int(block_channels))


def sparse_conv2d_planned(x, plan, row_ptr, values, bias, kernel_size, stride=(1, 1), padding=(0, 0),
                          dilation=(1, 1), activation=0) -> torch.Tensor:
    load()
    return torch.ops.edgecompress.sparse_conv2d_planned(x, plan, row_ptr, values, bias, list(kernel_size),
                                                        list(stride), list(padding), list(dilation), int(activation))


def set_kernel_isa(isa: str) -> str:
    load()
    return torch.ops.edgecompress.set_kernel_isa(isa)
