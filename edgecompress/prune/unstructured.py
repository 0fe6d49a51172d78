"""Unstructured ℓ1-magnitude pruning with fixed masks and TF-model-optimization-style schedules.

>>> from edgecompress.prune.unstructured import MagnitudePruner, SparsityConfig
>>> mp = MagnitudePruner(model, SparsityConfig(sparsity=0.8, schedule="polynomial", end_step=2000))  # doctest: +SKIP
>>> fit(model, train, cfg=..., on_step=mp.step)   # masks follow the schedule, fixed in between  # doctest: +SKIP
>>> mp.finalize_()                                # weights hold the zeros; the masks are gone    # doctest: +SKIP

Masks use ``torch.nn.utils.prune``'s re-parametrisation (``weight = weight_orig * weight_mask``,
recomputed on every forward), so masked weights stay exactly zero through any optimiser, weight
decay included. A new mask ranks ``|weight_orig * mask|``: pruned weights never come back, sparsity
only grows. Exactly ``round(s·N)`` weights are zeroed (ties broken by index), per layer or over all
prunable weights at once (``scope="global"``).

Schedules (Zhu & Gupta 2017, as in ``tfmot.sparsity.keras``):
- ``constant``: sparsity ``s_f`` from ``begin_step`` on, masks re-ranked every ``frequency`` steps
  until ``end_step`` (``end_step=-1``: forever);
- ``polynomial``: ``s_t = s_f + (s_i - s_f)·(1 - (t - t_0)/(t_1 - t_0))^p`` for t in [t_0, t_1], updated
  every ``frequency`` steps and at ``t_1``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import PruningError


@dataclasses.dataclass
class SparsityConfig(Config):
    sparsity: float = 0.8
    scope: str = "global"
    schedule: str = "constant"
    initial_sparsity: float = 0.0
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 100
    power: float = 3.0
    ignored_layers: tuple[str, ...] = ()
    include_classifier: bool = True

    def validate(self) -> None:
        n = type(self).__name__
        check_range(n, "sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        check_range(n, "initial_sparsity", self.initial_sparsity, 0.0, 1.0, hi_open=True)
        check_choice(n, "scope", self.scope, {"global", "layer"})
        check_choice(n, "schedule", self.schedule, {"constant", "polynomial"})
        check_range(n, "frequency", self.frequency, 1, 10**9)
        check_range(n, "begin_step", self.begin_step, 0, 10**12)
        check_range(n, "power", self.power, 0.0, 100.0)
        if self.schedule == "polynomial" and self.end_step <= self.begin_step:
            raise PruningError(f"{n}: polynomial decay needs end_step > begin_step (got {self.begin_step} -> "
                               f"{self.end_step}); set end_step to the last training step of the ramp")
        self.ignored_layers = tuple(self.ignored_layers)


class ConstantSparsity:
    def __init__(self, sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        self.s, self.t0, self.t1, self.f = sparsity, begin_step, end_step, frequency

    def should_update(self, step: int) -> bool:
        if step < self.t0 or (self.t1 >= 0 and step > self.t1):
            return False
        return (step - self.t0) % self.f == 0

    def sparsity(self, step: int) -> float:
        return self.s if step >= self.t0 else 0.0


class PolynomialDecay:
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f)·(1 - (t - t_0)/(t_1 - t_0))^p, clamped to [t_0, t_1]."""

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3.0, frequency: int = 100):
        self.si, self.sf, self.t0, self.t1, self.p, self.f = (initial_sparsity, final_sparsity, begin_step,
                                                               end_step, power, frequency)

    def sparsity(self, step: int) -> float:
        t = min(max(step, self.t0), self.t1)
        return self.sf + (self.si - self.sf) * (1 - (t - self.t0) / (self.t1 - self.t0)) ** self.p

    def should_update(self, step: int) -> bool:
        if step < self.t0 or step > self.t1:
            return False
        return (step - self.t0) % self.f == 0 or step == self.t1


def prunable_weights(model: nn.Module, cfg: SparsityConfig) -> list[tuple[str, nn.Module]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    names = {n for n, _ in layers}
    missing = [n for n in cfg.ignored_layers if n not in names]
    if missing:
        raise PruningError(f"ignored_layers {missing} are not conv/linear layers of the model; some valid names: "
                           f"{sorted(names)[:8]}")
    if not cfg.include_classifier:
        linears = [n for n, m in layers if isinstance(m, nn.Linear)]
        cfg_ignored = set(cfg.ignored_layers) | set(linears[-1:])
    else:
        cfg_ignored = set(cfg.ignored_layers)
    return [(n, m) for n, m in layers if n not in cfg_ignored]


@torch.no_grad()
def magnitude_masks(weights: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Masks zeroing exactly round(sparsity·N) of the smallest |w| (per tensor, or over all of them)."""

    def mask_for(flat: torch.Tensor, k: int) -> torch.Tensor:
        m = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            # stable sort: equal magnitudes (e.g. already-pruned zeros) are taken in index order
            m[torch.sort(flat, stable=True).indices[:k]] = False
        return m

    if scope == "layer":
        return [mask_for(w.abs().flatten(), round(sparsity * w.numel())).view_as(w) for w in weights]
    flat = torch.cat([w.abs().flatten() for w in weights])
    m = mask_for(flat, round(sparsity * flat.numel()))
    out, i = [], 0
    for w in weights:
        out.append(m[i: i + w.numel()].view_as(w))
        i += w.numel()
    return out


class MagnitudePruner:
    """Attaches masks to every prunable weight and keeps them on the schedule."""

    def __init__(self, model: nn.Module, cfg: SparsityConfig | None = None):
        self.model, self.cfg = model, cfg or SparsityConfig()
        self.layers = prunable_weights(model, self.cfg)
        if not self.layers:
            raise PruningError("the model has no conv/linear weights to prune; check ignored_layers")
        c = self.cfg
        if c.schedule == "polynomial":
            self.schedule = PolynomialDecay(c.initial_sparsity, c.sparsity, c.begin_step, c.end_step, c.power, c.frequency)
        else:
            self.schedule = ConstantSparsity(c.sparsity, c.begin_step, c.end_step, c.frequency)
        for _, m in self.layers:
            if not tprune.is_pruned(m):
                tprune.identity(m, "weight")
        self.current = 0.0
        self.history: list[tuple[int, float]] = []

    def set_sparsity(self, sparsity: float) -> None:
        weights = [m.weight_orig.detach() * m.weight_mask for _, m in self.layers]
        for (_, m), mask in zip(self.layers, magnitude_masks(weights, sparsity, self.cfg.scope)):
            m.weight_mask.copy_(mask.to(m.weight_mask.dtype))
            with torch.no_grad():  # keep `weight` in sync before the next forward recomputes it
                m.weight = m.weight_orig * m.weight_mask
        self.current = sparsity

    def step(self, step: int) -> bool:
        """Call once per training step (``fit(..., on_step=pruner.step)``); True when masks changed."""
        if not self.schedule.should_update(step):
            return False
        s = self.schedule.sparsity(step)
        self.set_sparsity(s)
        self.history.append((step, s))
        return True

    def finalize_(self) -> nn.Module:
        """Bake the masks into the weights and remove the re-parametrisation."""
        for _, m in self.layers:
            if tprune.is_pruned(m):
                tprune.remove(m, "weight")
        return self.model


def sparsity_report(model: nn.Module, cfg: SparsityConfig | None = None) -> dict:
    """Non-zero counts of the prunable weights, per layer and in total."""
    cfg = cfg or SparsityConfig()
    per, nz, total = {}, 0, 0
    for name, m in prunable_weights(model, cfg):
        w = m.weight.detach()
        k = int((w != 0).sum())
        per[name] = {"numel": w.numel(), "nonzero": k, "sparsity": 1 - k / w.numel()}
        nz, total = nz + k, total + w.numel()
    return {"layers": per, "nonzero": nz, "numel": total, "sparsity": 1 - nz / max(total, 1)}
