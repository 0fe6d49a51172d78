"""What ``edgecompress bench`` times: artifacts found in result folders or given as files, each
tied to the exporter that wrote it (which knows how to load and run it), plus the parameters and
MACs read from the artifact itself.

A result folder (``compress(..., output_dir=D)``) names its artifacts in ``report.json``; a bare
file is recognised by its name and content:

=====================  ============  =========
file                   exporter      runtime
=====================  ============  =========
``*.int8.ncnn.param``  ncnn-int8     ncnn
``*.ncnn.param``       ncnn          ncnn
``*.onnx``             onnx / onnx-fp16 / onnx-int8 (from its nodes)  onnxruntime
``*.pt2``              torch         torch
``*.engine``           tensorrt      tensorrt
=====================  ============  =========
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from edgecompress.errors import ArtifactNotFoundError, ConfigError

RUNTIMES = ("torch", "onnxruntime", "ncnn", "tensorrt")


@dataclasses.dataclass
class Artifact:
    """One thing to time. ``module`` is set for an in-memory torch model (``--model``)."""

    name: str
    exporter: str
    paths: dict[str, Path]
    model: str = ""
    top1: float | None = None
    module: object | None = None
    compiled: bool = False  # torch.compile the torch module before timing

    @property
    def runtime(self) -> str:
        return "torch" if self.module is not None else _exporter(self.exporter).runtime

    @property
    def precision(self) -> str:
        return "fp32" if self.module is not None else _exporter(self.exporter).cfg.precision

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for role, p in self.paths.items() if role != "ncnn_table")

    def runner(self, threads: int, device: str = "cpu"):
        """A callable taking a float32 NCHW array and returning logits, plus a setup hook (run
        before each timed call, outside the timing)."""
        import torch

        if self.runtime == "torch":
            mod = self.module if self.module is not None else _load_pt2(self.paths["pt2"])
            mod = mod.to(device)
            if self.module is not None:
                mod.eval()  # (a torch.export program's module is already in inference form)
            if self.compiled:
                mod = torch.compile(mod)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

            def run(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    y = mod(torch.from_numpy(x).to(device))
                sync()
                return y.float().cpu().numpy()

            return run, (lambda: torch.set_num_threads(threads))
        exp = _exporter(self.exporter, threads)
        return exp.load(self.paths), None

    def cost(self, input_shape: tuple[int, ...]) -> tuple[int | None, int | None]:
        """(parameters, MACs per image) as stored in / computed by the artifact itself."""
        if self.runtime == "torch":
            import torch

            from edgecompress.analysis import count_macs, count_params

            mod = self.module if self.module is not None else _load_pt2(self.paths["pt2"])
            return count_params(mod), count_macs(mod, (torch.zeros(1, *input_shape),))
        if "onnx" in self.paths and self.runtime in ("onnxruntime", "tensorrt"):
            return onnx_cost(self.paths["onnx"])
        if self.runtime == "ncnn":
            return ncnn_cost(self.paths["ncnn_param"], self.paths["ncnn_bin"], input_shape)
        return None, None


def _exporter(name: str, threads: int = 1):
    from edgecompress.export import ExportConfig, get_exporter

    return get_exporter(name, ExportConfig(threads=threads))


def _load_pt2(path: Path):
    from edgecompress.export.torch_export import load_program

    return load_program(path)


# --- discovery -------------------------------------------------------------------------------------

def discover(items, *, runtimes: tuple[str, ...] | None = None) -> list[Artifact]:
    """Artifacts in ``items`` (result folders, folders of artifacts, or artifact files)."""
    if runtimes is not None:
        unknown = [r for r in runtimes if r not in RUNTIMES]
        if unknown:
            raise ConfigError(f"unknown runtime(s) {unknown}; known: {', '.join(RUNTIMES)}")
    found: list[Artifact] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise ArtifactNotFoundError(f"{p} does not exist; pass a compress() output folder or an artifact file "
                                        "(.onnx, .ncnn.param with its .bin, .pt2, .engine)")
        found += _from_folder(p) if p.is_dir() else [_from_file(p)]
    if runtimes is not None:
        found = [a for a in found if a.runtime in runtimes]
    seen: dict[str, int] = {}
    for a in found:  # every row needs its own name
        seen[a.name] = seen.get(a.name, 0) + 1
        if seen[a.name] > 1:
            a.name = f"{a.name} #{seen[a.name]}"
    if not found:
        raise ArtifactNotFoundError(f"no artifact in {[str(i) for i in items]}"
                                    + (f" for runtime(s) {list(runtimes)}" if runtimes else "")
                                    + "; expected .onnx, .ncnn.param/.bin, .pt2 or .engine files")
    return found


def _from_folder(d: Path) -> list[Artifact]:
    report = d / "report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        model = str(r.get("model") or d.name)
        out = []
        for name, v in (r.get("artifacts") or {}).items():
            files = [d / f for f in v.get("files", [])]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ArtifactNotFoundError(f"{report} lists {missing}, which do not exist; re-run compress() or "
                                            "pass the artifact files themselves")
            paths = _roles(files)
            if name.startswith("tensorrt") and "engine" not in paths:  # engine skipped: time the ONNX it was built from
                name = "onnx-int8-trt" if name == "tensorrt-int8" else "onnx-fp16"
            out.append(Artifact(f"{d.name}/{name}", name, paths, model=model, top1=v.get("top1")))
        return out
    files = sorted(f for f in d.iterdir() if f.is_file() and _kind(f))
    return [dataclasses.replace(a, name=f"{d.name}/{a.name}")
            for a in (_from_file(f) for f in files if not f.name.endswith(".ncnn.bin"))]


def _kind(f: Path) -> str | None:
    n = f.name
    for suf in (".ncnn.param", ".ncnn.bin", ".onnx", ".pt2", ".engine"):
        if n.endswith(suf):
            return suf
    return None


def _roles(files: list[Path]) -> dict[str, Path]:
    roles = {".ncnn.param": "ncnn_param", ".ncnn.bin": "ncnn_bin", ".onnx": "onnx", ".pt2": "pt2",
             ".engine": "engine", ".table": "ncnn_table"}
    out = {}
    for f in files:
        suf = _kind(f) or (".table" if f.name.endswith(".table") else None)
        if suf:
            out[roles[suf]] = f
    return out


def _from_file(f: Path) -> Artifact:
    kind = _kind(f)
    if kind is None:
        raise ConfigError(f"{f.name}: not an artifact edgecompress can time; expected .onnx, .ncnn.param, .pt2 or .engine")
    if kind in (".ncnn.param", ".ncnn.bin"):
        param = f.with_name(f.name[: -len(kind)] + ".ncnn.param")
        bin_ = param.with_name(param.name[: -len(".param")] + ".bin")
        for p in (param, bin_):
            if not p.is_file():
                raise ArtifactNotFoundError(f"{p} does not exist; an ncnn model needs both its .param and .bin")
        int8 = "int8_scale_term" in param.read_text() or any(
            line.split()[0] in ("Convolution", "ConvolutionDepthWise", "InnerProduct") and " 8=" in line
            for line in param.read_text().splitlines()[2:] if line.strip())
        return Artifact(param.name, "ncnn-int8" if int8 else "ncnn", {"ncnn_param": param, "ncnn_bin": bin_})
    if kind == ".onnx":
        return Artifact(f.name, _onnx_flavour(f), {"onnx": f})
    if kind == ".pt2":
        return Artifact(f.name, "torch", {"pt2": f})
    return Artifact(f.name, "tensorrt-int8" if "int8" in f.name else "tensorrt", {"engine": f})


def _onnx_flavour(f: Path) -> str:
    import onnx

    m = onnx.load(str(f), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    if "QuantizeLinear" in ops or "QLinearConv" in ops:
        return "onnx-int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer):
        return "onnx-fp16"
    return "onnx"


# --- cost read from the artifacts ------------------------------------------------------------------

_NCNN_WEIGHTED = ("Convolution", "ConvolutionDepthWise", "InnerProduct", "Deconvolution", "DeconvolutionDepthWise")


def _ncnn_layers(param: Path):
    lines = [ln.split() for ln in param.read_text().splitlines()[2:] if ln.strip()]
    for t in lines:
        kind, name, nin, nout = t[0], t[1], int(t[2]), int(t[3])
        tops = t[4 + nin: 4 + nin + nout]
        kv = {}
        for s in t[4 + nin + nout:]:
            k, _, v = s.partition("=")
            kv[k] = v
        yield kind, name, tops, kv


def ncnn_cost(param: Path, bin_: Path, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Parameters (weights + biases of the weighted layers) and MACs per image: each weighted
    layer's output size (run through ncnn once) times its weights per output channel."""
    import ncnn

    from edgecompress.export.ncnn import INPUT_BLOB, ncnn_net

    layers = [(k, n, tops, kv) for k, n, tops, kv in _ncnn_layers(param) if k in _NCNN_WEIGHTED]

    def sizes(kind: str, kv: dict) -> tuple[int, int, int]:  # num_output, weight_data_size, bias_term
        wkey, bkey = ("2", "1") if kind == "InnerProduct" else ("6", "5")
        return int(kv.get("0", 0)), int(kv.get(wkey, 0)), int(kv.get(bkey, 0))

    params = sum(w + n * b for n, w, b in (sizes(k, kv) for k, _, _, kv in layers))
    net = ncnn_net(param, bin_, 1, "fp32")
    x = np.zeros(input_shape, np.float32)
    macs = 0
    for kind, _, tops, kv in layers:
        mat = ncnn.Mat(x)
        with net.create_extractor() as ex:
            ex.input(INPUT_BLOB, mat)
            ret, out = ex.extract(tops[0])
        if ret != 0:
            raise ConfigError(f"ncnn could not compute blob {tops[0]} of {param.name}")
        n, w, _ = sizes(kind, kv)
        spatial = 1 if kind == "InnerProduct" else out.w * out.h * max(1, out.d)
        macs += spatial * w  # output size x weights per output channel
    return params, macs


def onnx_cost(path: Path) -> tuple[int, int]:
    """Parameters and MACs per image of the Conv / Gemm / MatMul nodes, weights followed through
    DequantizeLinear (int8 QDQ) and Cast (fp16) nodes; output sizes from onnx shape inference."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims

    def weight(name: str):
        seen = 0
        while name not in inits and name in producers and seen < 4:
            n = producers[name]
            if n.op_type not in ("DequantizeLinear", "Cast", "Identity", "Transpose"):
                return None
            name, seen = n.input[0], seen + 1
        return numpy_helper.to_array(inits[name]).shape if name in inits else None

    params = macs = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        w = weight(n.input[1])
        if w is None:
            continue
        numel = int(np.prod(w))
        bias = weight(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        params += numel + (int(np.prod(bias)) if bias else 0)
        if n.op_type in ("Conv", "ConvTranspose"):
            out = shapes.get(n.output[0]) or []
            spatial = int(np.prod([d for d in out[2:] if d])) if len(out) > 2 else 1
            macs += spatial * numel
        else:
            macs += numel
    return params, macs
