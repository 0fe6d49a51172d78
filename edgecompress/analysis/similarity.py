"""Functional similarity of models on the same inputs (Mason-Williams & Dahlqvist 2024, "What
makes a good prune? Neural network compression: the functional perspective"): top-1 agreement,
mean KL and Jensen-Shannon divergence of the softmax outputs, and a 2-D landscape of the models
(each model is one point: its softmax outputs on the inputs, concatenated).

>>> sim = functional_similarity({"base": base, "pruned": pruned}, val_loader)   # doctest: +SKIP
>>> sim["pairs"]["base|pruned"]["agreement"]                                   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn as nn

from edgecompress.errors import BackendUnavailableError, ConfigError, ModelInputError
from edgecompress.utils import predict

_EPS = 1e-12


def softmax_outputs(model_or_logits, data=None, *, limit: int | None = None) -> torch.Tensor:
    """(N, C) float64 softmax of a model over ``data`` (a loader or a tensor), or of given logits."""
    if torch.is_tensor(model_or_logits):
        logits = model_or_logits
    elif isinstance(model_or_logits, nn.Module):
        if data is None:
            raise ConfigError("pass the inputs (a loader of (x, y) or a tensor) to run the model on")
        loader = [(data, torch.zeros(len(data)))] if torch.is_tensor(data) else data
        logits, _ = predict(model_or_logits, loader, limit=limit)
    else:
        raise ConfigError(f"expected a model or a logits tensor, got {type(model_or_logits).__name__}")
    if logits.ndim != 2:
        raise ModelInputError(f"expected (batch, classes) logits, got shape {tuple(logits.shape)}")
    return torch.softmax(logits.double(), dim=1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.clamp_min(_EPS).log() - q.clamp_min(_EPS).log())).sum(1)


def compare(p: torch.Tensor, q: torch.Tensor) -> dict:
    """Agreement, mean KL(p‖q) and mean JS(p, q) (nats, ≤ ln 2) of two (N, C) softmax outputs."""
    if p.shape != q.shape:
        raise ModelInputError(f"outputs of shape {tuple(p.shape)} and {tuple(q.shape)}: compare models on the same "
                              "inputs with the same classes")
    m = 0.5 * (p + q)
    return {"agreement": (p.argmax(1) == q.argmax(1)).double().mean().item(),
            "kl_mean": _kl(p, q).mean().item(),
            "js_mean": (0.5 * _kl(p, m) + 0.5 * _kl(q, m)).mean().item()}


def functional_similarity(models: dict, data=None, *, reference: str | None = None,
                          limit: int | None = None) -> dict:
    """Every pair of ``models`` (name -> model, or name -> logits already computed on the same
    inputs) compared on ``data``. ``reference`` (default: the first) is the "p" of each KL."""
    if len(models) < 2:
        raise ConfigError("functional similarity compares at least two models; pass {name: model, ...}")
    probs = {k: softmax_outputs(v, data, limit=limit) for k, v in models.items()}
    n = {tuple(p.shape) for p in probs.values()}
    if len(n) != 1:
        raise ModelInputError(f"the models' outputs differ in shape {sorted(n)}; compare them on the same inputs")
    names = list(probs)
    reference = reference or names[0]
    if reference not in probs:
        raise ConfigError(f"reference {reference!r} is not one of {names}")
    order = [reference] + [k for k in names if k != reference]
    pairs = {f"{a}|{b}": compare(probs[a], probs[b]) for a, b in itertools.combinations(order, 2)}
    return {"reference": reference, "samples": next(iter(n))[0], "models": order, "pairs": pairs, "probs": probs}


def embed(probs: dict[str, torch.Tensor], method: str = "pca", seed: int = 0) -> dict[str, tuple[float, float]]:
    """2-D coordinates of each model from its concatenated softmax outputs: PCA (SVD of the centred
    vectors) or t-SNE (scikit-learn; perplexity below the number of models)."""
    names = list(probs)
    X = torch.stack([probs[k].flatten() for k in names]).double()
    if method == "pca":
        Xc = X - X.mean(0, keepdim=True)
        q = min(2, len(names))
        U, S, _ = torch.linalg.svd(Xc, full_matrices=False)
        Y = U[:, :q] * S[:q]
        if Y.shape[1] < 2:
            Y = torch.cat([Y, torch.zeros(len(names), 2 - Y.shape[1], dtype=Y.dtype)], 1)
    elif method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as e:
            raise BackendUnavailableError("method='tsne' needs scikit-learn: pip install scikit-learn "
                                          "(or use method='pca')") from e
        Y = torch.from_numpy(TSNE(2, perplexity=max(1.0, min(30.0, len(names) - 1.0)), init="pca",
                                  random_state=seed).fit_transform(X.numpy()))
    else:
        raise ConfigError(f"method={method!r}; choose 'pca' or 'tsne'")
    return {k: (float(Y[i, 0]), float(Y[i, 1])) for i, k in enumerate(names)}


def plot_landscape(probs: dict[str, torch.Tensor], path: str | Path, *, method: str = "pca",
                   kinds: dict[str, str] | None = None, title: str | None = None) -> Path:
    """Write the landscape as an image (``kinds``: name -> "base" / "compressed" / "independent",
    coloured differently). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = embed(probs, method)
    colours = {"base": "tab:blue", "compressed": "tab:orange", "independent": "tab:green"}
    kinds = kinds or {}
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    for k, (x, y) in pts.items():
        kind = kinds.get(k, "compressed")
        ax.scatter([x], [y], s=60, color=colours.get(kind, "tab:gray"),
                   label=kind if kind not in ax.get_legend_handles_labels()[1] else None)
        ax.annotate(k, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_title(title or f"Functional landscape ({method.upper()} of softmax outputs)", fontsize=10)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_suffix(".tmp" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
