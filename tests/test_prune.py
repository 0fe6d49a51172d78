import copy

import pytest
import torch
import torch.nn as nn

from edgecompress.analysis import count_macs
from edgecompress.errors import ConfigError, ModelInputError, PruningError
from edgecompress.models import create_model
from edgecompress.prune import FPGMImportance, PruneConfig, apply_plan, load_plan, prune_, save_plan
from edgecompress.prune.graph import build_parts, collect_groups, zero_root_channels
from edgecompress.prune.importance import NormImportance
from edgecompress.prune.structured import _output_layers
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
    for bad in (0, -8, 2.5):
        with pytest.raises(ConfigError, match="round_to"):
            PruneConfig(round_to=bad)
    with pytest.raises(ConfigError, match="finetune"):
        prune_(m, PruneConfig(schedule="iterative", steps=3), (torch.randn(1, 3, 32, 32),))
    with pytest.raises(ConfigError, match="fitness"):
        prune_(m, PruneConfig(method="legr"), (torch.randn(1, 3, 32, 32),))


def test_untraceable_model_is_a_typed_error_not_a_crash():
    class DataDependent(nn.Module):  # output shape depends on the input's values: cannot be pruned safely
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            if x.sum() > 1e9:
                raise RuntimeError("never")
            return self.fc(self.c(x).mean((2, 3)))

    class Broken(nn.Module):
        def forward(self, x):
            raise TypeError("this model wants a dict")

    with pytest.raises(ModelInputError, match="example_inputs"):
        prune_(Broken(), PruneConfig(), (torch.randn(1, 3, 8, 8),))
    m = DataDependent()
    rep = prune_(m, PruneConfig(ratio=0.5), (torch.randn(1, 3, 8, 8),))
    assert m.c.out_channels == 4 and m(torch.randn(1, 3, 8, 8)).shape == (1, 2)
    assert rep["macs_after"] < rep["macs_before"]


# -- equivalence: zeroing a group's channels == removing them ------------------------------------


class ConcatNet(nn.Module):
    """Two branches concatenated along channels, then a conv and a classifier."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 20, 1), nn.BatchNorm2d(20), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(self.mix(y).mean((2, 3)))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "concat"])
def test_removing_equals_zeroing_on_every_group(name):
    torch.manual_seed(0)
    net = ConcatNet() if name == "concat" else create_model(name)
    net = randomize_bn_(net).eval()
    x = torch.randn(4, 3, 32, 32)
    parts, _ = build_parts(net, (x,))
    groups, _ = collect_groups(net, parts, _output_layers(net, (x,)))
    assert len(groups) >= (3 if name == "concat" else 12)
    scores = [NormImportance(2)(g) for g in groups]
    removals = [sorted(s.argsort()[: g.n // 2].tolist()) for g, s in zip(groups, scores)]
    masked = copy.deepcopy(net)
    mgroups, _ = collect_groups(masked, build_parts(masked, (x,))[0], [])
    by_name = {g.name: g for g in mgroups}
    zero_root_channels([by_name[g.name] for g in groups], removals)
    rep = prune_(net, PruneConfig(method="l2", ratio=0.5, check="equivalence"), (x,))
    assert rep["groups_pruned"] == len(groups) and not rep["skipped"], rep["skipped"]
    assert rep["macs_after"] < 0.45 * rep["macs_before"]
    torch.testing.assert_close(net(x), masked(x), rtol=1e-4, atol=1e-5)


# -- scores are the published definitions ---------------------------------------------------------


def test_scores_match_numpy_definitions():
    import numpy as np

    from edgecompress.prune.importance import SquaredNormImportance

    torch.manual_seed(1)
    net = PlainNet()
    x = torch.randn(1, 3, 8, 8)
    groups, _ = collect_groups(net, build_parts(net, (x,))[0], [net.fc])
    g = next(g for g in groups if g.name == "c1")  # c1's channels feed only c2: one scored layer
    w = net.c1.weight.detach().numpy().reshape(8, -1).astype(np.float64)
    fpgm = np.array([sum(np.linalg.norm(w[i] - w[j]) for j in range(8)) for i in range(8)])
    l1, l2 = np.abs(w).sum(1), np.sqrt((w ** 2).sum(1))
    for imp, ref in ((FPGMImportance(), fpgm), (NormImportance(1), l1), (NormImportance(2), l2)):
        s = imp(g).numpy()
        np.testing.assert_allclose(s, ref / ref.mean(), rtol=1e-10)  # scores are per-layer mean-normalised
        assert (np.argsort(s) == np.argsort(ref)).all()
    np.testing.assert_allclose(SquaredNormImportance()(g).numpy(), (w ** 2).sum(1), rtol=1e-10)


# -- FPGM paper setting on ResNet-56 --------------------------------------------------------------


def test_resnet56_fpgm_paper_setting_and_round_to():
    x = torch.randn(1, 3, 32, 32)
    # 40% of the filters of every block's internal channels; the residual streams (coupled with the
    # stem and the projection shortcuts) at 25%: the paper counts block outputs pruned (40%) but block
    # inputs whole (0%), which a physically pruned network cannot do; 25% lands in its FLOPs range.
    m = randomize_bn_(create_model("resnet56"))
    rep = prune_(m, PruneConfig(method="fpgm", ratio=0.4, layer_ratios={"conv1": 0.25, "*.shortcut.0": 0.25}), (x,))
    removed = 1 - count_macs(m, (x,)) / count_macs(create_model("resnet56"), (x,))
    assert 0.50 <= removed <= 0.55, removed  # paper: 52.6%
    assert m.layer1[0].conv1.out_channels == 10 and m.layer3[0].conv1.out_channels == 39
    # 40% of every group, residual streams included, removes more than the paper's 52.6%
    m = create_model("resnet56")
    rep = prune_(m, PruneConfig(method="fpgm", ratio=0.4), (x,))
    assert 1 - rep["macs_after"] / rep["macs_before"] > 0.6
    m = create_model("resnet56")
    rep = prune_(m, PruneConfig(method="fpgm", ratio=0.4, round_to=8), (x,))
    widths = [c.out_channels for n, c in m.named_modules() if isinstance(c, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), sorted(set(widths))
    assert rep["macs_after"] < 0.5 * rep["macs_before"]


def test_global_mode_meets_macs_target_with_uneven_layers():
    x = torch.randn(1, 3, 32, 32)
    m = randomize_bn_(create_model("resnet20"))
    rep = prune_(m, PruneConfig(method="l1", mode="global", macs_target=0.5), (x,))
    frac = rep["macs_after"] / rep["macs_before"]
    assert 0.45 <= frac <= 0.5, frac
    kept = [len(v) / rep["plan"]["channels"][k] for k, v in rep["plan"]["kept"].items()]
    assert max(kept) - min(kept) > 0.1  # one threshold across layers: ratios differ per group
    m = randomize_bn_(create_model("resnet20"))
    rep = prune_(m, PruneConfig(method="l1", mode="global", ratio=0.3), (x,))
    removed = sum(rep["plan"]["channels"][k] - len(v) for k, v in rep["plan"]["kept"].items())
    fresh = create_model("resnet20")
    total = sum(g.n for g in collect_groups(fresh, build_parts(fresh, (x,))[0], [fresh.fc])[0])
    assert 0.3 <= removed / total <= 0.32, (removed, total)  # 30% of all the groups' channels


# -- plans ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_plan_round_trip_rebuilds_the_pruned_model(name, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    m = randomize_bn_(create_model(name)).eval()
    rep = prune_(m, PruneConfig(method="fpgm", ratio=0.5, round_to=4), (x,))
    path = save_plan(rep["plan"], tmp_path / "plan.json")
    sd = m.state_dict()
    fresh = apply_plan(create_model(name), load_plan(path), (x,))
    fresh.load_state_dict(sd)
    fresh.eval()
    torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)
    with pytest.raises(PruningError, match="format"):
        apply_plan(create_model(name), {"steps": []}, (x,))
    with pytest.raises(PruningError, match="does not have"):
        apply_plan(create_model("tiny_cnn"), rep["plan"], (x,))


# -- schedules ------------------------------------------------------------------------------------


def test_iterative_and_soft_schedules_call_finetune_and_reach_the_ratio():
    x = torch.randn(1, 3, 32, 32)
    calls = []

    def finetune(model, step):
        calls.append((step, sum(p.numel() for p in model.parameters())))

    m = create_model("resnet20")
    rep = prune_(m, PruneConfig(method="l2", ratio=0.5, schedule="iterative", steps=3), (x,), finetune=finetune)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] > calls[1][1] > calls[2][1]  # parameters shrink step by step
    oneshot = create_model("resnet20")
    ref = prune_(oneshot, PruneConfig(method="l2", ratio=0.5), (x,))
    assert rep["widths_after"] == ref["widths_after"]  # same final widths as one shot
    calls.clear()
    zeros = []

    def soft_ft(model, step):
        calls.append(step)
        zeros.append(int((model.conv1.weight.detach().flatten(1).abs().sum(1) == 0).sum()))
        with torch.no_grad():  # "training" revives zeroed filters
            for p in model.parameters():
                p.add_(0.01)

    m = create_model("resnet20")
    rep = prune_(m, PruneConfig(method="l2", ratio=0.5, schedule="soft", steps=2), (x,), finetune=soft_ft)
    assert calls == [0, 1] and zeros == [8, 8]  # half of the stem's 16 filters zeroed each round
    assert m.conv1.out_channels == 8 and rep["channels_removed"] > 0



def test_model_that_cannot_be_traced_is_a_typed_error_and_left_unchanged():
    class Frozen(nn.Module):  # no autograd graph: the tracer sees nothing
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            with torch.no_grad():
                return self.fc(self.c2(self.c1(x)).mean((2, 3)))

    m = Frozen().eval()
    x = torch.randn(1, 3, 8, 8)
    ref = m(x)
    with pytest.raises(PruningError, match="no channel groups.*no_grad"):
        prune_(m, PruneConfig(ratio=0.5), (x,))
    assert m.c1.out_channels == 8
    torch.testing.assert_close(m(x), ref)


def test_a_group_the_tracer_maps_wrongly_is_refused_not_pruned():
    class FlatShuffle(nn.Module):  # Torch-Pruning takes this channel shuffle for a plain reshape
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = self.c1(x)
            b, c, h, w = y.shape
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
            return self.fc(self.c2(y).mean((2, 3)))

    m = FlatShuffle().eval()
    x = torch.randn(2, 3, 8, 8)
    rep = prune_(m, PruneConfig(method="l2", ratio=0.5), (x,))
    assert m.c1.out_channels == 8 and m.c2.out_channels == 4
    assert [s["where"] for s in rep["skipped"]] == ["c1"] and "zeroing" in rep["skipped"][0]["reason"]


def test_frozen_model_is_pruned_and_stays_frozen():
    """A model used as a distillation teacher has requires_grad=False everywhere; pruning a copy of
    it must still find the groups (Torch-Pruning traces autograd) and leave it frozen."""
    m = create_model("resnet20").eval().requires_grad_(False)
    rep = prune_(m, PruneConfig(method="fpgm", ratio=0.5), (torch.randn(1, 3, 32, 32),))
    assert rep["groups_pruned"] > 0 and rep["channels_removed"] > 0
    assert not any(p.requires_grad for p in m.parameters())
