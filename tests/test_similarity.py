"""Functional similarity: identity gives agreement 1 and KL 0; independent trainings disagree;
the metrics follow their definitions; the landscape is drawn."""

import copy
import math

import pytest
import torch

from edgecompress.analysis.similarity import compare, embed, functional_similarity, plot_landscape
from edgecompress.distill import TrainConfig, fit
from edgecompress.errors import BackendUnavailableError, ConfigError, ModelInputError
from edgecompress.models import create_model
from edgecompress.testing import synthetic_loaders


def test_metrics_follow_definitions():
    torch.manual_seed(0)
    p, q = torch.softmax(torch.randn(50, 10, dtype=torch.float64), 1), torch.softmax(torch.randn(50, 10, dtype=torch.float64), 1)
    c = compare(p, q)
    assert c["kl_mean"] == pytest.approx((p * (p / q).log()).sum(1).mean().item())
    m = (p + q) / 2
    js = 0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)
    assert c["js_mean"] == pytest.approx(js.mean().item()) and c["js_mean"] <= math.log(2)
    assert c["agreement"] == pytest.approx((p.argmax(1) == q.argmax(1)).double().mean().item())
    one_hot = torch.eye(10, dtype=torch.float64)[:5]
    assert compare(one_hot, torch.eye(10, dtype=torch.float64)[5:])["js_mean"] == pytest.approx(math.log(2))


def test_self_is_identical_and_independent_trainings_are_not(tmp_path):
    train, val = synthetic_loaders(n_train=512, n_val=256, batch_size=64)
    models = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = create_model("tiny_cnn")
        fit(m, train, None, TrainConfig(epochs=3, lr=0.1, seed=seed, progress=False, bf16=False), log=lambda s: None)
        models[f"seed{seed}"] = m
    models["seed0 copy"] = copy.deepcopy(models["seed0"])
    sim = functional_similarity(models, val, reference="seed0")
    same = sim["pairs"]["seed0|seed0 copy"]
    assert same["agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12) and same["js_mean"] < 1e-12
    other = sim["pairs"]["seed0|seed1"]
    assert other["agreement"] < 1.0 and other["kl_mean"] > 1e-3
    pts = embed(sim["probs"])
    assert pts["seed0"] == pytest.approx(pts["seed0 copy"], abs=1e-9)  # identical functions, one point
    assert math.dist(pts["seed0"], pts["seed1"]) > 0.1
    path = plot_landscape(sim["probs"], tmp_path / "land.png", kinds={"seed0": "base", "seed1": "independent"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))


def test_bad_input():
    with pytest.raises(ConfigError, match="at least two"):
        functional_similarity({"a": torch.randn(4, 10)})
    with pytest.raises(ModelInputError, match="same inputs"):
        functional_similarity({"a": torch.randn(4, 10), "b": torch.randn(5, 10)})
    with pytest.raises(ConfigError, match="reference"):
        functional_similarity({"a": torch.randn(4, 10), "b": torch.randn(4, 10)}, reference="c")
    with pytest.raises(ConfigError, match="pca"):
        embed({"a": torch.rand(4, 10), "b": torch.rand(4, 10)}, method="umap")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="scikit-learn"):
            embed({"a": torch.rand(4, 10), "b": torch.rand(4, 10)}, method="tsne")
