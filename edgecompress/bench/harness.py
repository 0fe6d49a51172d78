"""``edgecompress bench``: time artifacts in their own runtimes, interleaved, into one fixed schema.

Every (artifact, thread count) pair becomes one runner; all runners take turns in one loop, in
blocks of ``block`` timed calls each preceded by two untimed ones (A×10 B×10 C×10 A×10 ...), so
drift of the machine hits every row alike while each row is timed hot, as in an inference loop.
No runtime may still have worker threads spinning when the next row starts (they would slow it):
onnxruntime sessions run with ``allow_spinning=0``, and after each block of ncnn (OpenMP blocktime,
20 ms by default) or torch (libgomp's short default spin) the loop sleeps, outside the timing,
until those threads are idle. Each runtime runs with its own defaults otherwise.

Peak memory is measured per row in a fresh process (``python -m edgecompress.bench.peakmem``):
the resident-set high-water mark while loading the artifact and running it, above the same
process's mark after importing torch, numpy and edgecompress.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgecompress.bench.artifacts import RUNTIMES, Artifact, discover
from edgecompress.bench.latency import COOLDOWN_S, measure_interleaved
from edgecompress.errors import BackendUnavailableError, ConfigError, DeviceUnavailableError

SCHEMA = ("model", "target", "precision", "runtime", "device", "threads", "batch", "ms_median", "ms_p90", "ms_p99",
          "params", "macs", "size_bytes", "top1")
EXTRA = ("artifact", "ms_p10", "ms_mean", "ms_min", "throughput_ips", "peak_mem_mb", "iters", "warmup")
COLUMNS = SCHEMA + EXTRA
DEVICES = ("cpu", "cuda", "android")
_MODULES = {"onnxruntime": "onnxruntime", "ncnn": "ncnn", "tensorrt": "tensorrt", "torch": "torch"}
_DEVICE_RUNTIMES = {"cpu": ("torch", "onnxruntime", "ncnn"), "cuda": ("torch", "tensorrt"), "android": ("ncnn",)}


@dataclasses.dataclass
class BenchTable:
    """Rows in the fixed schema (``COLUMNS``) plus how they were measured."""

    rows: list[dict]
    info: dict

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps({"schema": list(COLUMNS), "info": self.info, "rows": self.rows}, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self) -> str:
        cols = ("artifact", "runtime", "precision", "threads", "batch", "ms_median", "ms_p90", "ms_p99",
                "throughput_ips", "peak_mem_mb", "params", "macs", "size_bytes", "top1")
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k in cols) + " |")
        return "\n".join(lines)

    def save(self, directory: str | os.PathLike, stem: str = "bench") -> dict[str, Path]:
        """``stem``.csv / .json / .md, and the plots when the rows carry MACs or top-1."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = {"csv": d / f"{stem}.csv", "json": d / f"{stem}.json", "md": d / f"{stem}.md"}
        self.to_csv(out["csv"])
        self.to_json(out["json"])
        out["md"].write_text(self.to_markdown() + "\n\n" + _info_line(self.info) + "\n")
        out.update(plot(self.rows, d, stem))
        return out


def _fmt(k: str, v) -> str:
    if v is None:
        return ""
    if k.startswith("ms_"):
        return f"{v:.3f}"
    if k == "top1":
        return f"{v:.2%}"
    if k in ("throughput_ips", "peak_mem_mb"):
        return f"{v:.1f}"
    if isinstance(v, int) and k in ("params", "macs", "size_bytes"):
        return f"{v:,}"
    return str(v)


def _info_line(info: dict) -> str:
    return ("measured: " + ", ".join(f"{k}={v}" for k, v in info.items() if k in
                                     ("host", "cpu_count", "warmup", "iters", "input_shape", "interleaved", "torch",
                                      "onnxruntime", "ncnn", *THREADING_ENV)))


def plot(rows: list[dict], directory: Path, stem: str = "bench") -> dict[str, Path]:
    """latency vs top-1 and latency vs MACs, one point per row (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - PercentFormatter

    out = {}
    for key, label, fname in (("top1", "top-1 accuracy", "latency_vs_top1"), ("macs", "MACs per image", "latency_vs_macs")):
        pts = [r for r in rows if r.get(key) is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(8.0, 4.4))
        arts = list(dict.fromkeys(r["artifact"] for r in pts))
        thr = sorted({r["threads"] for r in pts})
        markers = "os^Dv<>p"
        for r in pts:
            ax.scatter(r["ms_median"], r[key], s=36, color=f"C{arts.index(r['artifact']) % 10}",
                       marker=markers[thr.index(r["threads"]) % len(markers)],
                       label=f"{r['artifact']} [{r['runtime']} {r['precision']}], {r['threads']} thread(s)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        if key == "top1":
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=2))
        ax.set_xlabel("latency, median ms (batch %d)" % pts[0]["batch"])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out[fname] = directory / f"{stem}_{fname}.png"
        fig.savefig(out[fname], dpi=120)
        plt.close(fig)
    return out


def check_runtime_installed(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if importlib.util.find_spec(_MODULES[runtime]) is None:
        fix = {"tensorrt": 'pip install "edgecompress[tensorrt]" on a machine with an NVIDIA GPU'}.get(runtime, f"pip install {runtime}")
        raise BackendUnavailableError(f"runtime {runtime!r} is not installed: {fix}")


def check_device(device: str, runtimes) -> None:
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    bad = sorted(set(runtimes) - set(_DEVICE_RUNTIMES[device]))
    if bad:
        raise ConfigError(f"runtime(s) {bad} cannot run on device {device!r} here; on {device} edgecompress times "
                          f"{', '.join(_DEVICE_RUNTIMES[device])} (filter with --runtime)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DeviceUnavailableError("device 'cuda': torch sees no CUDA GPU here; run on a machine with an NVIDIA "
                                         "GPU and a CUDA build of torch, or use --device cpu")


def bench(items=(), *, runtimes: tuple[str, ...] | None = None, threads=(1,), batch: int = 1, warmup: int = 20,
          iters: int = 200, device: str = "cpu", input_shape: tuple[int, ...] | None = None,
          models: dict | None = None, torch_compile: bool = False, memory: bool = True, top1_data=None,
          seed: int = 0, block: int = 10, android: dict | None = None, log: Callable[[str], None] | None = None) -> BenchTable:
    """Time every artifact in ``items`` (result folders or files) and every in-memory torch model
    in ``models`` ({name: nn.Module}) at each thread count, interleaved; one row per pair.

    ``top1_data``: a loader of (images, labels) to measure each artifact's top-1 on (else top-1
    comes from the folder's report.json when it has it). ``device="android"`` runs ncnn artifacts
    on a phone over adb (``android`` holds the runner's options: serial, adb, binary).
    """
    log = log or (lambda s: None)
    threads = tuple(int(t) for t in (threads if isinstance(threads, (list, tuple)) else (threads,)))
    if iters <= 0:
        raise ConfigError(f"iters must be >= 1 (got {iters}); pass e.g. --iters 200")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0 (got {warmup})")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1 (got {batch})")
    if not threads or min(threads) < 1:
        raise ConfigError(f"threads must be >= 1 (got {threads}); pass e.g. --threads 1,2")
    if runtimes is not None:
        for r in runtimes:
            check_runtime_installed(r)
    if not items and not models:
        raise ConfigError("nothing to time: pass result folders / artifact files, or a --model")
    arts = discover(items, runtimes=runtimes) if items else []
    if models and (runtimes is None or "torch" in runtimes):
        arts += [Artifact(name, "torch", {}, model=name, module=m, compiled=False) for name, m in models.items()]
    if torch_compile:
        arts += [dataclasses.replace(a, name=a.name + " (compiled)", compiled=True) for a in arts if a.runtime == "torch"]
    used = sorted({a.runtime for a in arts})
    for r in used:
        check_runtime_installed(r)
    check_device(device, used)
    shape = tuple(input_shape) if input_shape else _input_shape(arts)
    if device == "android":
        from edgecompress.android.adb import bench_android

        rows = bench_android(arts, threads=threads, warmup=warmup, iters=iters, input_shape=shape, **(android or {}))
        return BenchTable(rows, {"device": "android", "warmup": warmup, "iters": iters, "input_shape": list(shape)})

    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    runners, setups, meta, cooldown = {}, {}, {}, {}
    for a in arts:
        params, macs = a.cost(shape)
        top1 = a.top1
        if top1_data is not None:
            fn, setup = a.runner(max(threads), device)
            if setup:
                setup()
            top1 = _top1(fn, top1_data)
            log(f"top-1 {a.name}: {top1:.2%}")
        for t in threads:
            key = f"{a.name} @{t}t"
            fn, setup = a.runner(t, device)
            runners[key] = (lambda f=fn: f(x))
            if setup:
                setups[key] = setup
            cooldown[key] = COOLDOWN_S.get(a.runtime, 0.0)
            meta[key] = (a, t, params, macs, top1)
    log(f"timing {len(runners)} runner(s): {warmup} warm-up calls each, then {iters} timed calls each in "
        f"interleaved blocks of {block}")
    import torch

    prev = torch.get_num_threads()
    try:
        stats = measure_interleaved(runners, threads=0, batch=batch, warmup=warmup, iters=iters, setups=setups,
                                    keep_times=True, cooldown_s=cooldown,
                                    block=block, rewarm=2 if block > 1 else 0)
    finally:
        torch.set_num_threads(prev)
    rows = []
    for key, s in stats.items():
        a, t, params, macs, top1 = meta[key]
        rows.append({
            "model": a.model or a.name.split("/")[0], "target": a.exporter, "precision": a.precision,
            "runtime": a.runtime + (" (compiled)" if a.compiled else ""), "device": device, "threads": t,
            "batch": batch, "ms_median": s.ms_median, "ms_p90": s.ms_p90, "ms_p99": s.ms_p99, "params": params,
            "macs": macs, "size_bytes": a.size_bytes if a.paths else None, "top1": top1, "artifact": a.name,
            "ms_p10": float(np.percentile(s.times, 10)), "ms_mean": s.ms_mean, "ms_min": float(min(s.times)),
            "throughput_ips": batch * 1e3 / s.ms_median, "peak_mem_mb": None, "iters": iters, "warmup": warmup,
        })
    if memory:
        for r in rows:
            a, t = meta[f"{r['artifact']} @{r['threads']}t"][:2]
            r["peak_mem_mb"] = peak_memory_mb(a, t, x, warmup=min(warmup, 10), device=device)
    import onnx  # noqa: F401 - versions for the record

    info = {"host": platform.node(), "machine": platform.machine(), "cpu_count": os.cpu_count(), "device": device,
            "warmup": warmup, "iters": iters, "input_shape": [batch, *shape], "interleaved": True,
            "torch": torch.__version__, **_versions(used), **threading_env()}
    return BenchTable(rows, info)


# Variables that change how the runtimes' thread pools wait and spin. OMP_WAIT_POLICY=PASSIVE, for
# one, puts ncnn's and torch's OpenMP workers to sleep between layers: ResNet-20 at batch 1 on this
# 2-core VM then took 2.5 ms in ncnn int8 at 2 threads against 0.88 ms at 1 thread.
THREADING_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OMP_PROC_BIND", "KMP_BLOCKTIME", "GOMP_SPINCOUNT",
                 "MKL_NUM_THREADS")


def threading_env() -> dict:
    """The thread-pool variables set in this process's environment, for the record of a measurement."""
    return {k: os.environ[k] for k in THREADING_ENV if k in os.environ}


def _versions(runtimes) -> dict:
    from importlib import metadata

    out = {}
    for r in runtimes:
        if r != "torch":
            try:
                out[r] = metadata.version(r)
            except metadata.PackageNotFoundError:
                pass
    return out


def _input_shape(arts: list[Artifact]) -> tuple[int, ...]:
    """The per-image input shape from an ONNX artifact's input, else a torch program's example,
    else CIFAR-10's 3x32x32."""
    for a in arts:
        if "onnx" in a.paths:
            import onnx

            m = onnx.load(str(a.paths["onnx"]), load_external_data=False)
            dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
            if dims and all(d > 0 for d in dims):
                return tuple(dims)
    for a in arts:
        if "pt2" in a.paths:
            import torch

            try:
                ex = torch.export.load(str(a.paths["pt2"])).example_inputs
            except Exception:  # noqa: BLE001 - e.g. a program of edgecompress kernel ops: use the default
                continue
            if ex and ex[0]:
                return tuple(ex[0][0].shape[1:])
    return (3, 32, 32)


def _top1(fn, data) -> float:
    correct = total = 0
    for xb, yb in data:
        xb = xb.numpy() if hasattr(xb, "numpy") else np.asarray(xb)
        yb = yb.numpy() if hasattr(yb, "numpy") else np.asarray(yb)
        logits = fn(np.ascontiguousarray(xb, dtype=np.float32))
        correct += int((np.asarray(logits).argmax(1) == yb).sum())
        total += len(yb)
    return correct / max(1, total)


def peak_memory_mb(a: Artifact, threads: int, x: np.ndarray, *, warmup: int = 10, device: str = "cpu") -> float | None:
    """Peak resident memory (MB) of a fresh process loading ``a`` and running it ``warmup`` times,
    above that process's peak after its imports."""
    with tempfile.TemporaryDirectory(prefix="edgecompress-mem-") as tmp:
        spec = {"exporter": a.exporter, "paths": {k: str(v) for k, v in a.paths.items()}, "threads": threads,
                "warmup": warmup, "device": device, "input": str(Path(tmp) / "x.npy")}
        np.save(spec["input"], x)
        if a.module is not None:
            import torch

            spec["module"] = str(Path(tmp) / "m.pt")
            torch.save(a.module, spec["module"])
        proc = subprocess.run([sys.executable, "-m", "edgecompress.bench.peakmem", json.dumps(spec)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory probe of {a.name} failed: {proc.stderr[-1500:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mem_mb"])
