"""LeGR: learned global ranking of filters (Chin et al., CVPR 2020).

Every group ``g`` gets an affine transform of its filters' squared ℓ2 norm,
``I_i = α_g·‖Θ_i‖² + κ_g``; all filters of the network are then ranked on one scale and the lowest
are removed until the MACs budget is met. (α, κ) are found by regularised evolution: a candidate's
fitness is the accuracy of the network pruned by its ranking, measured on a validation slice.

Where the paper fine-tunes each candidate for τ steps before scoring it, ``adaptive_bn_fitness``
re-estimates the BN statistics on a few training batches (adaptive BN, as in EagleEye, Li et al.
2020) and then fine-tunes for ``finetune_steps`` (τ). Each candidate is a physically pruned copy (its
plan replayed on a deep copy), so fine-tuning cannot revive removed filters. On ResNet-20 pruned to
39% of its MACs, BN re-estimation alone scores every candidate near chance: too weak a signal
(see benchmarks/legr_vs_uniform.py and its results).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections import deque
from typing import Callable, Iterable

import torch
import torch.nn as nn

from edgecompress.errors import DataError


def adaptive_bn_fitness(calib: Iterable, val: Iterable, calib_batches: int = 8, finetune_steps: int = 0,
                        lr: float = 0.01) -> Callable[[nn.Module], float]:
    """Fitness = top-1 on ``val`` after re-estimating BN statistics on ``calib_batches`` batches of
    ``calib`` (both iterables of (x, y)) and, with ``finetune_steps``, that many SGD steps (cross-
    entropy, momentum 0.9) on further batches of ``calib``: LeGR's short fine-tune before scoring.
    The batches are drawn once, so every candidate sees the same data."""
    it = iter(calib)
    calib_b = list(itertools.islice(it, calib_batches))
    train_b = []
    while len(train_b) < finetune_steps:
        more = list(itertools.islice(it, finetune_steps - len(train_b)))
        if not more:
            it = iter(calib)
            more = list(itertools.islice(it, finetune_steps - len(train_b)))
            if not more:
                break
        train_b += more
    val_b = list(val)
    if not calib_b or not val_b:
        raise DataError("adaptive_bn_fitness needs at least one calibration and one validation batch; "
                        "pass non-empty loaders")

    def fitness(model: nn.Module) -> float:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        moms = [bn.momentum for bn in bns]
        with torch.no_grad():
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
            model.train()
            for x, _ in calib_b:
                model(x)
            for bn, m in zip(bns, moms):
                bn.momentum = m
        if train_b:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            model.train()
            for x, y in train_b:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_b:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        return correct / total

    return fitness


def legr_search(model: nn.Module, groups, base_scores, cfg, macs, budget: float,
                fitness: Callable[[nn.Module], float] | None, example_inputs: tuple):
    """Returns (removals per group, info). ``base_scores`` are the groups' ‖Θ‖² scores."""
    from edgecompress.prune.structured import _fractions, select

    lc = cfg.legr
    rng = random.Random(cfg.seed)
    scale = torch.cat(base_scores).median().clamp_min(1e-12) if base_scores else torch.tensor(1.0)
    base = [s / scale for s in base_scores]
    G = len(groups)

    def removals_of(alpha, kappa):
        scores = [a * s + k for a, k, s in zip(alpha, kappa, base)]
        return select(groups, scores, cfg, macs, macs_budget=budget, mode="global")

    if fitness is None or lc.iterations == 0 or G == 0:
        rem = removals_of([1.0 / max(float(b.mean()), 1e-12) for b in base], [0.0] * G)
        return rem, {"evaluations": 0, "budget_macs": budget, "predicted_macs": macs(_fractions(groups, rem))}

    def evaluate(alpha, kappa) -> float:
        """Fitness of the network this ranking prunes: a physically pruned copy (so that a fitness
        that fine-tunes cannot revive removed filters)."""
        from edgecompress.prune.structured import PLAN_FORMAT, apply_plan

        rem = removals_of(alpha, kappa)
        plan = {"format": PLAN_FORMAT, "steps": [{"root": g.name, "remove": r} for g, r in zip(groups, rem) if r]}
        candidate = apply_plan(copy.deepcopy(model), plan, example_inputs)
        return float(fitness(candidate))

    def mutate(alpha, kappa):
        a = [x * math.exp(rng.gauss(0, lc.sigma)) for x in alpha]
        k = [x + rng.gauss(0, lc.sigma) for x in kappa]
        return a, k

    # start from each group's scores divided by their mean (a per-layer-normalised global ranking,
    # close to uniform pruning) rather than raw norms, which rank whole early layers first
    start = ([1.0 / max(float(b.mean()), 1e-12) for b in base], [0.0] * G)
    f0 = evaluate(*start)
    pop = deque([(f0, *start)], maxlen=lc.population)
    history = [f0]
    best = (f0, *start)
    for i in range(1, max(lc.iterations, 1)):
        if len(pop) < lc.population:
            parent = pop[0]  # fill the population with mutations of the starting ranking
        else:
            parent = max(rng.sample(list(pop), lc.sample), key=lambda c: c[0])
        child = mutate(parent[1], parent[2])
        f = evaluate(*child)
        history.append(f)
        pop.append((f, *child))
        if f > best[0]:
            best = (f, *child)
    rem = removals_of(best[1], best[2])
    info = {"evaluations": len(history), "baseline_fitness": f0, "best_fitness": best[0], "history": history,
            "alpha": best[1], "kappa": best[2], "groups": [g.name for g in groups],
            "budget_macs": budget, "predicted_macs": macs(_fractions(groups, rem))}
    return rem, info
