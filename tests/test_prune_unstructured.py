import pytest
import torch
import torch.nn as nn

from edgecompress.distill import TrainConfig, fit
from edgecompress.errors import ConfigError, PruningError
from edgecompress.models import create_model
from edgecompress.prune.unstructured import (
    MagnitudePruner,
    PolynomialDecay,
    SparsityConfig,
    magnitude_masks,
    sparsity_report,
)
from edgecompress.testing import synthetic_loaders


def test_global_80_percent_leaves_20_percent_nonzeros_and_smallest_go():
    torch.manual_seed(0)
    m = create_model("resnet20")
    mp = MagnitudePruner(m, SparsityConfig(sparsity=0.8, scope="global"))
    mp.set_sparsity(0.8)
    rep = sparsity_report(m)
    assert abs(rep["nonzero"] / rep["numel"] - 0.2) <= 0.005, rep["nonzero"] / rep["numel"]
    # global: one magnitude threshold across layers, so layer sparsities differ
    per = [v["sparsity"] for v in rep["layers"].values()]
    assert max(per) - min(per) > 0.1
    kept_min = min(mod.weight_orig[mod.weight_mask.bool()].abs().min().item() for _, mod in mp.layers)
    pruned_max = max(mod.weight_orig[~mod.weight_mask.bool()].abs().max().item() for _, mod in mp.layers)
    assert pruned_max <= kept_min


def test_layer_scope_is_exact_per_layer():
    w = [torch.randn(16, 8, 3, 3), torch.randn(10, 64)]
    masks = magnitude_masks(w, 0.7, "layer")
    for t, m in zip(w, masks):
        assert (~m).sum().item() == round(0.7 * t.numel())


def test_masks_survive_fine_tuning_with_momentum_and_weight_decay():
    train, val = synthetic_loaders(n_train=128, n_val=64, batch_size=32, learnable=True)
    m = create_model("tiny_cnn")
    mp = MagnitudePruner(m, SparsityConfig(sparsity=0.8))
    mp.set_sparsity(0.8)
    masks = [mod.weight_mask.clone() for _, mod in mp.layers]
    fit(m, train, None, TrainConfig(epochs=2, lr=0.05, weight_decay=5e-4, progress=False, bf16=False),
        on_step=mp.step, log=lambda s: None)
    for (_, mod), mask in zip(mp.layers, masks):
        assert torch.equal(mod.weight_mask, mask)
        assert (mod.weight[~mask.bool()] == 0).all()
    mp.finalize_()
    rep = sparsity_report(m)
    assert abs(rep["sparsity"] - 0.8) <= 0.005
    assert not any(hasattr(mod, "weight_orig") for _, mod in mp.layers)
    assert set(m.state_dict()) == set(create_model("tiny_cnn").state_dict())


def test_polynomial_decay_follows_its_formula_at_every_step():
    t0, t1, si, sf, p, f = 10, 110, 0.1, 0.9, 3.0, 20
    sched = PolynomialDecay(si, sf, t0, t1, p, f)
    for t in range(0, 140):
        tc = min(max(t, t0), t1)
        assert sched.sparsity(t) == pytest.approx(sf + (si - sf) * (1 - (tc - t0) / (t1 - t0)) ** p, abs=1e-12)
        assert sched.should_update(t) == (t0 <= t <= t1 and ((t - t0) % f == 0 or t == t1))
    m = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    mp = MagnitudePruner(m, SparsityConfig(sparsity=sf, initial_sparsity=si, schedule="polynomial",
                                           begin_step=t0, end_step=t1, frequency=f, power=p))
    prev_mask = None
    for t in range(0, 140):
        changed = mp.step(t)
        rep = sparsity_report(m)
        if changed:
            assert rep["sparsity"] == pytest.approx(sched.sparsity(t), abs=1 / rep["numel"])
            masks = torch.cat([mod.weight_mask.flatten() for _, mod in mp.layers])
            if prev_mask is not None:
                assert not (masks.bool() & ~prev_mask.bool()).any()  # pruned weights never return
            prev_mask = masks
    assert [s for _, s in mp.history][-1] == pytest.approx(sf)
    assert [t for t, _ in mp.history] == [10, 30, 50, 70, 90, 110]


def test_bad_sparsity_configs():
    with pytest.raises(ConfigError, match="sparsity"):
        SparsityConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="scope"):
        SparsityConfig(scope="row")
    with pytest.raises(PruningError, match="end_step"):
        SparsityConfig(schedule="polynomial", begin_step=10, end_step=5)
    with pytest.raises(PruningError, match="not conv/linear"):
        MagnitudePruner(create_model("tiny_cnn"), SparsityConfig(ignored_layers=("nope",)))
