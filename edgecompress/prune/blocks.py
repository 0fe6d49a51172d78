"""Block (depth) pruning: remove whole residual blocks whose input and output have the same shape.

A residual block computes ``relu(x + f(x))``; without it the network passes ``x`` on (Veit et al. 2016:
residual networks behave like ensembles of shallower ones, and dropping one block costs little). Filter
pruning removes MACs but keeps every layer; a runtime with a fixed cost per layer (ncnn at batch 1 on
a 32x32 input: ``benchmarks/ncnn_latency_floor.py``) gets faster only when layers go.

Blocks are chosen greedily on data: at each step the candidate whose removal changes the model's
outputs least, by the mean KL divergence from the *original* model's softmax on calibration batches,
is replaced by ``nn.Identity``. Fine-tune afterwards (knowledge distillation from the original).

>>> import torch, edgecompress as ec
>>> m = ec.create_model("resnet20")
>>> removable_blocks(m)[:2]
['layer1.0', 'layer1.1']
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import ConfigError, DataError

__all__ = ["removable_blocks", "drop_blocks", "apply_dropped_blocks"]


def _is_identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity) or (isinstance(m, nn.Sequential) and len(m) == 0)


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks with an identity shortcut (so input shape == output shape): the
    zoo's CIFAR ``BasicBlock`` and torchvision's ``BasicBlock`` / ``Bottleneck`` without downsample."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from edgecompress.models.resnet_cifar import BasicBlock as CifarBlock

    return [name for name, m in model.named_modules()
            if (isinstance(m, CifarBlock) and _is_identity(m.shortcut))
            or (isinstance(m, (BasicBlock, Bottleneck)) and _is_identity(m.downsample))]


def _check_removable(model: nn.Module, names: list[str]) -> None:
    allowed = removable_blocks(model)
    bad = [n for n in names if n not in allowed]
    if bad:  # checked before anything is replaced: a failed call leaves the model as it was
        raise ConfigError(f"drop_blocks: {bad} are not removable blocks of this model; "
                          f"removable (identity shortcut): {allowed}")


def apply_dropped_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replace the named blocks with ``nn.Identity`` (rebuilds a depth-pruned architecture from fresh model
    code, e.g. before loading a fine-tuned student's weights). In place; returns the model."""
    names = list(names)
    _check_removable(model, names)
    for n in names:
        model.set_submodule(n, nn.Identity())
    return model


@torch.no_grad()
def drop_blocks(model: nn.Module, n: int, data: Iterable, *, batches: int = 8,
                candidates: list[str] | None = None) -> dict:
    """Remove ``n`` residual blocks from ``model`` in place, greedily, each time the one whose removal
    moves the outputs least (mean KL(original || pruned) over ``batches`` batches of ``data``, an
    iterable of ``(x, y)`` or ``x``). Returns ``{"dropped": [...], "kl": [...], "candidates": [...]}``
    (``kl[i]``: the divergence after the i-th removal)."""
    cands = list(candidates) if candidates is not None else removable_blocks(model)
    _check_removable(model, cands)
    if not isinstance(n, int) or n < 0 or n > len(cands):
        raise ConfigError(f"drop_blocks: n={n!r}; pass an int in [0, {len(cands)}] (this model has {len(cands)} "
                          "removable blocks: residual blocks with an identity shortcut)")
    was_training = model.training
    model.eval()
    xs = []
    for i, b in enumerate(data):
        if i >= batches:
            break
        xs.append(b[0] if isinstance(b, (tuple, list)) else b)
    if not xs:
        raise DataError("drop_blocks: the calibration data yielded no batches; pass a loader of (images, labels)")
    ref = [F.log_softmax(model(x).float(), dim=1) for x in xs]

    def divergence() -> float:
        tot = 0.0
        for x, lp in zip(xs, ref):
            lq = F.log_softmax(model(x).float(), dim=1)
            tot += F.kl_div(lq, lp, log_target=True, reduction="batchmean").item()
        return tot / len(xs)

    dropped, kls = [], []
    remaining = list(cands)
    for _ in range(n):
        scores = {}
        for c in remaining:
            block = model.get_submodule(c)
            model.set_submodule(c, nn.Identity())
            scores[c] = divergence()
            model.set_submodule(c, block)
        best = min(remaining, key=scores.get)  # the first candidate on ties
        model.set_submodule(best, nn.Identity())
        remaining.remove(best)
        dropped.append(best)
        kls.append(scores[best])
    model.train(was_training)
    return {"dropped": dropped, "kl": kls, "candidates": cands}
