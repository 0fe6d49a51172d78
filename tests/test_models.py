import pytest
import torch

from edgecompress.errors import UnknownModelError
from edgecompress.models import create_model, list_models

# Parameter counts of the reference architectures (He et al. 2016 Table 6: ResNet-20 0.27M,
# ResNet-56 0.85M, ResNet-110 1.7M; option-B projections add a little).
EXPECTED_PARAMS = {"resnet20": (0.26e6, 0.29e6), "resnet32": (0.46e6, 0.48e6), "resnet56": (0.85e6, 0.87e6),
                   "resnet110": (1.72e6, 1.74e6), "wrn28_10": (36.4e6, 36.6e6), "vgg16": (14.7e6, 14.8e6),
                   "mobilenetv2": (2.2e6, 2.3e6), "mobilenetv2_x0_5": (0.69e6, 0.70e6)}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_zoo_shapes_and_sizes(name):
    m = create_model(name).eval()
    n = sum(p.numel() for p in m.parameters())
    lo, hi = EXPECTED_PARAMS[name]
    assert lo <= n <= hi, f"{name}: {n} params"
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_registry():
    assert {"resnet20", "resnet56", "wrn28_k", "vgg16", "mobilenetv2", "tiny_cnn"} <= set(list_models())
    assert list_models("resnet*") == ["resnet110", "resnet20", "resnet32", "resnet56"]
    assert create_model("wrn28_k", widen=2).fc.in_features == 128
    assert create_model("resnet20", num_classes=100).fc.out_features == 100
    with pytest.raises(UnknownModelError, match="resnet20"):
        create_model("resnet21")
