"""The Android demo's C++ core on the development host.

``android_demo/app/src/main/cpp/core/ec_core.cpp`` (model.json parsing, preprocessing, top-k, timing
statistics and the ``EC_BENCH`` line) is plain C++17, so besides going into the app it builds here
with the system ``cmake`` and C++ compiler into ``host_tool``, a small command-line front end. This
module builds it once into a cache keyed by the sources (``$EDGECOMPRESS_CACHE/android-host`` or
``~/.cache/edgecompress/android-host``; a source change gives a new key and a rebuild) and runs its
subcommands on NumPy arrays through temporary files, so the tests can hold the C++ against the
NumPy reference in :mod:`edgecompress.android.preprocess`.

>>> import numpy as np
>>> from edgecompress.android import native
>>> native.preprocess(np.zeros((45, 57, 4), np.uint8), {"width": 16, "height": 16}).shape  # doctest: +SKIP
(3, 16, 16)
>>> native.top_k(np.array([[0.1, 0.7, 0.7]], np.float32), 2)  # doctest: +SKIP
array([[1, 2]], dtype=int32)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgecompress.errors import ArtifactNotFoundError, BackendUnavailableError, ConfigError, HostToolError

HOST_TOOL = "host_tool"
CPP_SUBDIR = Path("android_demo/app/src/main/cpp")
_SOURCES = ("core/ec_core.h", "core/ec_core.cpp", "host/host_tool.cpp", "host/CMakeLists.txt")
_DEFAULT_JSON = {
    "format": 1, "name": "model", "precision": "fp32", "param": "model.param", "bin": "model.bin",
    "labels": "labels.txt", "output": {"blob": "out0", "classes": 10},
}


def source_dir() -> Path:
    """``android_demo/app/src/main/cpp`` of this checkout (the sources are not shipped in wheels)."""
    d = Path(__file__).resolve().parents[2] / CPP_SUBDIR
    if not all((d / s).is_file() for s in _SOURCES):
        raise ArtifactNotFoundError(f"the Android demo's C++ sources are not at {d}; the host tool builds from a "
                                    "checkout of the edgecompress repository (git clone, then pip install -e .)")
    return d


def cache_dir() -> Path:
    root = os.environ.get("EDGECOMPRESS_CACHE") or Path.home() / ".cache" / "edgecompress"
    return Path(root) / "android-host"


def _find_tools() -> tuple[str, str]:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BackendUnavailableError("cmake not found on PATH; install it (`apt install cmake`, `brew install cmake` "
                                      "or `pip install cmake`) to build the Android demo's host tool")
    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    cxx_path = shutil.which(cxx) if cxx else None
    if cxx_path is None:
        raise BackendUnavailableError(f"no C++ compiler found ({'CXX=' + cxx if cxx else 'tried c++, g++, clang++'}); "
                                      "install one (`apt install g++` or Xcode's command-line tools) or set CXX")
    return cmake, cxx_path


def build_key(src: Path, cxx: str) -> str:
    """Hash of the sources and the compiler: a change to either gives a fresh build."""
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (src / name).read_bytes() + b"\0")
    h.update(str(Path(cxx).resolve()).encode())
    return h.hexdigest()[:16]


def _run_build(cmd: list[str], what: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        log = (p.stdout + p.stderr).strip()
        raise HostToolError(f"{what} of the Android demo's host tool failed ({' '.join(cmd[:3])} ...):\n{log[-3000:]}")


def build_host_tool(build_dir: str | os.PathLike | None = None) -> Path:
    """Configure and build ``host_tool`` (``-j1``); returns its path.

    Without ``build_dir`` the tool is cached under :func:`cache_dir` by a hash of its sources and
    the compiler, and reused until they change. With ``build_dir`` it is built there (CMake's own
    dependency tracking rebuilds what changed). Raises ``BackendUnavailableError`` without cmake or
    a C++ compiler and :class:`HostToolError` when compiling fails.
    """
    src = source_dir()
    cmake, cxx = _find_tools()
    configure = [cmake, "-S", str(src / "host"), "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_COMPILER={cxx}"]
    if build_dir is not None:
        b = Path(build_dir)
        _run_build([*configure, "-B", str(b)], "configuring")
        _run_build([cmake, "--build", str(b), "-j", "1"], "compiling")
        return b / HOST_TOOL
    out = cache_dir() / build_key(src, cxx)
    exe = out / HOST_TOOL
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=out) as tmp:
        _run_build([*configure, "-B", tmp], "configuring")
        _run_build([cmake, "--build", tmp, "-j", "1"], "compiling")
        staged = out / f".{HOST_TOOL}.{os.getpid()}"
        shutil.copy2(Path(tmp) / HOST_TOOL, staged)
        os.replace(staged, exe)  # atomic: a concurrent build of the same key writes the same bytes
    return exe


def run(*args: str, exe: str | os.PathLike | None = None) -> str:
    """Run one host_tool subcommand; its stdout, or :class:`HostToolError` with its stderr."""
    tool = Path(exe) if exe is not None else build_host_tool()
    p = subprocess.run([str(tool), *map(str, args)], capture_output=True, encoding="utf-8", errors="replace")
    if p.returncode != 0:
        raise HostToolError(p.stderr.strip() or f"host_tool {args[0]} exited with {p.returncode}")
    return p.stdout


def model_json(input_spec: dict | None = None, **top: object) -> dict:
    """A complete model.json dict (CIFAR-10 defaults) with ``input_spec`` merged into ``"input"``."""
    from edgecompress.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD

    inp = {"blob": "in0", "width": 32, "height": 32, "channels": 3, "color": "RGB", "mean": list(CIFAR10_MEAN),
           "std": list(CIFAR10_STD), "scale": 255.0}
    inp.update(input_spec or {})
    return {**_DEFAULT_JSON, "input": inp, **top}


def _json_file(cfg: dict | str | os.PathLike | None, tmp: Path) -> Path:
    if cfg is None or isinstance(cfg, dict):
        d = model_json() if cfg is None else (cfg if "format" in cfg else model_json(cfg.get("input", cfg)))
        p = tmp / "model.json"
        p.write_text(json.dumps(d))
        return p
    return Path(cfg)


def preprocess(pixels: np.ndarray, cfg: dict | str | os.PathLike | None = None, *, exe=None) -> np.ndarray:
    """C++ preprocessing of uint8 ``(H, W, C)`` or ``(N, H, W, C)`` pixels (C = 3 RGB or 4 RGBA).
    ``cfg``: a model.json path or dict (a dict without ``"format"`` is taken as its ``"input"``
    part and completed with defaults), or None for CIFAR-10. Returns float32 ``([N,] 3, h, w)``."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise ConfigError(f"pixels must be uint8 (H, W, C) or (N, H, W, C), got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a)
    batch = a[None] if a.ndim == 3 else a
    n, h, w, c = batch.shape
    return _preprocess("preprocess", batch, n, h, w, ["--channels", str(c)], cfg, exe, squeeze=a.ndim == 3)


def preprocess_argb(pixels: np.ndarray, cfg: dict | str | os.PathLike | None = None, *, exe=None) -> np.ndarray:
    """C++ preprocessing of Android ``int`` pixels ``0xAARRGGBB``, shape ``(H, W)`` or ``(N, H, W)``."""
    a = np.asarray(pixels)
    if not np.issubdtype(a.dtype, np.integer) or a.ndim not in (2, 3):
        raise ConfigError(f"ARGB pixels must be integers (H, W) or (N, H, W), got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a.astype(np.int64) & 0xFFFFFFFF, dtype="<u4")
    batch = a[None] if a.ndim == 2 else a
    n, h, w = batch.shape
    return _preprocess("preprocess-argb", batch, n, h, w, [], cfg, exe, squeeze=a.ndim == 2)


def _preprocess(cmd, batch, n, h, w, extra, cfg, exe, squeeze) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="ec-host-") as t:
        tmp = Path(t)
        jf = _json_file(cfg, tmp)
        spec = json.loads(jf.read_text())["input"]
        (tmp / "in.raw").write_bytes(batch.tobytes())
        run(cmd, "--json", jf, "--pixels", tmp / "in.raw", "--n", n, "--width", w, "--height", h, *extra,
            "--out", tmp / "out.f32", exe=exe)
        out = np.fromfile(tmp / "out.f32", dtype="<f4").reshape(n, 3, spec["height"], spec["width"])
    return out[0] if squeeze else out


def top_k(logits: np.ndarray, k: int, *, exe=None) -> np.ndarray:
    """C++ ``ec::top_k`` on each row of float32 ``(N, K)`` (or one ``(K,)``) logits: int32 ``([N,] k)``."""
    a = np.ascontiguousarray(logits, dtype="<f4")
    batch = a[None] if a.ndim == 1 else a
    n, classes = batch.shape
    with tempfile.TemporaryDirectory(prefix="ec-host-") as t:
        tmp = Path(t)
        (tmp / "in.f32").write_bytes(batch.tobytes())
        run("topk", "--logits", tmp / "in.f32", "--n", n, "--classes", classes, "--k", k, "--out", tmp / "out.i32",
            exe=exe)
        out = np.fromfile(tmp / "out.i32", dtype="<i4").reshape(n, min(k, classes))
    return out[0] if a.ndim == 1 else out


def softmax(logits: np.ndarray, *, exe=None) -> np.ndarray:
    """C++ ``ec::softmax`` on each row of float32 ``(N, K)`` logits."""
    a = np.ascontiguousarray(logits, dtype="<f4")
    batch = a[None] if a.ndim == 1 else a
    n, classes = batch.shape
    with tempfile.TemporaryDirectory(prefix="ec-host-") as t:
        tmp = Path(t)
        (tmp / "in.f32").write_bytes(batch.tobytes())
        run("softmax", "--logits", tmp / "in.f32", "--n", n, "--classes", classes, "--out", tmp / "out.f32", exe=exe)
        out = np.fromfile(tmp / "out.f32", dtype="<f4").reshape(n, classes)
    return out[0] if a.ndim == 1 else out


def bench_line(samples_ms, *, model: str = "model", precision: str = "fp32", threads: int = 1, powersave: int = 0,
               warmup: int = 0, exe=None) -> str:
    """The ``EC_BENCH`` line the phone prints for these latency samples (ms)."""
    a = np.ascontiguousarray(samples_ms, dtype="<f8").ravel()
    with tempfile.TemporaryDirectory(prefix="ec-host-") as t:
        f = Path(t) / "samples.f64"
        f.write_bytes(a.tobytes())
        out = run("stats", "--samples", f, "--n", a.size, "--model", model, "--precision", precision,
                  "--threads", threads, "--powersave", powersave, "--warmup", warmup, exe=exe)
    return out.strip()


def parse_model_json(cfg: dict | str | os.PathLike, labels: str | os.PathLike | None = None, *, exe=None) -> dict:
    """model.json as the C++ core reads it (``ec::parse_model_json``), as a dict; with ``labels``
    the parsed label names too (``"label_names"``). A dict ``cfg`` is written out as is."""
    with tempfile.TemporaryDirectory(prefix="ec-host-") as t:
        if isinstance(cfg, dict):
            jf = Path(t) / "model.json"
            jf.write_text(json.dumps(cfg))
        else:
            jf = Path(cfg)
        extra = ["--labels", str(labels)] if labels is not None else []
        return json.loads(run("parse-json", "--json", jf, *extra, exe=exe))


def benchmark_input(cfg: dict | str | os.PathLike | None = None, *, exe=None) -> np.ndarray:
    """The fixed float32 CHW input that the app's benchmark and ``edgecompress_bench`` time."""
    with tempfile.TemporaryDirectory(prefix="ec-host-") as t:
        tmp = Path(t)
        jf = _json_file(cfg, tmp)
        spec = json.loads(jf.read_text())["input"]
        run("bench-input", "--json", jf, "--out", tmp / "out.f32", exe=exe)
        return np.fromfile(tmp / "out.f32", dtype="<f4").reshape(3, spec["height"], spec["width"])
