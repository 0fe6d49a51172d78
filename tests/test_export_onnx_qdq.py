"""ONNX int8 QDQ export: the graph onnxruntime runs computes what the quantization simulation computes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import ConfigError, ExportError
from edgecompress.export.onnx import ort_session
from edgecompress.export.onnx_qdq import export_onnx_qdq
from edgecompress.quantize import QuantConfig, quantize_


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.conv3 = nn.Conv2d(16, 24, 1, stride=2)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x) + x)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def _quantized(target="onnx", skip=()):
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.5, 0.5)
        m.bn1.running_var.uniform_(0.5, 2.0)
    calib = [(torch.randn(16, 3, 12, 12), torch.zeros(16)) for _ in range(4)]
    quantize_(m, QuantConfig(calib_batches=4, stability_splits=0, skip_layers=skip), calib, target=target, progress=False)
    return m


def test_qdq_graph_matches_simulation(tmp_path):
    q = _quantized(skip=("conv3",))
    path = export_onnx_qdq(q, (torch.randn(1, 3, 12, 12),), tmp_path / "m.int8.onnx")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 3  # conv1, conv2, fc inputs (conv3 kept float)
    w_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("_w_dq")]
    assert len(w_dq) == 3
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["conv1_w_q"].data_type == onnx.TensorProto.INT8 and "conv3.weight" in inits
    assert inits["conv1_b_q"].data_type == onnx.TensorProto.INT32
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = q(x).numpy()
    got = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    spread = float(want.max() - want.min())
    assert np.abs(got - want).max() < 0.05 * spread  # one activation code apart at most, here and there
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]  # no temporaries left


def test_qdq_refuses_symmetric_contract_and_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="affine u8"):
        export_onnx_qdq(_quantized("ncnn"), (torch.randn(1, 3, 12, 12),), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx_qdq(_quantized(), (torch.randn(1, 3, 12, 12),), tmp_path / "missing" / "m.onnx")
    with pytest.raises(ConfigError, match="no fake-quant layers"):
        export_onnx_qdq(copy.deepcopy(Net()).eval(), (torch.randn(1, 3, 12, 12),), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
