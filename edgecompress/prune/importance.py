"""Filter importance criteria. Each is a small class: ``__call__(group) -> scores`` (one score per
channel of the group's root layer; lower = pruned first).

A *group* is a Torch-Pruning dependency group: the conv whose filters are removed together with
every layer coupled to those channels (BN, next convs' inputs, residual partners). Only the
layers whose *output* filters are removed contribute scores; each layer's scores are divided by
their mean so that layers of different size weigh the same, then averaged over the group.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function as tpf

_OUT_FNS = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels)


def _filters(group):
    """Yield (root_idxs, filters[k, fan_in]) for every output-pruned conv/linear of the group."""
    for i, (dep, idxs) in enumerate(group):
        layer = dep.layer
        if dep.pruning_fn in _OUT_FNS and isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            yield group[i].root_idxs, layer.weight.detach()[idxs].flatten(1).float()


class _GroupImportance(tp.importance.Importance):
    def layer_scores(self, filters: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor | None:
        total, count = None, None
        for root_idxs, w in _filters(group):
            s = self.layer_scores(w)
            s = s / s.mean().clamp_min(1e-12)
            if total is None:
                n = len(group[0].idxs)
                total, count = torch.zeros(n), torch.zeros(n)
            total.index_add_(0, torch.as_tensor(root_idxs), s.cpu())
            count.index_add_(0, torch.as_tensor(root_idxs), torch.ones_like(s).cpu())
        if total is None:
            return None
        return total / count.clamp_min(1)


class FPGMImportance(_GroupImportance):
    """He et al. 2019: a filter's score is the sum of its Euclidean distances to the other filters
    of its layer; filters near the geometric median (smallest sum) are redundant and pruned first."""

    def layer_scores(self, w: torch.Tensor) -> torch.Tensor:
        return torch.cdist(w.unsqueeze(0), w.unsqueeze(0), p=2).squeeze(0).sum(dim=0)


class NormImportance(_GroupImportance):
    """ℓp norm of each filter (p=1: Li et al. / Malihi & Heidemann; p=2: node-sparsity)."""

    def __init__(self, p: int = 1):
        self.p = p

    def layer_scores(self, w: torch.Tensor) -> torch.Tensor:
        return w.norm(p=self.p, dim=1)


class RandomImportance(tp.importance.Importance):
    """Uniform random scores: the baseline every criterion must beat."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, group, **kwargs) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.gen)


IMPORTANCES = {
    "fpgm": lambda seed: FPGMImportance(),
    "l1": lambda seed: NormImportance(1),
    "l2": lambda seed: NormImportance(2),
    "random": lambda seed: RandomImportance(seed),
}
