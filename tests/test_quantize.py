import copy

import pytest
import torch

from edgecompress.errors import ConfigError, DataError
from edgecompress.models import create_model
from edgecompress.quantize import FakeQuantConv2d, QuantConfig, fold_bn_, quantize_
from edgecompress.testing import randomize_bn_
from edgecompress.utils import sqnr_db


def _calib(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 32, 32, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def test_fold_bn_is_exact():
    m = randomize_bn_(create_model("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    ref = m(x)
    f = copy.deepcopy(m)
    assert fold_bn_(f) == 21
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in f.modules())
    torch.testing.assert_close(f(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_int8_simulation_quality_and_grid(scheme, calibration):
    m = randomize_bn_(create_model("resnet20"))
    x = torch.randn(32, 3, 32, 32)
    ref = m(x)
    q = copy.deepcopy(m)
    rep = quantize_(q, QuantConfig(calibration=calibration), _calib(), scheme=scheme, progress=False)
    assert rep["scheme"] == scheme and len(rep["layers"]) == 22
    s = sqnr_db(ref, q(x))
    assert s >= 30, f"SQNR {s:.1f} dB < 30 dB"
    for name, layer in rep["layers"].items():
        assert layer["act_scale"] > 0
        if scheme == "symmetric":
            assert layer["act_zero_point"] == 0
        else:
            assert 0 <= layer["act_zero_point"] <= 255
    # every fake-quantized conv input lies on the integer grid of its scale/zero point
    conv = next(mod for mod in q.modules() if isinstance(mod, FakeQuantConv2d))
    xin = conv.act(torch.randn(2, 3, 32, 32) * 3)
    codes = xin / conv.act.scale + conv.act.zero_point
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    lo, hi = conv.act.qrange
    assert codes.min() >= lo - 1e-3 and codes.max() <= hi + 1e-3


def test_per_layer_sqnr_on_random_data():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    model = torch.nn.Sequential(conv)
    x = torch.randn(8, 16, 12, 12)
    ref = model(x)
    quantize_(model, QuantConfig(calibration="minmax"), [(x, None)], scheme="affine", progress=False)
    assert sqnr_db(ref, model(x)) >= 30


def test_bad_config_and_no_data():
    with pytest.raises(ConfigError, match="scheme"):
        QuantConfig(scheme="asym")
    with pytest.raises(DataError, match="calibration"):
        quantize_(create_model("tiny_cnn"), QuantConfig(), [], progress=False)
