"""Teacher-assistant distillation (Mirzadeh et al. 2020; Khan & Mandal): when the gap between
teacher and student is large, distil through intermediate models, each the teacher of the next."""

from __future__ import annotations

import copy

import torch.nn as nn

from edgecompress.analysis.metrics import count_params
from edgecompress.distill.trainer import DistillConfig, _evaluate, distill_
from edgecompress.errors import ConfigError


def teacher_assistant_chain(teacher: nn.Module, chain: list[nn.Module], train_loader, val_loader=None,
                            cfg: DistillConfig | list[DistillConfig] | None = None, *, names: list[str] | None = None,
                            log=print) -> list[dict]:
    """Distil ``chain[0]`` from ``teacher``, ``chain[1]`` from ``chain[0]``, … (each in place, each
    teacher a frozen copy of the previous stage as trained). ``cfg``: one config for every stage or
    one per stage. Returns one record per stage (the teacher first) with its parameters, validation
    top-1 (if ``val_loader``) and training history."""
    if not chain:
        raise ConfigError("the chain is empty; pass [assistant, ..., student]")
    cfgs = cfg if isinstance(cfg, list) else [cfg or DistillConfig()] * len(chain)
    if len(cfgs) != len(chain):
        raise ConfigError(f"{len(cfgs)} configs for {len(chain)} stages; pass one config or one per stage")
    names = names or [f"assistant{i + 1}" for i in range(len(chain) - 1)] + ["student"]
    stages = [{"stage": "teacher", "params": count_params(teacher)}]
    if val_loader is not None:
        stages[0]["top1"] = _evaluate(teacher, val_loader, bf16=False)
    prev = teacher
    for name, model, c in zip(names, chain, cfgs):
        rec = {"stage": name, "teacher": stages[-1]["stage"], "params": count_params(model)}
        if val_loader is not None:
            rec["top1_before"] = _evaluate(model, val_loader, bf16=False)
        rec["history"] = distill_(model, prev, train_loader, None, c, log=log)
        if val_loader is not None:
            rec["top1"] = _evaluate(model, val_loader, bf16=False)
        stages.append(rec)
        log(f"{name}: {rec.get('top1_before', float('nan')):.4f} -> {rec.get('top1', float('nan')):.4f}")
        prev = copy.deepcopy(model).eval()
    return stages
