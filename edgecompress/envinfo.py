"""What is installed and whether each backend actually works here (``edgecompress env``)."""

from __future__ import annotations

import importlib
import importlib.util
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


def kernels_status() -> str:
    """The C++ kernels without compiling them: a cached build for these sources, or what a first use
    will need (compiler, ninja, sources) and the CPU's int8 features."""
    import os
    import shutil

    from edgecompress.kernels import _build

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cpu = [n for n, f in (("amx", "amx_int8"), ("avx512_vnni", "avx512_vnni"), ("avx2", "avx2")) if f in flags]
    if _build.disabled():
        return "disabled (EDGECOMPRESS_DISABLE_KERNELS): PyTorch reference path"
    src = _build.source_dir()
    if src is None:
        return "sources not shipped with this installation: PyTorch reference path"
    key = _build.build_key(src, _build.SOURCES)
    built = (_build.cache_dir() / key / f"edgecompress_kernels_{key}.so").is_file()
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    ninja = shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None
    state = f"built ({_build.cache_dir() / key})" if built else (
        "compiles on first use" if cxx and ninja else
        f"cannot build here ({'no C++ compiler' if not cxx else 'no ninja: pip install ninja'}): PyTorch reference path")
    return f"{state}; cpu int8 paths: {', '.join(cpu + ['ref'])}"


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
    try:
        info["backends"]["edgecompress-kernels"] = {"version": __version__, "status": kernels_status()}
    except Exception as e:  # noqa: BLE001 - reported, not raised
        info["backends"]["edgecompress-kernels"] = {"version": __version__, "status": f"not usable: {e}"}
    return info
