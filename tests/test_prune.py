import copy

import pytest
import torch
import torch.nn as nn

from edgecompress.analysis import count_macs
from edgecompress.errors import ConfigError, ModelInputError, PruningError
from edgecompress.models import create_model
from edgecompress.prune import FPGMImportance, PruneConfig, prune_
from edgecompress.testing import randomize_bn_


class PlainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))


def fpgm_scores(w):
    w = w.flatten(1)
    return torch.cdist(w, w).sum(0)


def test_fpgm_removes_filters_nearest_geometric_median_and_equals_masking():
    torch.manual_seed(0)
    net = PlainNet().eval()
    x = torch.randn(3, 3, 16, 16)
    # c1's channels are used only by c2: the group's scores are c1's FPGM scores.
    expected_removed = fpgm_scores(net.c1.weight.detach()).argsort()[:4].sort().values
    masked = copy.deepcopy(net)
    with torch.no_grad():
        masked.c1.weight[expected_removed] = 0
        masked.c1.bias[expected_removed] = 0
    pruned = copy.deepcopy(net)
    prune_(pruned, PruneConfig(method="fpgm", ratio=0.5, ignored_layers=("c2",)), (x,))
    assert pruned.c1.weight.shape == (4, 3, 3, 3) and pruned.c2.weight.shape == (8, 4, 3, 3)
    kept = [i for i in range(8) if i not in expected_removed.tolist()]
    torch.testing.assert_close(pruned.c1.weight, net.c1.weight[kept])
    torch.testing.assert_close(pruned(x), masked(x))


def test_fpgm_importance_ranks_the_median_filter_lowest():
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    s = FPGMImportance().layer_scores(w)
    assert s.argmin().item() == 0  # the centre filter is closest to all others


@pytest.mark.parametrize("method", ["fpgm", "l1", "l2", "random"])
def test_resnet20_half_pruned_is_physically_smaller(method):
    m = randomize_bn_(create_model("resnet20"))
    x = torch.randn(1, 3, 32, 32)
    macs0, convs0 = count_macs(m, (x,)), {n: c.weight.numel() for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}
    rep = prune_(m, PruneConfig(method=method, ratio=0.5), (x,))
    macs1 = count_macs(m, (x,))
    assert macs1 <= 0.6 * macs0, f"{macs1 / macs0:.3f} of MACs left"
    for n, c in m.named_modules():
        if isinstance(c, nn.Conv2d):
            assert c.weight.numel() < convs0[n], n
            assert c.weight.shape[0] == rep["widths_after"][n][1]
    assert m.fc.out_features == 10 and m(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert rep["channels_removed"] > 0


def test_round_to_and_zero_ratio():
    m = create_model("resnet20")
    x = torch.randn(1, 3, 32, 32)
    prune_(m, PruneConfig(ratio=0.3, round_to=8), (x,))
    for c in m.modules():
        if isinstance(c, nn.Conv2d):
            assert c.out_channels % 8 == 0
    m2 = create_model("resnet20")
    rep = prune_(m2, PruneConfig(ratio=0.0), (x,))
    assert rep["channels_removed"] == 0


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(ConfigError, match=r"ratio.*outside \[0.0, 1.0\)"):
        PruneConfig(ratio=ratio)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="fpgm"):
        PruneConfig(method="magic")
    m = create_model("tiny_cnn")
    with pytest.raises(ModelInputError):
        prune_(m, PruneConfig(), (torch.randn(1, 5, 32, 32),))
    with pytest.raises(PruningError, match="not modules"):
        prune_(m, PruneConfig(ignored_layers=("nope",)), (torch.randn(1, 3, 32, 32),))
