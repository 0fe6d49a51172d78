"""Tensor quantization points around residual adds (``edgecompress.quantize.graph``): onnxruntime
forms QLinearConv / QLinearAdd for the whole network, and runs what the simulation computes."""

from __future__ import annotations

import collections
import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import ConfigError
from edgecompress.export.onnx import ort_session
from edgecompress.export.onnx_qdq import export_onnx_qdq
from edgecompress.models import create_model
from edgecompress.quantize import QuantConfig, act_points, qat_, quant_layers, quantize_, set_quant_enabled_


def _calib(n=4, shape=(8, 3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.zeros(shape[0], dtype=torch.long)) for _ in range(n)]


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    q = create_model("resnet20").eval()
    rep = quantize_(q, QuantConfig(calib_batches=4, stability_splits=0), _calib(), target="onnx", progress=False)
    return q, rep


def test_points_sit_around_every_residual_add_and_tie_the_convs_that_read_them(r20):
    q, rep = r20
    points = act_points(q)
    # 9 adds: conv2 output + add output (after its ReLU) each, the stem's output (identity of layer1.0),
    # and the 2 projection shortcuts' outputs; identities of later blocks are earlier adds' outputs.
    assert len(points) == rep["residual_points"]["count"] == 9 * 2 + 1 + 2
    assert "layer1.0.conv2:out" in points and "layer2.0.shortcut.0:out" in points
    tied = {n: l.input_point.point_name for n, l in quant_layers(q).items() if l.input_point is not None}
    assert tied["layer1.0.conv1"] == "relu" and tied["layer2.0.shortcut.0"] == tied["layer2.0.conv1"]
    assert len(tied) == 11  # every conv1 and both shortcuts read a point; conv2s read conv1's ReLU
    for n, p in tied.items():
        layer = quant_layers(q)[n]
        assert layer.act_scale.item() == points[p].act_scale.item()
        assert layer.act_zero_point.item() == points[p].act_zero_point.item()
        assert rep["spec"]["layers"][n]["act"]["input_point"] == p
    after_relu = [p for n, p in points.items() if ":relu" in n]
    assert after_relu and all(int(p.act_zero_point) == 0 for p in after_relu)  # ReLU range: zero point 0
    assert set(rep["spec"]["tensors"]) == set(points)


def test_onnxruntime_runs_every_conv_and_add_in_int8_like_the_simulation(r20, tmp_path):
    import onnxruntime as ort

    q, _ = r20
    path = export_onnx_qdq(q, (torch.randn(1, 3, 32, 32),), tmp_path / "m.int8.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] == 21 + 9 + 2  # the points, the 9 conv2 inputs, the stem conv's and fc's
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    opt = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert opt["QLinearConv"] == 21 and opt["QLinearAdd"] == 9, opt  # measured: both, 2 Transposes left
    assert opt["Conv"] == opt["FusedConv"] == opt["Add"] == 0 and opt["Transpose"] <= 2, opt
    x = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = q(x).numpy()
    got = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    agree = (got.argmax(1) == want.argmax(1)).mean()
    assert agree >= 0.99, agree  # measured 1.0
    assert np.abs(got - want).max() <= 0.05 * float(want.max() - want.min())


def test_contract_default_and_config_switch():
    torch.manual_seed(0)
    m = create_model("resnet20").eval()
    for target, cfg, want in [("ncnn", QuantConfig(calib_batches=2), 0),
                              ("onnx", QuantConfig(calib_batches=2, residual_points=False), 0),
                              ("tensorrt", QuantConfig(calib_batches=2), 0)]:
        q = copy.deepcopy(m)
        rep = quantize_(q, cfg, _calib(2), target=target, progress=False)
        assert rep["residual_points"]["count"] == len(act_points(q)) == want
        assert all(l.input_point is None for l in quant_layers(q).values())
    with pytest.raises(ConfigError, match="residual_points"):
        QuantConfig(residual_points="yes")


def test_unstable_list_names_a_shared_tensor_once():
    torch.manual_seed(0)
    q = create_model("resnet20").eval()
    with pytest.warns(UserWarning, match="calibration ranges vary"):
        rep = quantize_(q, QuantConfig(calibration="minmax", calib_batches=4, stability_splits=4, stability_tol=0.0),
                        _calib(4), target="onnx", progress=False)
    tied = {n for n, layer in quant_layers(q).items() if layer.input_point is not None}
    assert tied and not tied & set(rep["unstable_layers"])
    assert any(":" in n for n in rep["unstable_layers"])  # the points themselves are listed


def test_points_follow_deepcopy_state_dict_and_the_float_switch(r20):
    q, _ = r20
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = q(x)
        assert torch.equal(copy.deepcopy(q)(x), y)
        # a fresh quantization with other calibration data, then the saved parameters: same outputs
        other = create_model("resnet20").eval()
        quantize_(other, QuantConfig(calib_batches=2, stability_splits=0), _calib(2, seed=5), target="onnx", progress=False)
        other.load_state_dict(q.state_dict())
        assert torch.equal(other(x), y)
        flt = set_quant_enabled_(copy.deepcopy(q), False)
        assert all(not p.enabled for p in act_points(flt).values())
        assert not torch.equal(flt(x), y)


class Branchy(nn.Module):
    """A residual net torch.fx cannot trace (Python control flow on a tensor's value)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        if x.mean() > -1:
            x = F.relu(self.conv2(x) + x)
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_keeps_input_quantization_and_says_why():
    torch.manual_seed(0)
    q = Branchy().eval()
    with pytest.warns(UserWarning, match="torch.fx could not trace"):
        rep = quantize_(q, QuantConfig(calib_batches=2, stability_splits=0), _calib(2, (4, 3, 8, 8)), target="onnx",
                        progress=False)
    assert rep["residual_points"]["count"] == 0 and "torch.fx" in rep["residual_points"]["note"]
    assert len(quant_layers(q)) == 3 and not act_points(q)


def test_qat_moves_the_points_ranges_and_keeps_tied_convs_in_step():
    from edgecompress.distill import DistillConfig
    from edgecompress.testing import synthetic_loaders

    train, _ = synthetic_loaders(n_train=128, n_val=32, batch_size=32, learnable=True)
    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    q = copy.deepcopy(teacher)
    # calibrated on inputs 10x too small: QAT's EMA has to widen the ranges
    quantize_(q, QuantConfig(calibration="minmax", calib_batches=2, stability_splits=0),
              [(x * 0.1, y) for x, y in list(train)[:2]], target="onnx", progress=False)
    before = {n: p.act_scale.item() for n, p in act_points(q).items()}
    qat_(q, teacher, train, None, DistillConfig(epochs=1, lr=1e-4, progress=False, bf16=False), ema_momentum=0.5,
         log=lambda s: None)
    after = {n: p.act_scale.item() for n, p in act_points(q).items()}
    assert sum(after[n] > 2 * before[n] for n in before) >= len(before) // 2, (before, after)
    for layer in quant_layers(q).values():
        if layer.input_point is not None:
            assert layer.act_scale.item() == layer.input_point.act_scale.item()


def test_untraceable_model_with_batchnorm_gets_a_typed_error():
    q = Branchy().eval()
    q.conv1 = nn.Sequential(q.conv1, nn.BatchNorm2d(8))
    with pytest.raises(ConfigError, match="fuse_modules"):
        quantize_(q, QuantConfig(calib_batches=1), _calib(1, (4, 3, 8, 8)), target="onnx", progress=False)
