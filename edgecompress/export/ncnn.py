"""ncnn fp32 export through pnnx (TorchScript trace -> pnnx executable), verified in the ncnn
Python runtime. pnnx writes fp16 weights by default; fp32 artifacts pass ``fp16=0``."""

from __future__ import annotations

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
    name = "ncnn"
    runtime = "ncnn"

    def require(self) -> None:
        pnnx_executable()
        if importlib.util.find_spec("ncnn") is None:
            raise BackendUnavailableError("the ncnn runtime is not installed; pip install ncnn")

    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        x = example_inputs[0][:1]
        pt = workdir / "model.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, (x,), check_trace=False).save(str(pt))
        shape = ",".join(str(d) for d in x.shape)
        cmd = [pnnx_executable(), pt.name, f"inputshape=[{shape}]f32", f"fp16={0 if self.cfg.precision == 'fp32' else 1}",
               "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin"]
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ExportError(f"pnnx exited with {proc.returncode}: {proc.stderr[-2000:] or proc.stdout[-2000:]}")
        return {"ncnn_param": workdir / "model.ncnn.param", "ncnn_bin": workdir / "model.ncnn.bin"}

    def load(self, paths: dict[str, Path]) -> Runner:
        net = ncnn_net(paths["ncnn_param"], paths["ncnn_bin"], self.cfg.threads, self.cfg.precision)
        return lambda x: ncnn_run(net, x)
