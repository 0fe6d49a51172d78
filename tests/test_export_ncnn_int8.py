"""ncnn int8 written from our own scales: the ncnn runtime computes what our ncnn-contract
simulation computes (EXPORT_FORMATS.md §2), on residual, depthwise and grouped convs."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.errors import ExportError
from edgecompress.export import ExportConfig, get_exporter
from edgecompress.export.ncnn import ncnn_net, ncnn_run
from edgecompress.export.ncnn_int8 import layer_diffs, read_param, write_ncnn_int8
from edgecompress.models import create_model
from edgecompress.quantize import QuantConfig, quantize_
from edgecompress.testing import randomize_bn_, synthetic_loaders

pytest.importorskip("ncnn")


class Grouped(nn.Module):
    """A depthwise conv (per-channel int8), a grouped conv with 2 outputs per group (int8, per-group
    scales) and one with 8 per group (kept fp32: the x86 wheel's packing bug)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.g2 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=8), nn.ReLU())
        self.g8 = nn.Sequential(nn.Conv2d(16, 32, 1, groups=4), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.g8(self.g2(self.dw(self.stem(x)))).mean((2, 3)))


def _int8(model, tmp_path, requantize=True):
    train, val = synthetic_loaders(n_train=256, n_val=64, batch_size=32)
    model = randomize_bn_(model).eval()
    q = copy.deepcopy(model)
    quantize_(q, QuantConfig(calibration="minmax", calib_batches=4, stability_splits=0), train, target="ncnn",
              progress=False)
    x = torch.cat([b[0] for b in val])
    paths = get_exporter("ncnn", ExportConfig())._export(model, (x[:1],), tmp_path)
    plans = write_ncnn_int8(paths["ncnn_param"], paths["ncnn_bin"], q, tmp_path / "i.param", tmp_path / "i.bin",
                            tmp_path / "i.table", requantize=requantize)
    out = ncnn_run(ncnn_net(tmp_path / "i.param", tmp_path / "i.bin", 1, "fp32"), x.numpy())
    with torch.no_grad():
        sim, flt = q(x).numpy(), model(x).numpy()
    return plans, out, sim, flt, q, x


@pytest.mark.parametrize("requantize", [False, True])
def test_ncnn_int8_runtime_is_bit_exact_with_our_simulation(tmp_path, requantize):
    plans, out, sim, flt, q, x = _int8(create_model("tiny_resnet"), tmp_path, requantize)
    assert all(p.term % 100 in (1, 2) for p in plans)  # every conv/linear is int8
    assert any(p.term > 100 for p in plans) == requantize  # conv -> conv edges emit int8 when fused
    # same integer codes, same accumulators, one float rescale each: equal to the last bit
    scale = np.abs(sim).max()
    assert np.abs(out - sim).max() <= 1e-6 * scale
    assert (out.argmax(1) == sim.argmax(1)).all()
    assert np.abs(out - flt).max() > 1e-3 * scale  # and it is int8: it differs from float
    rows = layer_diffs(tmp_path / "i.param", tmp_path / "i.bin", q, plans, x[:4])
    assert [r["layer"] for r in rows] == [p.layer for p in plans]
    assert max(r["max_rel_diff"] for r in rows) <= 1e-6
    table = (tmp_path / "i.table").read_text().splitlines()
    assert len(table) == 2 * len(plans) and table[0].startswith(plans[0].layer + "_param_0 ")


def test_ncnn_int8_mobilenetv2_depthwise_path(tmp_path):
    # ncnn's x86 int8 depthwise kernel rescales with RCPPS (an approximate reciprocal) and no FMA; the
    # simulation does the same through the compiled kernels' approx_reciprocal, which made MobileNetV2
    # bit-exact end to end (it was up to 1.7e-4 of a layer's range off per depthwise layer, ~1% of the
    # logit range at the output). Without the compiled kernels it falls back to an exact reciprocal.
    from edgecompress.kernels import ops

    plans, out, sim, _, q, x = _int8(create_model("mobilenetv2"), tmp_path)
    assert sum(p.term % 100 == 1 for p in plans) == 17 and all(p.term for p in plans)  # 17 depthwise convs
    assert sum(p.term > 100 for p in plans) >= 17  # expand -> depthwise -> project chains requantize
    scale = np.abs(sim).max()
    if not ops.compiled():
        assert np.abs(out - sim).max() <= 0.02 * scale and (out.argmax(1) == sim.argmax(1)).mean() >= 0.98
        return
    assert np.abs(out - sim).max() <= 1e-6 * scale
    assert (out.argmax(1) == sim.argmax(1)).all()
    rows = layer_diffs(tmp_path / "i.param", tmp_path / "i.bin", q, plans, x[:2])
    assert max(r["max_rel_diff"] for r in rows) <= 1e-6  # every layer, depthwise included


def test_approx_reciprocal_is_the_cpus_rcpps():
    from edgecompress.kernels import ops

    if not ops.compiled():
        pytest.skip(f"C++ kernels not built: {ops.fallback_reason()}")
    x = torch.logspace(-4, 4, 1001)
    r = ops.approx_reciprocal(x)
    rel = (r.double() * x.double() - 1).abs()
    assert rel.max() <= 1.5 * 2 ** -12 and rel.max() > 1e-6  # RCPPS's documented bound, and not exact
    assert torch.equal(ops.approx_reciprocal(x[:7]), r[:7])  # the tail path (n % 4 != 0) agrees
    with pytest.raises(RuntimeError, match="float32"):
        ops.approx_reciprocal(x.double())


def test_depthwise_grouped_and_the_packing_workaround(tmp_path):
    plans, out, sim, _, _, _ = _int8(Grouped(), tmp_path, requantize=False)
    terms = {p.torch_layer: p.term for p in plans}
    assert terms == {"stem.0": 2, "dw.0": 1, "g2.0": 1, "g8.0": 0, "fc": 2}
    layers = {ly.name: ly for ly in read_param(tmp_path / "i.param")}
    kept = next(p for p in plans if p.term == 0)
    assert "8" not in layers[kept.layer].params and "multiple of 8" in kept.reason
    # the fp32 layer runs float in ncnn but int8 in the simulation: compare with that layer disabled
    assert (out.argmax(1) == sim.argmax(1)).mean() >= 0.9


def test_rejects_models_not_quantized_for_ncnn(tmp_path):
    model = randomize_bn_(create_model("tiny_cnn")).eval()
    paths = get_exporter("ncnn", ExportConfig())._export(model, (torch.randn(1, 3, 32, 32),), tmp_path)
    with pytest.raises(ExportError, match="quantize"):
        write_ncnn_int8(paths["ncnn_param"], paths["ncnn_bin"], model, tmp_path / "i.param", tmp_path / "i.bin")
    train, _ = synthetic_loaders(n_train=64, batch_size=32)
    q = copy.deepcopy(model)
    quantize_(q, QuantConfig(calib_batches=1, stability_splits=0), train, target="onnx", progress=False)
    with pytest.raises(ExportError, match="ncnn contract"):
        write_ncnn_int8(paths["ncnn_param"], paths["ncnn_bin"], q, tmp_path / "i.param", tmp_path / "i.bin")
    q = copy.deepcopy(model)
    quantize_(q, QuantConfig(calib_batches=1, stability_splits=0), train, target="ncnn", progress=False)
    with pytest.raises(ExportError, match="does not exist"):
        write_ncnn_int8(paths["ncnn_param"], paths["ncnn_bin"], q, tmp_path / "i.param", tmp_path / "no" / "i.bin")
    assert not (tmp_path / "i.param").exists() and not list(tmp_path.glob(".*.tmp"))  # nothing half-written
