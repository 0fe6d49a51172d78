"""``edgecompress android package RESULT_DIR --app android_demo/``: copy a compressed model's ncnn
param/bin, its labels and a ``model.json`` into the demo app's assets.

The app opens ``model.json`` and takes every other asset name from it, so the four names below
are the whole contract between this packager and ``android_demo`` (a test checks both sides).
Packaging is checked before anything is written (the model loads in ncnn, its input and output
blobs exist, the output has one score per label) and written atomically: each file goes to a
temporary name in the assets folder and is renamed into place; files of an earlier packaging that
the new one does not write are removed. Re-running on the same result gives identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from edgecompress.errors import ArtifactNotFoundError, PackagingError, UnsafePathError

ASSETS = Path("app/src/main/assets")
MODEL_JSON, PARAM, BIN, LABELS = "model.json", "model.param", "model.bin", "labels.txt"
PACKAGED = (PARAM, BIN, LABELS, MODEL_JSON)
PRECISIONS = ("auto", "int8", "fp16", "fp32")


def find_ncnn_model(result_dir: str | os.PathLike, precision: str = "auto") -> tuple[Path, Path, str]:
    """(param, bin, precision) of the ncnn artifact in a compress() result folder: int8 when the
    result has one and ``precision`` is "auto", else the one asked for."""
    d = Path(result_dir)
    if precision not in PRECISIONS:
        raise PackagingError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not d.is_dir():
        raise ArtifactNotFoundError(f"{d} is not a folder; pass the output_dir of compress() (e.g. runs/demo)")
    found = {}
    report = d / "report.json"
    if report.is_file():
        arts = json.loads(report.read_text()).get("artifacts", {})
        for name, prec in (("ncnn-int8", "int8"), ("ncnn-fp16", "fp16"), ("ncnn", "fp32")):
            files = [d / f for f in arts.get(name, {}).get("files", [])]
            param = next((f for f in files if f.name.endswith(".ncnn.param")), None)
            bin_ = next((f for f in files if f.name.endswith(".ncnn.bin")), None)
            if param and bin_:
                found[prec] = (param, bin_)
    else:
        for param in sorted(d.glob("*.ncnn.param")):
            prec = "int8" if ".int8." in param.name else "fp16" if ".fp16." in param.name else "fp32"
            found.setdefault(prec, (param, param.with_name(param.name[: -len(".param")] + ".bin")))
    if not found:
        raise ArtifactNotFoundError(f"no ncnn model in {d}; compress with target='ncnn' or 'ncnn-int8' "
                                    "(e.g. `edgecompress demo --target ncnn-int8`)")
    if precision == "auto":
        precision = next(p for p in ("int8", "fp16", "fp32") if p in found)
    if precision not in found:
        raise ArtifactNotFoundError(f"{d} has no {precision} ncnn model (it has: {', '.join(sorted(found))}); "
                                    f"pass --precision {sorted(found)[0]} or compress for that target")
    param, bin_ = found[precision]
    for f in (param, bin_):
        if not f.is_file():
            raise ArtifactNotFoundError(f"{f} is missing; re-run compress() into {d}")
    return param, bin_, precision


def _ncnn_blobs(param: Path) -> tuple[set[str], set[str]]:
    lines = param.read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise PackagingError(f"{param} is not an ncnn param file (first line must be 7767517)")
    inputs, blobs = set(), set()
    for ln in lines[2:]:
        t = ln.split()
        if len(t) < 4:
            continue
        nin, nout = int(t[2]), int(t[3])
        blobs.update(t[4 + nin: 4 + nin + nout])
        if t[0] == "Input":
            inputs.update(t[4 + nin: 4 + nin + nout])
    return inputs, blobs


def check_ncnn_model(param: Path, bin_: Path, input_blob: str, output_blob: str, shape: tuple[int, int, int]) -> int:
    """Load the model in ncnn and run one image; returns the number of outputs."""
    import ncnn

    from edgecompress.export.ncnn import ncnn_net

    inputs, blobs = _ncnn_blobs(param)
    if input_blob not in inputs:
        raise PackagingError(f"{param.name} has no Input blob {input_blob!r} (it has {sorted(inputs)}); "
                             "export it with edgecompress (input blob 'in0') or pass --input-blob")
    if output_blob not in blobs:
        raise PackagingError(f"{param.name} has no blob {output_blob!r}; pass --output-blob")
    net = ncnn_net(param, bin_, 1, "fp32")
    x = np.zeros(shape, np.float32)
    mat = ncnn.Mat(x)
    with net.create_extractor() as ex:
        ex.input(input_blob, mat)
        ret, out = ex.extract(output_blob)
    if ret != 0:
        raise PackagingError(f"ncnn could not run {param.name} on a {'x'.join(map(str, shape))} input (error {ret}); "
                             "pass the model's --input-size")
    return int(np.array(out).size)


def _assets_dir(app: Path) -> Path:
    app = Path(app)
    if not (app / "app" / "build.gradle.kts").is_file():
        raise PackagingError(f"{app} is not the android_demo app (no app/build.gradle.kts); pass --app android_demo/")
    root = app.resolve()
    assets = (app / ASSETS)
    real = assets.resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(f"{assets} resolves to {real}, outside the app folder {root}; remove the link and "
                              "let the packager create app/src/main/assets")
    return assets


def _inside(assets: Path, name: str) -> Path:
    dest = assets / name
    real_assets = assets.resolve()
    if dest.resolve().parent != real_assets or Path(name).name != name:
        raise UnsafePathError(f"asset name {name!r} would be written outside {assets}; use a plain file name")
    return dest


def build_assets(param: Path, bin_: Path, precision: str, *, labels=None, name: str = "model", threads: int = 4,
                 input_size: tuple[int, int] = (32, 32), mean=None, std=None, input_blob: str = "in0",
                 output_blob: str = "out0") -> tuple[dict[str, bytes], dict]:
    """The four assets' bytes (checked against the model in ncnn) and model.json's content.
    ``labels``: None (CIFAR-10 names for a 10-class model), a file, a list, or "generic" (class_0 ...)."""
    from edgecompress import __version__
    from edgecompress.data.cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

    if threads < 1:
        raise PackagingError(f"threads must be >= 1 (got {threads})")
    w, h = input_size
    classes = check_ncnn_model(param, bin_, input_blob, output_blob, (3, h, w))
    if labels is None:
        if classes != len(CIFAR10_CLASSES):
            raise PackagingError(f"the model has {classes} outputs; pass --labels FILE (one class name per line)")
        names = list(CIFAR10_CLASSES)
    elif isinstance(labels, str) and labels == "generic":
        names = [f"class_{i}" for i in range(classes)]
    elif isinstance(labels, (str, os.PathLike)):
        lp = Path(labels)
        if not lp.is_file():
            raise ArtifactNotFoundError(f"labels file {lp} does not exist")
        names = [ln.strip() for ln in lp.read_text().splitlines() if ln.strip()]
    else:
        names = [str(n) for n in labels]
    if len(names) != classes:
        raise PackagingError(f"{len(names)} labels for a model with {classes} outputs; give one label per output")
    sources = {PARAM: param.read_bytes(), BIN: bin_.read_bytes(), LABELS: ("\n".join(names) + "\n").encode()}
    meta = {
        "format": 1, "name": name, "precision": precision, "param": PARAM, "bin": BIN, "labels": LABELS,
        "input": {"blob": input_blob, "width": w, "height": h, "channels": 3, "color": "RGB",
                  "mean": list(mean or CIFAR10_MEAN), "std": list(std or CIFAR10_STD), "scale": 255.0},
        "output": {"blob": output_blob, "classes": classes},
        "threads": threads, "top_k": min(5, classes),
        "files": {k: {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()} for k, v in sources.items()},
        "edgecompress": __version__,
    }
    sources[MODEL_JSON] = (json.dumps(meta, indent=1) + "\n").encode()
    return sources, meta


def package(result_dir: str | os.PathLike, app: str | os.PathLike, *, precision: str = "auto", labels=None,
            name: str | None = None, threads: int = 4, input_size: tuple[int, int] = (32, 32), mean=None, std=None,
            input_blob: str = "in0", output_blob: str = "out0") -> dict:
    """Package the ncnn model of ``result_dir`` into ``app``'s assets; returns model.json's content
    plus the written paths under ``"written"``."""
    assets = _assets_dir(Path(app))
    param, bin_, prec = find_ncnn_model(result_dir, precision)
    sources, meta = build_assets(param, bin_, prec, labels=labels, name=name or Path(result_dir).resolve().name,
                                 threads=threads, input_size=input_size, mean=mean, std=std, input_blob=input_blob,
                                 output_blob=output_blob)
    dests = {k: _inside(assets, k) for k in sources}
    assets.mkdir(parents=True, exist_ok=True)
    old = _previous_files(assets)
    _write_atomically(sources, dests)
    for stale in old - set(sources):
        _inside(assets, stale).unlink(missing_ok=True)
    meta["written"] = [str(p) for p in dests.values()]
    return meta


def package_folder(param: Path, bin_: Path, folder: Path, *, precision: str, name: str = "model",
                   input_size: tuple[int, int] = (32, 32), threads: int = 4) -> list[Path]:
    """The same four files in a plain folder (what ``edgecompress bench --device android`` pushes)."""
    sources, _ = build_assets(Path(param), Path(bin_), precision, labels="generic", name=name, threads=threads,
                              input_size=input_size)
    dests = {k: Path(folder) / k for k in sources}
    _write_atomically(sources, dests)
    return list(dests.values())


def _write_atomically(sources: dict[str, bytes], dests: dict[str, Path]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    tmp_files = []
    try:
        for k, data in sources.items():
            fd, tmp = tempfile.mkstemp(dir=dests[k].parent, prefix=f".{k}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the app build (maybe another user) reads these
            tmp_files.append((tmp, dests[k]))
    except BaseException:
        for tmp, _ in tmp_files:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, dest in tmp_files:  # model.json comes last: the app never sees a json naming missing files
        os.replace(tmp, dest)


def _previous_files(assets: Path) -> set[str]:
    mj = assets / MODEL_JSON
    if not mj.is_file():
        return set()
    try:
        prev = json.loads(mj.read_text())
    except json.JSONDecodeError:
        return set()
    names = set(prev.get("files", {})) | {MODEL_JSON}
    return {n for n in names if isinstance(n, str) and Path(n).name == n}


def next_steps(app: Path) -> str:
    return (f"next:\n  cd {app} && ./gradlew installDebug        # build + install (needs the ncnn Android prebuilt, "
            "see android_demo/README.md)\n  adb shell am start -n com.edgecompress.demo/.MainActivity\n"
            "  edgecompress bench RESULT_DIR --device android --binary edgecompress_bench   # on-device latency")

