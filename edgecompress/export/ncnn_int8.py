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


def read_bin(layers: list[Layer], path: str | Path) -> None:
    """Fill each weighted layer's weight/bias from the .bin; fail on a weighted type we do not model."""
    buf = memoryview(Path(path).read_bytes())
    off = 0
    for ly in layers:
        if ly.type in ("Convolution", "ConvolutionDepthWise"):
            n, nout, has_bias = ly.p(6), ly.p(0), ly.p(5)
        elif ly.type == "InnerProduct":
            n, nout, has_bias = ly.p(2), ly.p(0), ly.p(1)
        elif ly.type in WEIGHTLESS:
            continue
        else:
            raise ExportError(f"ncnn int8 writer: layer type {ly.type} ({ly.name}) is not supported; "
                              f"supported: {sorted(WEIGHTED | WEIGHTLESS)}")
        if ly.p(8):
            raise ExportError(f"{ly.name} is already int8 (8={ly.p(8)}); start from pnnx's fp32 export")
        ly.weight, off = _read_auto(buf, off, n)
        if has_bias:
            ly.bias = np.frombuffer(buf, "<f4", nout, off).astype(np.float32)
            off += 4 * nout
    if off != len(buf):
        raise ExportError(f"{path}: read {off} of {len(buf)} bytes; the param and bin do not belong together")


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@dataclasses.dataclass
class Int8Plan:
    """What was written for one ncnn layer."""

    layer: str
    torch_layer: str | None
    term: int  # 0: stayed fp32
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
                    param_out: str | Path, bin_out: str | Path, table_out: str | Path | None = None) -> list[Int8Plan]:
    """Rewrite pnnx's fp32 ncnn model to int8 with ``qmodel``'s scales (``quantize_`` under the ncnn
    contract). Returns, per weighted layer, the torch layer it came from and the int8 term written
    (0 = kept fp32, with the reason)."""
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
        w = q.weight.detach().double().numpy().reshape(ly.p(0), -1)
        s_w = q.w_scale.detach().double().numpy()
        if p.term == 1:  # per group: one scale per group (our contract keeps it per group, repeated)
            s_w = s_w.reshape(ly.p(7), -1)[:, 0]
            codes = np.clip(_round_half_away(w.reshape(ly.p(7), -1) * s_w[:, None]), -127, 127)
        else:
            codes = np.clip(_round_half_away(w * s_w[:, None]), -127, 127)
        codes = codes.astype(np.int8).reshape(-1)
        out += struct.pack("<I", TAG_INT8) + codes.tobytes() + b"\0" * ((-codes.size) % 4)
        if ly.bias is not None:
            bias = q.bias.detach().float().numpy() if q.bias is not None else ly.bias
            out += bias.astype("<f4").tobytes()
        s_in = float(q.act_scale)
        out += s_w.astype("<f4").tobytes() + struct.pack("<f", s_in)
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
