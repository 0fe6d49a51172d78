"""Compile ``cpp_kernels/`` on first use (``torch.utils.cpp_extension``, ninja) into a cache keyed by
the sources, the torch version and the flags, then load it. A machine without a compiler gets one
warning and the PyTorch reference path; ``EDGECOMPRESS_DISABLE_KERNELS=1`` forces that path."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

# -fopenmp: at::parallel_for is a header template that runs its body through `#pragma omp parallel`
# (torch's CPU build uses OpenMP); compiled without it, every op of this library runs on one thread.
CFLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
SOURCES = ["ops.cpp", "kernels_ref.cpp", "kernels_avx2.cpp", "kernels_avx512.cpp"]
HEADERS = ["checks.h", "kernels.h", "cuda/launch.h"]
CUDA_SOURCES = ["cuda/int8_conv.cu", "cuda/sparse_conv.cu", "cuda/ops_cuda.cpp"]


def source_dir(package_dir: Path | None = None) -> Path | None:
    """The C++ sources: ``csrc`` inside the installed ``edgecompress/kernels`` package (wheels carry a
    copy; in the repository it is a link to ``cpp_kernels/src``), else the checkout's ``cpp_kernels/src``."""
    here = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    for d in (here / "csrc", here.parents[1] / "cpp_kernels" / "src"):
        if (d / "ops.cpp").is_file():
            return d
    return None


def cache_dir() -> Path:
    root = os.environ.get("EDGECOMPRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgecompress")
    return Path(root) / "kernels"


def build_key(src: Path, sources: list[str]) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(sources + HEADERS):
        p = src / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    h.update(torch.__version__.encode())
    h.update(" ".join(CFLAGS).encode())
    if any(name.endswith(".cu") for name in sources):  # a build for one GPU generation is not reused on another
        h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
        h.update(repr(sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})).encode())
    return h.hexdigest()[:16]


def disabled() -> bool:
    return os.environ.get("EDGECOMPRESS_DISABLE_KERNELS", "").strip() not in ("", "0", "false", "False")


def want_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.version.cuda)


def build_and_load(verbose: bool = False) -> str:
    """Compile (or reuse the cached build) and load the library; returns the .so path. With a GPU the
    CUDA kernels are built too; if that build fails, the CPU kernels are built alone (one warning).
    Raises on any other failure (the caller turns that into the fallback warning)."""
    if want_cuda():
        try:
            return _build(True, verbose)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"edgecompress CUDA kernels failed to build ({type(e).__name__}); building the CPU kernels only",
                          RuntimeWarning, stacklevel=3)
    return _build(False, verbose)


def _build(cuda: bool, verbose: bool) -> str:
    import torch
    from torch.utils import cpp_extension

    src = source_dir()
    if src is None:
        raise FileNotFoundError("the C++ sources (cpp_kernels/src) are not shipped with this installation")
    sources = SOURCES + (CUDA_SOURCES if cuda else [])
    key = build_key(src, sources)
    name = f"edgecompress_kernels_{key}"
    out = cache_dir() / key
    out.mkdir(parents=True, exist_ok=True)
    so = out / f"{name}.so"
    if so.is_file():
        torch.ops.load_library(str(so))
        return str(so)
    cpp_extension.load(
        name=name,
        sources=[str(src / s) for s in sources],
        extra_cflags=CFLAGS + (["-DEC_WITH_CUDA"] if cuda else []),
        extra_cuda_cflags=["-O3"],
        extra_ldflags=LDFLAGS,
        build_directory=str(out),
        with_cuda=cuda,
        is_python_module=False,
        verbose=verbose,
    )
    return str(so)


def warn_fallback(reason: str) -> None:
    warnings.warn(
        f"edgecompress C++ kernels unavailable ({reason}); int8/sparse layers run the PyTorch reference "
        "path (exact, slow). Install g++ and ninja (`pip install ninja`) to build them on first use, or set "
        "EDGECOMPRESS_DISABLE_KERNELS=1 to choose the reference path silently.",
        RuntimeWarning,
        stacklevel=4,
    )
