"""What is installed and whether each backend actually works here (``edgecompress env``)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import subprocess


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _probe_onnxruntime() -> str:
    import onnxruntime as ort

    return "usable (" + ", ".join(ort.get_available_providers()) + ")"


def _probe_ncnn() -> str:
    import ncnn
    import numpy as np

    m = ncnn.Mat(np.ones((1, 2, 2), dtype=np.float32))
    return f"usable (vulkan GPUs: {ncnn.get_gpu_count()}, Mat ok: {m.w}x{m.h}x{m.c})"


def _probe_pnnx() -> str:
    from edgecompress.export.ncnn import pnnx_executable

    exe = pnnx_executable()
    subprocess.run([exe], capture_output=True, timeout=30)
    return f"usable ({exe})"


def _probe_tensorrt() -> str:
    import tensorrt  # noqa: F401
    import torch

    if not torch.cuda.is_available():
        return "installed, not usable: no CUDA GPU"
    return "usable"


def _probe_torch() -> str:
    import torch

    cuda = torch.cuda.is_available()
    return f"usable (cpu capability {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, cuda {cuda})"


_BACKENDS = [
    ("torch", "torch", _probe_torch),
    ("torchvision", "torchvision", None),
    ("numpy", "numpy", None),
    ("onnx", "onnx", None),
    ("onnxscript", "onnxscript", None),
    ("onnxruntime", "onnxruntime", _probe_onnxruntime),
    ("ncnn", "ncnn", _probe_ncnn),
    ("pnnx", "pnnx", _probe_pnnx),
    ("torch-pruning", "torch_pruning", None),
    ("tensorrt", "tensorrt", _probe_tensorrt),
]


def environment() -> dict:
    from edgecompress import __version__

    info = {"edgecompress": __version__, "python": platform.python_version(), "machine": platform.machine(),
            "backends": {}}
    for dist, mod, probe in _BACKENDS:
        ver = _version(dist)
        if ver is None:
            status = f"not installed (pip install {dist})"
        else:
            try:
                importlib.import_module(mod)
                status = probe() if probe else "usable"
            except Exception as e:  # noqa: BLE001 - reported, not raised
                status = f"installed, not usable: {type(e).__name__}: {e}"
        info["backends"][dist] = {"version": ver, "status": status}
    return info
