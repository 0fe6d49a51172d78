"""Modules that run the kernel ops: ``Int8Conv2d`` / ``Int8Linear`` (affine u8 activations, s8
per-channel weights, from a layer the quantizer calibrated under the ``torch`` contract) and
``SparseConv2d`` (fp32, CSR weights from unstructured pruning).

An ``Int8Conv2d`` takes float input (quantized on entry with its calibrated scale / zero point) or
u8 channels_last codes from a producer that already requantized to exactly those parameters, and
returns float32 channels_last (or u8 codes for the next int8 layer, when the converter chains them).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

from edgecompress.kernels import ops

ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}
SPARSE_PLAN_HEADER = 64  # int32s before a CPU plan's nonzero offsets (cpp_kernels/src/ops.cpp, kSpHeader)


class Int8Conv2d(nn.Module):
    def __init__(self, weight_q: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor | None,
                 bias: torch.Tensor | None, x_scale: float, x_zero_point: int, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1):
        super().__init__()
        if weight_q.dtype != torch.int8 or weight_q.dim() != 4:
            raise ValueError(f"weight_q must be int8 codes [OC, IC/groups, KH, KW], got {weight_q.dtype} {tuple(weight_q.shape)}")
        oc = weight_q.shape[0]
        self.out_channels, self.in_channels = oc, weight_q.shape[1] * groups
        self.kernel_size = tuple(weight_q.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self.x_scale, self.x_zero_point = float(x_scale), int(x_zero_point)
        self.activation = 0
        self.out_qparams: tuple[float, int] | None = None  # set by the converter to emit u8 codes
        self.register_buffer("weight_q", weight_q.contiguous())
        self.register_buffer("w_packed", ops.int8_pack_weight(self.weight_q, groups))
        self.register_buffer("w_scale", w_scale.detach().float().contiguous())
        self.register_buffer("w_zero_point", (w_zero_point if w_zero_point is not None
                                              else torch.zeros(oc)).to(torch.int32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def _apply(self, fn, recurse=True):
        # .to()/.cuda() move the int8 codes; the packed layout is device-specific: pack again there
        super()._apply(fn, recurse)
        if self.w_packed.device != self.weight_q.device or self.w_packed.dtype != torch.int8:
            self.w_packed = ops.int8_pack_weight(self.weight_q, self.groups)
        return self

    @classmethod
    def from_fake_quant(cls, fq) -> "Int8Conv2d":
        from edgecompress.quantize.contracts import quantize_codes

        _check_affine(fq)
        w_q = quantize_codes(fq.weight.detach(), fq.w_scale.view(-1, 1, 1, 1), 0, -127, 127, fq.contract).to(torch.int8)
        return cls(w_q, fq.w_scale, None, fq.bias, fq.act_scale.item(), int(fq.act_zero_point.item()), fq.stride,
                   _padding(fq), fq.dilation, fq.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            x = torch.ops.edgecompress.quantize_u8(x.contiguous(memory_format=torch.channels_last), self.x_scale,
                                                   self.x_zero_point)
        if self.out_qparams is None:
            out_scale, out_zp, out_dtype = 1.0, 0, torch.float32
        else:
            (out_scale, out_zp), out_dtype = self.out_qparams, torch.uint8
        b = self._buffers  # (self.<buffer> goes through nn.Module.__getattr__: ~1 us each here, per call)
        return torch.ops.edgecompress.int8_conv2d(
            x, self.x_scale, self.x_zero_point, b["w_packed"], b["w_scale"], b["w_zero_point"], b["bias"],
            self.out_channels, list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation),
            self.groups, self.activation, out_scale, out_zp, out_dtype)

    def extra_repr(self) -> str:
        act = {v: k for k, v in ACTIVATIONS.items()}[self.activation]
        out = "float32" if self.out_qparams is None else f"u8(scale={self.out_qparams[0]:.4g}, zp={self.out_qparams[1]})"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, x_scale={self.x_scale:.4g}, "
                f"x_zero_point={self.x_zero_point}, activation={act}, out={out}")


class Int8Linear(nn.Module):
    """A Linear as the 1x1 int8 conv of a [N, C, 1, 1] view (same memory in both layouts)."""

    def __init__(self, conv: Int8Conv2d):
        super().__init__()
        self.conv = conv
        self.in_features, self.out_features = conv.in_channels, conv.out_channels

    @classmethod
    def from_fake_quant(cls, fq) -> "Int8Linear":
        from edgecompress.quantize.contracts import quantize_codes

        _check_affine(fq)
        w = fq.weight.detach().view(fq.out_features, fq.in_features, 1, 1)
        w_q = quantize_codes(w, fq.w_scale.view(-1, 1, 1, 1), 0, -127, 127, fq.contract).to(torch.int8)
        return cls(Int8Conv2d(w_q, fq.w_scale, None, fq.bias, fq.act_scale.item(), int(fq.act_zero_point.item())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.conv(x.reshape(-1, self.in_features, 1, 1))
        return y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """fp32 conv with CSR weights (groups=1). ``from_conv`` keeps exactly the nonzero weights."""

    def __init__(self, row_ptr, col_idx, values, bias, in_channels, kernel_size, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1)):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, row_ptr.numel() - 1
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.activation = 0
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("col_idx", col_idx)
        self.register_buffer("values", values)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self._plans: dict = {}  # CPU plans by input size (not state: rebuilt on demand)
        self.plan_choices: dict = {}  # input size -> "L1 blocks" / "one block": what the timing picked
        self.autotune = True  # time the blocked and the one-block plan on the first input of each size

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "SparseConv2d":
        if conv.groups != 1:
            raise ValueError("SparseConv2d handles groups=1 convolutions only")
        rp, ci, v = ops.sparse_pack(conv.weight)
        return cls(rp, ci, v, conv.bias, conv.in_channels, conv.kernel_size, conv.stride, _padding(conv),
                   conv.dilation)

    @property
    def density(self) -> float:
        return self.values.numel() / max(1, self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        args = (list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation))
        b = self._buffers  # (self.<buffer> goes through nn.Module.__getattr__: ~1 us each here, per call)
        rp, ci = b["row_ptr"], b["col_idx"]
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return torch.ops.edgecompress.sparse_conv2d(x, rp, ci, b["values"], b["bias"], *args, self.activation)
        # the CPU plan (input layout + every nonzero's source offset) is built once per input size
        key = (x.shape[1], x.shape[2], x.shape[3], rp.data_ptr(), ci.data_ptr(), rp._version, ci._version)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan_for(x, args)
            if len(self._plans) >= 4:
                self._plans.clear()
            self._plans[key] = plan
        return torch.ops.edgecompress.sparse_conv2d_planned(x, plan, rp, b["values"], b["bias"], *args, self.activation)

    def _plan_for(self, x: torch.Tensor, args: tuple) -> torch.Tensor:
        """The plan for this input size. When the kernel's default plan splits the input channels into
        L1-sized blocks, a one-block plan is timed against it on ``x`` (3 alternating rounds after a warm
        call each) and the faster is kept: which wins depends on the layer and its density (one block
        measured 0.63-1.42x the blocked plan's speed on ResNet-50's 1x1 layers at 50-90% sparsity,
        ``benchmarks/sparse_plan_ab.py``)."""
        E = torch.ops.edgecompress
        shape = (x.shape[1], x.shape[2], x.shape[3])
        plan = E.sparse_plan(self.row_ptr, self.col_idx, *shape, *args)
        if not self.autotune or not ops.compiled() or plan.numel() == SPARSE_PLAN_HEADER + self.col_idx.numel():
            return plan  # the Python fallback, or already one block (no block table)
        candidates = {"L1 blocks": plan, "one block": E.sparse_plan(self.row_ptr, self.col_idx, *shape, *args, shape[0])}
        times: dict = {name: [] for name in candidates}
        with torch.no_grad():
            for rnd in range(4):
                for name, p in candidates.items():
                    t0 = time.perf_counter()
                    E.sparse_conv2d_planned(x, p, self.row_ptr, self.values, self.bias, *args, self.activation)
                    if rnd:  # round 0 warms both
                        times[name].append(time.perf_counter() - t0)
        best = min(times, key=lambda n: statistics.median(times[n]))
        self.plan_choices[shape] = best
        return candidates[best]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, density={self.density:.3f}")


def _padding(conv) -> tuple[int, int]:
    if isinstance(conv.padding, str) or getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"{type(conv).__name__}: padding={conv.padding!r}, padding_mode="
                         f"{getattr(conv, 'padding_mode', 'zeros')!r}; the kernels take explicit zero padding")
    return tuple(conv.padding)


def _check_affine(fq) -> None:
    c = fq.contract
    if not (c.act_qmin == 0 and c.act_qmax == 255 and c.convention == "divide" and c.rounding == "half_even"):
        from edgecompress.errors import ConfigError

        raise ConfigError(f"the int8 kernels run the affine u8 contract ('torch'/'onnx'); this layer was quantized "
                          f"under {c.name!r} ({c.act_scheme}, {c.rounding}); quantize with target='torch'")
