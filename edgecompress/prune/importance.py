"""Filter importance criteria. Each is a small class: ``__call__(group) -> scores``, one score per
channel of the group's root (lower = removed first).

A group (see ``edgecompress.prune.graph``) couples the filters of one or more layers (a residual
stage couples every conv that writes into it). Only the conv/linear layers whose *output* filters
are removed contribute: each layer's scores are divided by their mean, so that layers of different
size weigh the same, then averaged over the group. With a single layer the score is exactly the
published definition.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.prune.graph import ChannelGroup


def group_filters(group: ChannelGroup):
    """Yield (root_idxs, filters[k, fan_in]) of every conv/linear whose output filters the group removes."""
    for m in group.out_members:
        layer = m.module
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):
            yield m.root_idxs, layer.weight.detach().transpose(0, 1)[m.idxs].flatten(1).float()
        elif isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            yield m.root_idxs, layer.weight.detach()[m.idxs].flatten(1).float()


class Importance:
    """Base: scores of each layer's filters, combined over the group."""

    normalize = True

    def layer_scores(self, filters: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        total, count = torch.zeros(group.n, dtype=torch.float64), torch.zeros(group.n, dtype=torch.float64)
        for root_idxs, w in group_filters(group):
            s = self.layer_scores(w).double().cpu()
            if self.normalize:
                s = s / s.mean().clamp_min(1e-12)
            idx = torch.as_tensor(root_idxs)
            total.index_add_(0, idx, s)
            count.index_add_(0, idx, torch.ones_like(s))
        if not (count > 0).any():  # no weighted layer decides: keep order, prune from the end
            return torch.arange(group.n, 0, -1, dtype=torch.float64)
        return total / count.clamp_min(1)


class FPGMImportance(Importance):
    """He et al. 2019: a filter's score is the sum of its Euclidean distances to the other filters
    of its layer; filters near the geometric median (smallest sum) are redundant and pruned first."""

    def layer_scores(self, w: torch.Tensor) -> torch.Tensor:
        return torch.cdist(w.double().unsqueeze(0), w.double().unsqueeze(0), p=2).squeeze(0).sum(dim=0)


class NormImportance(Importance):
    """ℓp norm of each filter (p=1: Li et al. / Malihi & Heidemann; p=2: node-sparsity)."""

    def __init__(self, p: int = 1):
        self.p = p

    def layer_scores(self, w: torch.Tensor) -> torch.Tensor:
        return w.double().norm(p=self.p, dim=1)


class SquaredNormImportance(Importance):
    """‖Θ_i‖², un-normalised: the base score of LeGR's learned affine ranking (Chin et al. 2020)."""

    normalize = False

    def layer_scores(self, w: torch.Tensor) -> torch.Tensor:
        return w.double().pow(2).sum(dim=1)


class RandomImportance(Importance):
    """Uniform random scores: the baseline every criterion must beat."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        return torch.rand(group.n, generator=self.gen, dtype=torch.float64)


IMPORTANCES = {
    "fpgm": lambda seed: FPGMImportance(),
    "l1": lambda seed: NormImportance(1),
    "l2": lambda seed: NormImportance(2),
    "legr": lambda seed: SquaredNormImportance(),
    "random": lambda seed: RandomImportance(seed),
}
