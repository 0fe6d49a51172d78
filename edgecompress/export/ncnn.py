"""ncnn export through pnnx (TorchScript trace -> pnnx executable, exit status checked), verified in
the ncnn Python runtime. fp32 passes pnnx ``fp16=0`` (pnnx's default, ``fp16=1``, stores fp16
weights) and runs with ncnn's fp16/bf16 storage and arithmetic off; fp16 stores fp16 weights and
runs with ncnn's defaults (fp16 storage/arithmetic where the CPU has it). int8 rewrites pnnx's fp32
model with edgecompress's scales (``ncnn_int8``)."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import BackendUnavailableError, ExportError
from edgecompress.export.base import Exporter, Runner

INPUT_BLOB, OUTPUT_BLOB = "in0", "out0"


def pnnx_executable() -> str:
    exe = shutil.which("pnnx")
    if exe is None and importlib.util.find_spec("pnnx") is not None:
        import pnnx

        exe = getattr(pnnx, "EXEC_PATH", None)
    if not exe:
        raise BackendUnavailableError("the pnnx converter is not installed; pip install pnnx")
    return exe


def ncnn_net(param: str | Path, bin_: str | Path, threads: int = 1, precision: str = "fp32", **opts):
    """A loaded ncnn.Net (options set before loading, as ncnn requires).

    ``precision="fp32"`` turns off ncnn's fp16/bf16 storage and arithmetic. ncnn enables fp16
    storage by default on CPUs with F16C/AVX512-FP16 (x86) or fp16 ARM cores, which alone moves
    ResNet-20 logits by ~1e-3; an fp32 artifact is validated and timed in fp32.
    """
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    if precision == "fp32":
        for opt in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
            setattr(net.opt, opt, False)
    for k, v in opts.items():  # any other ncnn.Option field, e.g. use_winograd_convolution=False
        if not hasattr(net.opt, k):
            raise ExportError(f"ncnn.Option has no field {k!r}")
        setattr(net.opt, k, v)
    if net.load_param(str(param)) != 0 or net.load_model(str(bin_)) != 0:
        raise ExportError(f"ncnn could not load {param} / {bin_}")
    return net


def ncnn_run(net, x: np.ndarray) -> np.ndarray:
    """Run a float32 NCHW batch one image at a time (ncnn has no batch axis), a new Extractor each.

    ``ncnn.Mat(array)`` does not copy: it points into the NumPy buffer, and ncnn reads it only when
    ``extract`` runs the graph. The array (and the Mat) must therefore stay alive until then; a
    temporary passed straight to ``input`` may be freed and overwritten first (seen: int8 layers
    reading garbage, different on every run).
    """
    import ncnn

    outs = []
    for img in x:
        arr = np.ascontiguousarray(img, dtype=np.float32)
        mat = ncnn.Mat(arr)
        with net.create_extractor() as ex:
            ex.input(INPUT_BLOB, mat)
            ret, out = ex.extract(OUTPUT_BLOB)
            if ret != 0:
                raise ExportError(f"ncnn extract({OUTPUT_BLOB!r}) failed with {ret}")
            outs.append(np.array(out).reshape(-1))
    return np.stack(outs)


class NcnnExporter(Exporter):
    runtime = "ncnn"
    precisions = ("fp32", "fp16")

    def require(self) -> None:
        pnnx_executable()
        if importlib.util.find_spec("ncnn") is None:
            raise BackendUnavailableError("the ncnn runtime is not installed; pip install ncnn")

    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        tag = ".fp16" if self.cfg.precision == "fp16" else ""
        return run_pnnx(model, example_inputs[0][:1], workdir, f"model{tag}", fp16=self.cfg.precision == "fp16")

    def load(self, paths: dict[str, Path]) -> Runner:
        net = ncnn_net(paths["ncnn_param"], paths["ncnn_bin"], self.cfg.threads, self.cfg.precision)
        return lambda x: ncnn_run(net, x)


def run_pnnx(model: nn.Module, x: torch.Tensor, workdir: Path, stem: str, fp16: bool = False) -> dict[str, Path]:
    """Trace ``model`` and convert it with the pnnx executable into ``workdir/stem.ncnn.{param,bin}``;
    pnnx's own message is raised as an ExportError when it fails."""
    pt = workdir / f"{stem}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.jit.trace(model, (x,), check_trace=False).save(str(pt))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"pnnx needs a TorchScript trace and torch.jit.trace failed: {e}") from e
    shape = ",".join(str(d) for d in x.shape)
    param, bin_ = workdir / f"{stem}.ncnn.param", workdir / f"{stem}.ncnn.bin"
    cmd = [pnnx_executable(), pt.name, f"inputshape=[{shape}]f32", f"fp16={int(fp16)}",
           f"ncnnparam={param.name}", f"ncnnbin={bin_.name}"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0 or not param.is_file() or not bin_.is_file():
        raise ExportError(f"pnnx exited with {proc.returncode}: {proc.stderr[-2000:] or proc.stdout[-2000:]}")
    _check_layers(param)
    return {"ncnn_param": param, "ncnn_bin": bin_}


def _check_layers(param: Path) -> None:
    """pnnx writes ops it cannot lower as layers ncnn does not have (``aten::erfinv``...), which
    only fail at load time with a terse message; name them here."""
    import ncnn

    bad = {}
    for ln in param.read_text().split("\n")[2:]:
        f = ln.split()
        if f and ncnn.layer_to_index(f[0]) < 0:
            bad.setdefault(f[0], f[1])
    if bad:
        ops = ", ".join(f"{t} (layer {n})" for t, n in bad.items())
        raise ExportError(f"the ncnn backend has no layer for op(s) {ops}: pnnx could not lower them; replace them in "
                          "the model with ops ncnn supports, or export to onnx instead")


class NcnnInt8Exporter(NcnnExporter):
    """ncnn int8 from edgecompress's scales (``ncnn`` contract): pnnx's fp32 model rewritten with
    int8 weights, our input scales, requantize fusion between int8 convolutions, and an
    ncnn2table-format ``.table`` of the same calibration.

    ``runtime_options``: the ncnn options this artifact is validated and timed with. ncnn's int8
    winograd path (3x3 stride 1) was slower than its int8 direct/GEMM path here (ResNet-20, batch 1,
    2 threads, AVX512-VNNI: 2.12 vs 1.42 ms median, fp32 2.07 ms), so it is off by default; the
    integers are identical either way."""

    precisions = ("int8",)
    contract = "ncnn"
    runtime_options = {"use_winograd_convolution": False}

    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        from edgecompress.export.ncnn_int8 import write_ncnn_int8
        from edgecompress.quantize.ptq import set_quant_enabled_

        fmodel = set_quant_enabled_(copy.deepcopy(model).eval(), False)  # the float graph (BN folded) pnnx converts
        fp32 = run_pnnx(fmodel, example_inputs[0][:1], workdir, "float")
        out = {"ncnn_param": workdir / "model.int8.ncnn.param", "ncnn_bin": workdir / "model.int8.ncnn.bin",
               "ncnn_table": workdir / "model.int8.table"}
        self.plans = write_ncnn_int8(fp32["ncnn_param"], fp32["ncnn_bin"], model, out["ncnn_param"], out["ncnn_bin"],
                                     out["ncnn_table"])
        return out

    def notes(self) -> dict:
        plans = getattr(self, "plans", None)
        if plans is None:
            return {}
        return {"int8_layers": sum(p.term != 0 for p in plans), "requantized_layers": sum(p.term > 100 for p in plans),
                "float_layers": {p.layer: p.reason for p in plans if p.term == 0},
                "runtime_options": self.runtime_options}

    def load(self, paths: dict[str, Path]) -> Runner:
        net = ncnn_net(paths["ncnn_param"], paths["ncnn_bin"], self.cfg.threads, "fp32", **self.runtime_options)
        return lambda x: ncnn_run(net, x)

    def locate(self, model: nn.Module, paths: dict[str, Path], inputs: torch.Tensor) -> dict | None:
        from edgecompress.export.ncnn_int8 import layer_diffs, plans_of

        rows = layer_diffs(paths["ncnn_param"], paths["ncnn_bin"], model, plans_of(paths["ncnn_param"], paths["ncnn_bin"], model),
                           inputs, self.cfg.threads, **self.runtime_options)
        # bit-exact where the simulation has RCPPS; with an exact reciprocal (no compiled kernels) ncnn's
        # depthwise kernel is up to ~2.4e-4 of the range off: 1e-3 flags real faults only
        return next((r for r in rows if r["max_rel_diff"] > 1e-3), None)
