"""Interpretable allocation of the CE/KD weights (Zhao et al. 2022, eq. 7).

A probe student is trained for a few steps once from the teacher alone (A: KD only) and once from
the labels alone (B: CE only); I_A and I_B are the probes' top-1 improvements over the untrained
probe, and α = I_A / (I_A + I_B), β = I_B / (I_A + I_B), with α weighting CE and β weighting KD in
``α·CE + β·KD`` as the issue states eq. 7.
"""

from __future__ import annotations

import copy
import dataclasses

import torch.nn as nn

from edgecompress.errors import ConfigError


def allocate_weights(i_a: float, i_b: float) -> tuple[float, float]:
    """Eq. 7: (α, β) = (I_A, I_B) / (I_A + I_B). Improvements must be non-negative, not both 0."""
    if i_a < 0 or i_b < 0 or i_a + i_b <= 0:
        raise ConfigError(f"eq. 7 needs non-negative improvements with a positive sum, got I_A={i_a}, I_B={i_b}; "
                          "train the probes longer (probe_steps) or set alpha/beta by hand")
    return i_a / (i_a + i_b), i_b / (i_a + i_b)


def resolve_weights(cfg, student: nn.Module, teacher: nn.Module, train_loader, val_loader=None,
                    *, probe: nn.Module | None = None):
    """(cfg with numeric alpha/beta, allocation record). The probes are copies of ``probe``
    (default: of the student as it is now), trained ``cfg.probe_steps`` steps each with the
    config's optimiser and learning rate; accuracy is measured on ``val_loader`` (or, without one,
    on the training loader, which the record says). If neither probe improves, α = β = 0.5 and the
    record says why."""
    from edgecompress.distill.trainer import DistillConfig, TrainConfig, _evaluate, fit

    probe = probe if probe is not None else student
    measure = val_loader if val_loader is not None else train_loader
    common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    per_epoch = max(1, len(train_loader))
    common.update(epochs=-(-cfg.probe_steps // per_epoch), max_steps=cfg.probe_steps, progress=False, max_seconds=None,
                  patience=None, eval_every=0)
    quiet = {"log": lambda s: None}
    acc0 = _evaluate(probe, measure, bf16=False)
    p_a = copy.deepcopy(probe)
    fit(p_a, train_loader, None, DistillConfig(**common, temperature=cfg.temperature, alpha=0.0, beta=1.0),
        teacher=teacher, **quiet)
    acc_a = _evaluate(p_a, measure, bf16=False)
    p_b = copy.deepcopy(probe)
    fit(p_b, train_loader, None, TrainConfig(**common), **quiet)
    acc_b = _evaluate(p_b, measure, bf16=False)
    i_a, i_b = max(0.0, acc_a - acc0), max(0.0, acc_b - acc0)
    rec = {"probe_steps": cfg.probe_steps, "measured_on": "val_data" if val_loader is not None else "train_data",
           "probe_top1_before": acc0, "probe_top1_teacher": acc_a, "probe_top1_labels": acc_b,
           "I_A": i_a, "I_B": i_b}
    if i_a + i_b > 0:
        alpha, beta = allocate_weights(i_a, i_b)
    else:
        alpha, beta = 0.5, 0.5
        rec["fallback"] = "neither probe improved on the untrained probe; used alpha = beta = 0.5"
    rec.update(alpha=alpha, beta=beta)
    return dataclasses.replace(cfg, alpha=alpha, beta=beta), rec
