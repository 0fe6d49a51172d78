"""ncnn int8 written from edgecompress's own scales (no ncnn2table/ncnn2int8: they are not in the
pip wheel). Input: pnnx's fp32 ``.param``/``.bin`` of the float model and the model quantized by
``quantize_(..., target="ncnn")``; output: the same graph with every Convolution,
ConvolutionDepthWise and InnerProduct rewritten to int8 (EXPORT_FORMATS.md §2): ``8=2`` (per output
channel weight scales) or ``8=1`` (depthwise: per group), int8-tagged weights quantized from our
BN-folded weights with our scales (so the runtime's integer weights are the simulation's), our
folded bias, then the weight scales and the input scale, as multipliers (ncnn = 1 / ONNX scale).
Also writes ncnn2table's text format, so ncnn's own tools can reuse our calibration.

Grouped (not depthwise) convs with a multiple of 8 output channels per group stay fp32: the current
x86 ncnn wheel computes them wrongly in int8 with packing on (EXPORT_FORMATS.md §2.6).
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import torch

from edgecompress.errors import ExportError

MAGIC = 7767517
TAG_FP32, TAG_FP16, TAG_INT8 = 0x00000000, 0x01306B47, 0x000D4B38
WEIGHTED = {"Convolution", "ConvolutionDepthWise", "InnerProduct"}
# layer types that read nothing from the .bin (the graphs pnnx writes for CNN classifiers)
WEIGHTLESS = {"Input", "Split", "ReLU", "ReLU6", "Clip", "Sigmoid", "Swish", "HardSwish", "HardSigmoid", "Pooling",
              "BinaryOp", "Flatten", "Reshape", "Softmax", "Concat", "Permute", "Crop", "Eltwise", "Dropout", "Noop",
              "Slice", "ShuffleChannel", "Interp", "UnaryOp", "Padding", "Mish", "TanH", "ELU", "Reduction"}


@dataclasses.dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str]  # key -> raw value text, in file order
    weight: np.ndarray | None = None  # float32, flat
    bias: np.ndarray | None = None

    def p(self, key: int, default: int = 0) -> int:
        return int(self.params.get(str(key), default))

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        return " ".join([f"{self.type:<24}", f"{self.name:<24}", str(len(self.bottoms)), str(len(self.tops)),
                         *self.bottoms, *self.tops, kv]).rstrip()


def read_param(path: str | Path) -> list[Layer]:
    lines = Path(path).read_text().split("\n")
    if not lines or lines[0].strip() != str(MAGIC):
        raise ExportError(f"{path} is not an ncnn param file (magic {MAGIC} expected)")
    layers = []
    for ln in lines[2:]:
        f = ln.split()
        if not f:
            continue
        nb, nt = int(f[2]), int(f[3])
        bottoms, tops = f[4:4 + nb], f[4 + nb:4 + nb + nt]
        params = dict(kv.split("=", 1) for kv in f[4 + nb + nt:])
        layers.append(Layer(f[0], f[1], bottoms, tops, params))
    return layers


def _read_auto(buf: memoryview, off: int, n: int) -> tuple[np.ndarray, int]:
    (flag,) = struct.unpack_from("<I", buf, off)
    off += 4
    if flag == TAG_FP32:
        return np.frombuffer(buf, "<f4", n, off).astype(np.float32), off + 4 * n
    if flag == TAG_FP16:
        a = np.frombuffer(buf, "<f2", n, off).astype(np.float32)
        return a, off + ((2 * n + 3) // 4) * 4
    raise ExportError(f"unsupported ncnn weight storage flag 0x{flag:08x} (export the float model with pnnx fp16=0)")


def _weight_dims(ly: Layer) -> tuple[int, int, int] | None:
    """(weight elements, outputs, has bias) of a weighted layer; None for other layer types."""
    if ly.type in ("Convolution", "ConvolutionDepthWise"):
        return ly.p(6), ly.p(0), ly.p(5)
    if ly.type == "InnerProduct":
        return ly.p(2), ly.p(0), ly.p(1)
    return None


def read_bin(layers: list[Layer], path: str | Path) -> None:
    """Fill each weighted layer's weight/bias from the .bin; fail on a weighted type we do not model."""
    buf = memoryview(Path(path).read_bytes())
    off = 0
    for ly in layers:
        dims = _weight_dims(ly)
        if dims is None and ly.type in WEIGHTLESS:
            continue
        if dims is None:
            raise ExportError(f"ncnn int8 writer: layer type {ly.type} ({ly.name}) is not supported; "
                              f"supported: {sorted(WEIGHTED | WEIGHTLESS)}")
        n, nout, has_bias = dims
        if ly.p(8):
            raise ExportError(f"{ly.name} is already int8 (8={ly.p(8)}); start from pnnx's fp32 export")
        ly.weight, off = _read_auto(buf, off, n)
        if has_bias:
            ly.bias = np.frombuffer(buf, "<f4", nout, off).astype(np.float32)
            off += 4 * nout
    if off != len(buf):
        raise ExportError(f"{path}: read {off} of {len(buf)} bytes; the param and bin do not belong together")


@dataclasses.dataclass
class Int8Plan:
    """What was written for one ncnn layer."""

    layer: str
    torch_layer: str | None
    term: int  # 0: stayed fp32; 1/2 int8 (per-group / per-channel weight scales); +100: output requantized
    reason: str = ""


def _match(ly: Layer, qlayers: dict, used: set) -> str | None:
    """The quantized torch layer whose folded weight is this ncnn layer's (same shape, same values)."""
    best, best_err = None, np.inf
    for name, q in qlayers.items():
        if name in used:
            continue
        w = q.weight.detach().float().numpy().reshape(-1)
        if w.size != ly.weight.size or q.weight.shape[0] != ly.p(0):
            continue
        err = np.abs(w - ly.weight).max() / max(np.abs(w).max(), 1e-12)
        if err < best_err:
            best, best_err = name, err
    return best if best_err < 1e-3 else None


def write_ncnn_int8(param_in: str | Path, bin_in: str | Path, qmodel: torch.nn.Module,
                    param_out: str | Path, bin_out: str | Path, table_out: str | Path | None = None,
                    requantize: bool = True) -> list[Int8Plan]:
    """Rewrite pnnx's fp32 ncnn model to int8 with ``qmodel``'s scales (``quantize_`` under the ncnn
    contract). Returns, per weighted layer, the torch layer it came from and the int8 term written
    (0 = kept fp32, with the reason).

    ``requantize``: a Convolution/ConvolutionDepthWise whose output goes only to int8
    Convolution/ConvolutionDepthWise layers (directly or through a Split) that share one input
    scale emits int8 (term + 100, the consumers' input scale as its top scale), as ncnn2int8 does:
    the int8 tensor is passed on instead of fp32 being written and quantized again."""
    from edgecompress.quantize.contracts import quantize_codes
    from edgecompress.quantize.ptq import quant_layers

    qlayers = quant_layers(qmodel)
    if not qlayers:
        raise ExportError("the model has no fake-quant layers; quantize it with quantize_(..., target='ncnn') first")
    bad = {q.contract.name for q in qlayers.values()} - {"ncnn"}
    if bad:
        raise ExportError(f"ncnn int8 needs scales under the ncnn contract, got {sorted(bad)}; "
                          "quantize with target='ncnn'")
    layers = read_param(param_in)
    read_bin(layers, bin_in)
    plans, used, table = [], set(), []
    out = bytearray()
    for ly in layers:
        if ly.type not in WEIGHTED:
            continue
        name = _match(ly, qlayers, used)
        if name is None:
            raise ExportError(f"ncnn layer {ly.name} ({ly.type}, {ly.p(0)} outputs) matches no quantized torch layer; "
                              "export the same (unquantized, BN-foldable) model the quantizer saw")
        used.add(name)
        q = qlayers[name]
        if not q.enabled:
            plans.append(Int8Plan(ly.name, name, 0, "float in the quantized model (fallback)"))
            continue
        nout = ly.p(0)
        group = ly.p(7, 1) if ly.type == "ConvolutionDepthWise" else 1
        if group > 1 and group != nout and (nout // group) % 8 == 0:
            plans.append(Int8Plan(ly.name, name, 0, "grouped conv with a multiple of 8 outputs per group: the x86 "
                                  "ncnn wheel computes it wrongly in int8 (EXPORT_FORMATS.md §2.6)"))
            continue
        plans.append(Int8Plan(ly.name, name, 1 if group > 1 else 2))
    by_layer = {p.layer: p for p in plans}
    top_scale = _requant_scales(layers, by_layer, qlayers) if requantize else {}
    for name in top_scale:
        by_layer[name].term += 100
    for ly in layers:
        if ly.type not in WEIGHTED:
            continue
        p = by_layer[ly.name]
        if p.term == 0:
            out += struct.pack("<I", TAG_FP32) + ly.weight.astype("<f4").tobytes()
            if ly.bias is not None:
                out += ly.bias.astype("<f4").tobytes()
            continue
        q = qlayers[p.torch_layer]
        # the simulation's own codes (float32 arithmetic: a float64 product rounds differently
        # at .5 boundaries, and one flipped weight code shows in every output of its channel)
        shape = (-1,) + (1,) * (q.weight.dim() - 1)
        codes = quantize_codes(q.weight.detach(), q.w_scale.view(shape), 0, -127, 127, q.contract)
        codes = codes.numpy().astype(np.int8).reshape(-1)
        s_w = q.w_scale.detach().float().numpy()
        if p.term % 100 == 1:  # per group: one scale per group (our contract keeps it per group, repeated)
            s_w = s_w.reshape(ly.p(7), -1)[:, 0]
        out += struct.pack("<I", TAG_INT8) + codes.tobytes() + b"\0" * ((-codes.size) % 4)
        if ly.bias is not None:
            bias = q.bias.detach().float().numpy() if q.bias is not None else ly.bias
            out += bias.astype("<f4").tobytes()
        s_in = float(q.act_scale)
        out += s_w.astype("<f4").tobytes() + struct.pack("<f", s_in)
        if ly.name in top_scale:
            out += struct.pack("<f", top_scale[ly.name])
        ly.params["8"] = str(p.term)
        table.append(f"{ly.name}_param_0 " + " ".join(f"{v:f}" for v in s_w))
        table.append(f"{ly.name} {s_in:f}")
    head = Path(param_in).read_text().split("\n")[:2]
    files = {Path(param_out): ("\n".join(head + [ly.line() for ly in layers]) + "\n").encode(),
             Path(bin_out): bytes(out)}  # weightless layers have nothing in the .bin
    if table_out is not None:
        files[Path(table_out)] = ("\n".join(table) + "\n").encode()
    _write_all(files)
    return plans


def _requant_scales(layers: list[Layer], by_layer: dict[str, Int8Plan], qlayers: dict) -> dict[str, float]:
    """{producer layer: top scale} for the int8 Conv/DW layers whose every consumer (through Splits)
    is an int8 Conv/DW with one common input scale (EXPORT_FORMATS.md §2.5 step 8)."""
    consumers: dict[str, list[Layer]] = {}
    for ly in layers:
        for b in ly.bottoms:
            consumers.setdefault(b, []).append(ly)

    def leaves(blob: str) -> list[Layer]:
        out = []
        for c in consumers.get(blob, []):
            out += [x for t in c.tops for x in leaves(t)] if c.type == "Split" else [c]
        return out

    def int8_conv(ly: Layer) -> bool:
        return ly.type in ("Convolution", "ConvolutionDepthWise") and by_layer[ly.name].term != 0

    scales = {}
    for ly in layers:
        if not int8_conv(ly) or len(ly.tops) != 1:
            continue
        cs = leaves(ly.tops[0])
        if not cs or not all(int8_conv(c) for c in cs):
            continue
        s_in = {float(qlayers[by_layer[c.name].torch_layer].act_scale) for c in cs}
        if len(s_in) == 1:
            scales[ly.name] = s_in.pop()
    return scales


def _write_all(files: dict[Path, bytes]) -> None:
    """Every file or none: all are written to temporaries first, then moved into place."""
    tmps = {}
    try:
        for path, data in files.items():
            if not path.parent.is_dir():
                raise ExportError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmps[tmp] = path
        for tmp, path in tmps.items():
            tmp.replace(path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


def _activation(ly: Layer, y: torch.Tensor) -> torch.Tensor:
    """The activation ncnn fused into ``ly`` (param 9; 10 = its parameters)."""
    act = ly.p(9)
    if act == 0:
        return y
    if act == 1:
        return y.clamp_min(0)
    if act == 3:
        raw = ly.params.get("10") or ly.params.get("-23310", "")
        vals = [float(v) for v in raw.split(",") if v]
        lo, hi = (vals[1], vals[2]) if "10" not in ly.params else (vals[0], vals[1])
        return y.clamp(lo, hi)
    raise ExportError(f"{ly.name}: fused activation {act} is not modelled by the per-layer check")


def layer_diffs(param: str | Path, bin_: str | Path, qmodel: torch.nn.Module, plans: list[Int8Plan],
                x: torch.Tensor, threads: int = 1, **opts) -> list[dict]:
    """Per weighted layer: the ncnn int8 runtime's output blob against the torch layer's output
    (with the activation ncnn fused) on images ``x``: max abs diff, the same relative to the
    layer's output range, and the fraction of elements that differ by more than a millionth of it.
    Names the first layer where the artifact and the simulation part ways."""
    from edgecompress.export.ncnn import INPUT_BLOB, ncnn_net
    from edgecompress.quantize.contracts import quantize_codes
    from edgecompress.quantize.ptq import quant_layers

    layers = {ly.name: ly for ly in read_param(param)}
    qlayers = quant_layers(qmodel)
    outs: dict[str, torch.Tensor] = {}
    hooks = [qlayers[p.torch_layer].register_forward_hook(
        lambda m, i, o, n=p.layer: outs.__setitem__(n, o.detach())) for p in plans]
    try:
        with torch.no_grad():
            qmodel.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    net = ncnn_net(param, bin_, threads, "fp32", **opts)
    got: dict[str, list[np.ndarray]] = {p.layer: [] for p in plans}
    top_scale = _top_scales(bin_, layers)
    import ncnn

    for img in x.numpy():
        arr = np.ascontiguousarray(img, dtype=np.float32)
        mat = ncnn.Mat(arr)
        with net.create_extractor() as ex:
            ex.input(INPUT_BLOB, mat)
            for p in plans:
                ret, m = ex.extract(layers[p.layer].tops[0])
                if ret != 0:
                    raise ExportError(f"ncnn could not extract the output of {p.layer} ({ret})")
                v = np.array(m)
                got[p.layer].append(v / top_scale[p.layer] if p.layer in top_scale else v)
    rows = []
    for p in plans:
        ref = _activation(layers[p.layer], outs[p.layer])
        if p.layer in top_scale:  # requantized: compare int8 codes, as the consumer reads them
            s = top_scale[p.layer]
            ref = quantize_codes(ref, s, 0, -127, 127, qlayers[p.torch_layer].contract) / s
        ref = ref.reshape(len(x), -1).numpy()
        out = np.stack(got[p.layer]).reshape(len(x), -1)
        d = np.abs(out - ref)
        rng = max(float(np.abs(ref).max()), 1e-12)
        rows.append({"layer": p.layer, "torch_layer": p.torch_layer, "term": p.term, "max_abs_diff": float(d.max()),
                     "max_rel_diff": float(d.max() / rng), "frac_differing": float((d > 1e-6 * rng).mean())})
    return rows


def _walk_int8_bin(bin_: str | Path, layers: list[Layer]) -> dict[str, dict]:
    """Per weighted layer of a written (int8) model: its weight as stored (int8 codes or float),
    and for int8 layers the weight scales, input scale and requantize (top) scale."""
    buf = memoryview(Path(bin_).read_bytes())
    off, out = 0, {}
    for ly in layers:
        dims = _weight_dims(ly)
        if dims is None:
            continue
        n, nout, has_bias = dims
        (flag,) = struct.unpack_from("<I", buf, off)
        dtype, size = {TAG_FP32: ("<f4", 4), TAG_FP16: ("<f2", 2), TAG_INT8: ("i1", 1)}[flag]
        rec = {"weight": np.frombuffer(buf, dtype, n, off + 4)}
        off += 4 + n * size + (-(n * size)) % 4 + 4 * nout * has_bias
        term = ly.p(8)
        if term:
            nscale = ly.p(7, 1) if term % 100 == 1 else (1 if ly.type == "ConvolutionDepthWise" else nout)
            rec["weight_scales"] = np.frombuffer(buf, "<f4", nscale, off)
            rec["input_scale_offset"] = off + 4 * nscale
            (rec["input_scale"],) = struct.unpack_from("<f", buf, off + 4 * nscale)
            off += 4 * nscale + 4
            if term > 100:
                (rec["top_scale"],) = struct.unpack_from("<f", buf, off)
                off += 4
        out[ly.name] = rec
    if off != len(buf):
        raise ExportError(f"{bin_}: read {off} of {len(buf)} bytes; the param and bin do not belong together")
    return out


def _top_scales(bin_: str | Path, layers: dict[str, Layer]) -> dict[str, float]:
    """The requantize (top) scale of every layer written with term > 100. Extracting such a
    layer's output gives the raw int8 codes as floats (EXPORT_FORMATS.md §2.6)."""
    recs = _walk_int8_bin(bin_, list(layers.values()))
    return {name: r["top_scale"] for name, r in recs.items() if "top_scale" in r}


def plans_of(param: str | Path, bin_: str | Path, qmodel: torch.nn.Module) -> list[Int8Plan]:
    """The plan of an int8 model already on disk: each int8 layer matched to the torch layer whose
    weight codes it stores (layers kept fp32 are left out)."""
    from edgecompress.quantize.contracts import quantize_codes
    from edgecompress.quantize.ptq import quant_layers

    layers = read_param(param)
    recs = _walk_int8_bin(bin_, layers)
    qlayers = {n: q for n, q in quant_layers(qmodel).items() if q.enabled}
    plans, used = [], set()
    for ly in layers:
        if ly.name not in recs or not ly.p(8):
            continue
        w = recs[ly.name]["weight"]
        for name, q in qlayers.items():
            if name in used or q.weight.numel() != w.size or q.weight.shape[0] != ly.p(0):
                continue
            shape = (-1,) + (1,) * (q.weight.dim() - 1)
            codes = quantize_codes(q.weight.detach(), q.w_scale.view(shape), 0, -127, 127, q.contract)
            if np.array_equal(codes.numpy().reshape(-1).astype(np.int8), w):
                plans.append(Int8Plan(ly.name, name, ly.p(8)))
                used.add(name)
                break
    return plans
