"""ONNX int8 in QDQ form from a model quantized under the affine ``onnx``/``torch`` contract.

The fp32 graph of the (BN-folded) quantized model is exported as usual, then every quantized
Conv / Gemm gets ``QuantizeLinear -> DequantizeLinear`` on its input (the calibrated u8 scale and
zero point), its weight stored as s8 codes with a per-output-channel ``DequantizeLinear`` (axis 0),
and its bias as int32 at scale ``x_scale * w_scale`` (the form onnxruntime fuses into QLinearConv /
QGemm). Layers the quantizer kept float stay float.

>>> path = export_onnx_qdq(qmodel, (x,), "model.int8.onnx")       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import ConfigError, ExportError


def export_onnx_qdq(qmodel: nn.Module, example_inputs: tuple, out_path: str | os.PathLike, cfg=None) -> Path:
    import onnx
    from onnx import numpy_helper

    from edgecompress.export.onnx import OnnxExporter
    from edgecompress.quantize.contracts import quantize_codes
    from edgecompress.quantize.ptq import quant_layers

    layers = quant_layers(qmodel)
    if not layers:
        raise ConfigError("export_onnx_qdq needs a model quantized by edgecompress.quantize.quantize_ (no fake-quant layers)")
    for name, q in layers.items():
        c = q.contract
        if q.enabled and not (c.act_qmin == 0 and c.act_qmax == 255 and c.convention == "divide"):
            raise ConfigError(f"layer {name!r} was quantized under {c.name!r}; ONNX QDQ needs the affine u8 contract "
                              "(quantize with target='onnx' or 'torch')")
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise ExportError(f"output folder {out_path.parent} does not exist; create it first")
    fmodel = copy.deepcopy(qmodel).eval()
    for q in quant_layers(fmodel).values():
        q.enabled = False  # the fp32 graph; the QDQ nodes are inserted below
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".qdq-") as tmp:
        paths = OnnxExporter(cfg).export(fmodel, example_inputs, tmp)
        model = onnx.load(str(paths["onnx"]))
        g = model.graph
        inits = {i.name: i for i in g.initializer}
        new_nodes, added = [], []
        act_q: dict[tuple, str] = {}  # (tensor, scale, zp) -> dequantized name (shared by consumers)
        done = set()
        for node in g.node:
            lname = None
            if node.op_type in ("Conv", "Gemm") and len(node.input) >= 2 and node.input[1].endswith(".weight"):
                lname = node.input[1][: -len(".weight")]
            q = layers.get(lname) if lname else None
            if q is None or not q.enabled:
                new_nodes.append(node)
                continue
            if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                new_nodes.append(node)  # a layout we do not rewrite: stays float
                continue
            x_scale = float(q.act_scale.item())
            x_zp = int(q.act_zero_point.item())
            w_scale = q.w_scale.detach().float()
            w = q.weight.detach().float()
            codes = quantize_codes(w, w_scale.view(-1, *([1] * (w.dim() - 1))), 0, -127, 127, q.contract)
            tag = lname.replace(".", "_")
            key = (node.input[0], x_scale, x_zp)
            if key not in act_q:
                s, z = f"{tag}_x_scale", f"{tag}_x_zp"
                added += [numpy_helper.from_array(np.array(x_scale, np.float32), s),
                          numpy_helper.from_array(np.array(x_zp, np.uint8), z)]
                qn, dn = f"{tag}_x_q", f"{tag}_x_dq"
                new_nodes.append(onnx.helper.make_node("QuantizeLinear", [node.input[0], s, z], [qn], name=qn))
                new_nodes.append(onnx.helper.make_node("DequantizeLinear", [qn, s, z], [dn], name=dn))
                act_q[key] = dn
            w_name = node.input[1]
            added += [numpy_helper.from_array(codes.numpy().astype(np.int8), f"{tag}_w_q"),
                      numpy_helper.from_array(w_scale.numpy().astype(np.float32), f"{tag}_w_scale"),
                      numpy_helper.from_array(np.zeros(len(w_scale), np.int8), f"{tag}_w_zp")]
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{tag}_w_q", f"{tag}_w_scale", f"{tag}_w_zp"],
                                                   [f"{tag}_w_dq"], name=f"{tag}_w_dq", axis=0))
            inputs = [act_q[key], f"{tag}_w_dq"]
            if len(node.input) >= 3 and node.input[2]:
                b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                b_scale = (np.float32(x_scale) * w_scale.numpy()).astype(np.float32)
                bq = np.clip(np.round(b / b_scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
                added += [numpy_helper.from_array(bq, f"{tag}_b_q"), numpy_helper.from_array(b_scale, f"{tag}_b_scale"),
                          numpy_helper.from_array(np.zeros(len(bq), np.int32), f"{tag}_b_zp")]
                new_nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{tag}_b_q", f"{tag}_b_scale", f"{tag}_b_zp"],
                                                       [f"{tag}_b_dq"], name=f"{tag}_b_dq", axis=0))
                inputs.append(f"{tag}_b_dq")
                done.add(node.input[2])
            node.input[:] = inputs
            done.add(w_name)
            new_nodes.append(node)
        if not done:
            raise ExportError("no quantized Conv/Gemm of the model was found in the exported graph")
        del g.node[:]
        g.node.extend(new_nodes)
        keep = [i for i in g.initializer if i.name not in done]
        del g.initializer[:]
        g.initializer.extend(keep + added)
        onnx.checker.check_model(model, full_check=True)
        tmp_out = Path(tmp) / "qdq.onnx"
        onnx.save(model, str(tmp_out))
        os.replace(tmp_out, out_path)
    return out_path
