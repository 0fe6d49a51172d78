import copy

import pytest
import torch

from edgecompress.analysis.sweep import (
    SweepPoint,
    find_breakpoint,
    performance_efficiency,
    plot,
    size_efficacy,
    write_csv,
)
from edgecompress.models import create_model
from edgecompress.prune import LegrConfig, PruneConfig, adaptive_bn_fitness, prune_
from edgecompress.prune.graph import MacsModel, build_parts, collect_groups, layer_macs
from edgecompress.prune.importance import NormImportance
from edgecompress.prune.structured import select
from edgecompress.testing import randomize_bn_, synthetic_loaders


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_macs_model_predicts_the_pruned_macs_exactly(name):
    x = torch.randn(1, 3, 32, 32)
    m = randomize_bn_(create_model(name))
    groups, _ = collect_groups(m, build_parts(m, (x,))[0], [list(m.modules())[-1]])
    macs = MacsModel(m, groups, (x,))
    cfg = PruneConfig(method="l1", mode="global", ratio=0.4)
    removals = select(groups, [NormImportance(1)(g) for g in groups], cfg, macs)
    predicted = macs(torch.tensor([len(r) / g.n for g, r in zip(groups, removals)]))
    rep = prune_(m, cfg, (x,))
    assert rep["macs_after"] == pytest.approx(predicted, rel=1e-6)
    assert rep["macs_after"] == pytest.approx(sum(layer_macs(m, (x,)).values()))


def test_legr_search_is_nonuniform_at_the_uniform_budget_and_improves_fitness():
    train, val = synthetic_loaders(n_train=256, n_val=128, batch_size=64, learnable=True)
    x = torch.randn(1, 3, 32, 32)
    base = randomize_bn_(create_model("tiny_resnet"))
    uni = copy.deepcopy(base)
    rep_u = prune_(uni, PruneConfig(method="l2", ratio=0.5), (x,))
    calls = []
    fit = adaptive_bn_fitness(train, val, calib_batches=2)

    def fitness(model):
        calls.append(1)
        return fit(model)

    lg = copy.deepcopy(base)
    rep = prune_(lg, PruneConfig(method="legr", ratio=0.5, legr=LegrConfig(population=4, sample=2, iterations=10)),
                 (x,), fitness=fitness)
    info = rep["legr"]
    assert len(calls) == info["evaluations"] == 10
    assert info["best_fitness"] >= info["baseline_fitness"]
    assert info["best_fitness"] == max(info["history"])
    # same MACs budget as uniform pruning at the same ratio (never above it)
    assert rep["macs_after"] <= rep_u["macs_after"] * 1.0001
    assert rep["macs_after"] >= rep_u["macs_after"] * 0.6  # tiny net: one residual channel is ~4% of MACs
    assert rep["macs_after"] == pytest.approx(info["predicted_macs"])
    ratios = [1 - len(v) / rep["plan"]["channels"][k] for k, v in rep["plan"]["kept"].items()]
    ratios += [0.0] * (rep["groups_found"] - len(ratios))
    assert max(ratios) - min(ratios) > 0.1, ratios
    # the live model's weights were restored after each candidate: the pruned net still runs
    assert lg(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_breakpoint_rule_and_efficiency_metrics(tmp_path):
    pts = [SweepPoint(0.0, 0.90, 1_000_000, 10), SweepPoint(0.1, 0.899, 800_000, 8),
           SweepPoint(0.2, 0.895, 640_000, 6), SweepPoint(0.3, 0.70, 500_000, 5), SweepPoint(0.4, 0.5, 360_000, 4)]
    bp = find_breakpoint(pts)
    # 0.2 -> 0.3 loses (0.895-0.70)/0.9 = 21.7% accuracy for 14% of the parameters
    assert bp.ratio == 0.3
    assert find_breakpoint(pts[:3]) is None
    assert performance_efficiency(0.9, 1_000_000) == pytest.approx(0.9)
    assert size_efficacy(0.9, 1_000_000) == pytest.approx(90 / 4)
    csv = write_csv(pts, tmp_path / "s.csv").read_text().splitlines()
    assert csv[0].startswith("ratio,top1") and len(csv) == 6 and csv[4].startswith("0.30,0.7000")
    png = plot(pts, tmp_path / "s.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
