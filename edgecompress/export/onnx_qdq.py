"""ONNX int8 in QDQ form from a model quantized by ``quantize_``, in two flavours.

The fp32 graph of the (BN-folded) quantized model is exported as usual, then every quantized
Conv / Gemm gets ``QuantizeLinear -> DequantizeLinear`` on its input (the calibrated scale and zero
point) and its weight stored as s8 codes [-127, 127] with a per-output-channel ``DequantizeLinear``
(axis 0, zero points 0). Layers the quantizer kept float stay float. Nothing is quantized on a
Conv / Gemm output: the simulation quantizes inputs only.

``flavour="affine"`` (model quantized with ``target="onnx"`` or ``"torch"``): u8 activations with
their zero point, one Q/DQ pair shared by all consumers of a tensor that use the same scale, and the
bias as int32 at scale ``x_scale * w_scale``: the form onnxruntime fuses into QLinearConv / QGemm.

``flavour="tensorrt"`` (model quantized with ``target="tensorrt"``): what TensorRT's explicit
quantization takes (EXPORT_FORMATS.md §5.3): s8 activations, per tensor, zero point 0; a dedicated
Q/DQ pair for every consuming node (no pair shared between consumers); the bias left float (TensorRT
rejects a DequantizeLinear on int32 and fuses the float bias itself).

>>> path = export_onnx_qdq(qmodel, (x,), "model.int8.onnx")                         # doctest: +SKIP
>>> path = export_onnx_qdq(trt_qmodel, (x,), "model.trt.onnx", flavour="tensorrt")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch.nn as nn

from edgecompress.errors import ConfigError, ExportError


def _affine_u8(c) -> bool:
    return c.act_qmin == 0 and c.act_qmax == 255 and c.convention == "divide"


def _symmetric_s8(c) -> bool:
    return (c.act_scheme == "symmetric" and c.act_qmin == -128 and c.act_qmax == 127 and c.convention == "divide"
            and c.rounding == "half_even")


@dataclasses.dataclass(frozen=True)
class _Flavour:
    name: str
    accepts: Callable  # Contract -> bool: the contract whose arithmetic this graph computes
    needs: str  # what to say when the model was quantized under another contract
    act_zp_dtype: type  # np.uint8 | np.int8: the activation zero point (so QuantizeLinear's output) type
    share_act_qdq: bool  # one Q/DQ pair per (tensor, scale, zero point), or one per consuming node
    int32_bias: bool  # bias as int32 + DequantizeLinear, or left a float initializer


FLAVOURS = {
    "affine": _Flavour("affine", _affine_u8, "ONNX QDQ needs the affine u8 contract (quantize with target='onnx' or "
                       "'torch')", np.uint8, share_act_qdq=True, int32_bias=True),
    "tensorrt": _Flavour("tensorrt", _symmetric_s8, "TensorRT QDQ needs the symmetric s8 contract (quantize with "
                         "target='tensorrt')", np.int8, share_act_qdq=False, int32_bias=False),
}


def export_onnx_qdq(qmodel: nn.Module, example_inputs: tuple, out_path: str | os.PathLike, cfg=None, *,
                    flavour: str = "affine") -> Path:
    """Write the QDQ ONNX of ``qmodel`` (quantized in place by ``quantize_``) to ``out_path``
    atomically, in the given ``flavour`` (see the module docstring); dynamic batch, opset and
    threads from ``cfg`` (an ``ExportConfig``)."""
    import onnx

    from edgecompress.export.onnx import OnnxExporter
    from edgecompress.quantize.ptq import act_points, quant_layers

    if flavour not in FLAVOURS:
        raise ConfigError(f"unknown QDQ flavour {flavour!r}; known: {sorted(FLAVOURS)}")
    fl = FLAVOURS[flavour]
    layers = quant_layers(qmodel)
    if not layers:
        raise ConfigError("export_onnx_qdq needs a model quantized by edgecompress.quantize.quantize_ (no fake-quant layers)")
    _check_contracts(layers, fl)
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise ExportError(f"output folder {out_path.parent} does not exist; create it first")
    fmodel = copy.deepcopy(qmodel).eval()
    for q in quant_layers(fmodel).values():
        q.enabled = False  # the fp32 graph; the layers' QDQ nodes are inserted below
    points = act_points(fmodel)
    for p in points.values():
        p.emit_qdq()  # tensor points (residual adds) come out of the exporter as Q/DQ pairs
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".qdq-") as tmp:
        paths = OnnxExporter(cfg).export(fmodel, example_inputs, tmp)
        model = onnx.load(str(paths["onnx"]))
        _check_points(model.graph, points)
        _insert_qdq(model.graph, layers, fl)
        onnx.checker.check_model(model, full_check=True)
        tmp_out = Path(tmp) / "qdq.onnx"
        onnx.save(model, str(tmp_out))
        os.replace(tmp_out, out_path)
    return out_path


def _check_contracts(layers: dict, fl: _Flavour) -> None:
    for name, q in layers.items():
        if not q.enabled:
            continue
        c = q.contract
        if not fl.accepts(c):
            other = [f.name for f in FLAVOURS.values() if f.name != fl.name and f.accepts(c)]
            alt = f", or export with flavour={other[0]!r}" if other else ""
            raise ConfigError(f"layer {name!r} was quantized under {c.name!r}; {fl.needs}{alt}")
        if fl.act_zp_dtype is np.int8 and int(q.act_zero_point.item()) != 0:
            raise ConfigError(f"layer {name!r} has activation zero point {int(q.act_zero_point.item())}; {fl.needs}")


def _scalar(g, name: str):
    """The value of a scalar initializer or Constant output ``name`` (None when it is neither)."""
    from onnx import numpy_helper

    for i in g.initializer:
        if i.name == name:
            return numpy_helper.to_array(i).item()
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t).item()
    return None


def _check_points(g, points: dict) -> None:
    """Every enabled tensor point came out as one QuantizeLinear with its scale and zero point."""
    want = sorted((float(p.act_scale), int(p.act_zero_point)) for p in points.values() if p.enabled)
    got = sorted((_scalar(g, n.input[1]), _scalar(g, n.input[2])) for n in g.node if n.op_type == "QuantizeLinear")
    if len(want) != len(got) or not np.allclose(np.array(want, float), np.array(got, float), rtol=1e-6, atol=0):
        raise ExportError(f"the exported graph has {len(got)} QuantizeLinear nodes for {len(want)} tensor "
                          "quantization points, or other scales; the ONNX exporter changed them")


def _producer_qparams(g, producers: dict, tensor: str):
    """(scale, zero point) when ``tensor`` is a per-tensor DequantizeLinear's output, else None."""
    n = producers.get(tensor)
    if n is None or n.op_type != "DequantizeLinear" or len(n.input) < 3:
        return None
    s, z = _scalar(g, n.input[1]), _scalar(g, n.input[2])
    return None if s is None or z is None else (float(s), int(z))


def _layer_of(node, layers: dict):
    """The enabled fake-quant layer a Conv / Gemm node computes (found by its weight's name), or None."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or not node.input[1].endswith(".weight"):
        return None, None
    lname = node.input[1][: -len(".weight")]
    q = layers.get(lname)
    if q is None or not q.enabled:
        return None, None
    if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
        return None, None  # a layout we do not rewrite (output channels not on axis 0): stays float
    return lname, q


def _act_qdq(src: str, tag: str, scale: float, zp: int, zp_dtype) -> tuple[list, list, str]:
    """Per-tensor QuantizeLinear -> DequantizeLinear of ``src``: (initializers, nodes, output name)."""
    from onnx import helper, numpy_helper

    s, z, qn, dn = f"{tag}_x_scale", f"{tag}_x_zp", f"{tag}_x_q", f"{tag}_x_dq"
    inits = [numpy_helper.from_array(np.array(scale, np.float32), s), numpy_helper.from_array(np.array(zp, zp_dtype), z)]
    nodes = [helper.make_node("QuantizeLinear", [src, s, z], [qn], name=qn),
             helper.make_node("DequantizeLinear", [qn, s, z], [dn], name=dn)]
    return inits, nodes, dn


def _weight_dq(tag: str, q) -> tuple[list, list, str]:
    """s8 weight codes [-127, 127] (the simulation's) + per-output-channel DequantizeLinear, axis 0."""
    from onnx import helper, numpy_helper

    from edgecompress.quantize.contracts import quantize_codes

    w_scale = q.w_scale.detach().float()
    w = q.weight.detach().float()
    codes = quantize_codes(w, w_scale.view(-1, *([1] * (w.dim() - 1))), 0, -127, 127, q.contract)
    wq, ws, wz, dn = f"{tag}_w_q", f"{tag}_w_scale", f"{tag}_w_zp", f"{tag}_w_dq"
    inits = [numpy_helper.from_array(codes.numpy().astype(np.int8), wq),
             numpy_helper.from_array(w_scale.numpy().astype(np.float32), ws),
             numpy_helper.from_array(np.zeros(len(w_scale), np.int8), wz)]
    return inits, [helper.make_node("DequantizeLinear", [wq, ws, wz], [dn], name=dn, axis=0)], dn


def _int32_bias_dq(tag: str, bias: np.ndarray, x_scale: float, w_scale: np.ndarray) -> tuple[list, list, str]:
    """The bias as int32 at scale ``x_scale * w_scale`` + DequantizeLinear (onnxruntime's QLinearConv form)."""
    from onnx import helper, numpy_helper

    b_scale = (np.float32(x_scale) * w_scale).astype(np.float32)
    bq = np.clip(np.round(bias.astype(np.float64) / b_scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    bn, bs, bz, dn = f"{tag}_b_q", f"{tag}_b_scale", f"{tag}_b_zp", f"{tag}_b_dq"
    inits = [numpy_helper.from_array(bq, bn), numpy_helper.from_array(b_scale, bs),
             numpy_helper.from_array(np.zeros(len(bq), np.int32), bz)]
    return inits, [helper.make_node("DequantizeLinear", [bn, bs, bz], [dn], name=dn, axis=0)], dn


def _insert_qdq(g, layers: dict, fl: _Flavour) -> None:
    """Rewrite graph ``g`` in place: Q/DQ on the inputs of the quantized Conv / Gemm nodes, int8
    weights, the bias per the flavour; replaced float initializers are dropped."""
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    new_nodes, added, replaced = [], [], set()
    shared: dict[tuple, str] = {}  # (tensor, scale, zp) -> dequantized name, when the flavour shares pairs
    for node in g.node:
        lname, q = _layer_of(node, layers)
        if q is None:
            new_nodes.append(node)
            continue
        tag = lname.replace(".", "_")
        x_scale, x_zp = float(q.act_scale.item()), int(q.act_zero_point.item())
        key = (node.input[0], x_scale, x_zp)
        upstream = _producer_qparams(g, producers, node.input[0])
        if upstream is not None and np.isclose(upstream[0], x_scale, rtol=1e-6, atol=0) and upstream[1] == x_zp:
            x_dq = node.input[0]  # already quantized by a tensor point with the same parameters
        elif fl.share_act_qdq and key in shared:
            x_dq = shared[key]
        else:
            i, n, x_dq = _act_qdq(node.input[0], tag, x_scale, x_zp, fl.act_zp_dtype)
            added += i
            new_nodes += n
            shared[key] = x_dq
        i, n, w_dq = _weight_dq(tag, q)
        added += i
        new_nodes += n
        replaced.add(node.input[1])
        inputs = [x_dq, w_dq]
        if len(node.input) >= 3 and node.input[2]:
            if fl.int32_bias:
                bias = numpy_helper.to_array(inits[node.input[2]])
                i, n, b_dq = _int32_bias_dq(tag, bias, x_scale, q.w_scale.detach().float().numpy())
                added += i
                new_nodes += n
                replaced.add(node.input[2])
                inputs.append(b_dq)
            else:
                inputs.append(node.input[2])
        node.input[:] = inputs
        new_nodes.append(node)
    if not replaced:
        raise ExportError("no quantized Conv/Gemm of the model was found in the exported graph")
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [i for i in g.initializer if i.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep + added)
