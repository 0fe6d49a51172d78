"""A small, honest trainer: SGD/Adam, cosine or multistep LR with warm-up, CPU bf16 autocast,
channels-last, weights-only checkpoints with resume, evaluation each epoch, a step budget, and
Hinton knowledge distillation from a frozen teacher.

>>> from edgecompress.distill import TrainConfig, fit
>>> hist = fit(model, train_loader, val_loader, TrainConfig(epochs=1))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edgecompress.config import Config, check_choice, check_range
from edgecompress.distill.losses import distillation_loss
from edgecompress.errors import DataError
from edgecompress.utils import autocast, cpu_supports_bf16, evaluate, seed_everything


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation settings. ``max_steps`` caps the total number of optimizer steps (a budget)."""

    epochs: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the run, for "multistep"
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    max_steps: int | None = None
    bf16: bool | None = None  # None: on where the CPU has native bf16
    channels_last: bool = True
    seed: int = 0
    eval_every: int = 1
    progress: bool = True

    def validate(self) -> None:
        n = type(self).__name__
        check_range(n, "epochs", self.epochs, 0, 10_000)
        check_range(n, "lr", self.lr, 0, 10)
        check_choice(n, "optimizer", self.optimizer, {"sgd", "adam", "adamw"})
        check_choice(n, "schedule", self.schedule, {"cosine", "multistep", "constant"})
        check_range(n, "label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        if self.max_steps is not None:
            check_range(n, "max_steps", self.max_steps, 0, 10**9)


@dataclasses.dataclass
class DistillConfig(TrainConfig):
    """Knowledge-distillation fine-tuning: loss = alpha·CE + beta·T²·KL(teacher ‖ student)."""

    temperature: float = 4.0
    alpha: float = 0.1
    beta: float = 0.9
    lr: float = 0.01

    def validate(self) -> None:
        super().validate()
        n = type(self).__name__
        check_range(n, "temperature", self.temperature, 1e-3, 1e4)
        check_range(n, "alpha", self.alpha, 0, 1e3)
        check_range(n, "beta", self.beta, 0, 1e3)


def _lr_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    marks = [int(m * total_steps) for m in cfg.milestones]

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            p = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m for m in marks)
        return 1.0

    return f


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr)


def fit(
    model: nn.Module,
    train_loader,
    val_loader=None,
    cfg: TrainConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_step: Callable[[int], object] | None = None,
    log=print,
) -> list[dict]:
    """Train ``model`` in place; with ``teacher`` (and a DistillConfig) distil from it.

    Returns the per-epoch history ``[{epoch, loss, val_top1, lr, seconds}]``. With
    ``checkpoint_dir``, writes ``last.pt``/``best.pt`` (state_dict only) and ``history.json``;
    ``resume=True`` continues from ``last.pt``. ``on_step(step)`` runs after every optimiser step
    (e.g. ``MagnitudePruner.step`` to follow a sparsity schedule).
    """
    cfg = cfg or TrainConfig()
    try:
        steps_per_epoch = len(train_loader)
    except TypeError:
        steps_per_epoch = None
    if not steps_per_epoch:
        raise DataError("the training data is empty; pass a loader that yields at least one (x, y) batch")
    seed_everything(cfg.seed)
    bf16 = cpu_supports_bf16() if cfg.bf16 is None else cfg.bf16
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    memfmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memfmt)
    if teacher is not None:
        teacher = teacher.eval().to(memory_format=memfmt)
        for p in teacher.parameters():
            p.requires_grad_(False)
    kd = isinstance(cfg, DistillConfig)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total, steps_per_epoch))
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    history, start_epoch, best = [], 0, -1.0
    if ckpt and resume and (ckpt / "last.pt").exists():
        state = torch.load(ckpt / "last.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
        history = json.loads((ckpt / "history.json").read_text()) if (ckpt / "history.json").exists() else []
        log(f"resumed from {ckpt / 'last.pt'} at epoch {start_epoch}")
    step = start_epoch * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    for epoch in range(start_epoch, epochs):
        if step >= total:
            break
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        model.train()
        t0, run_loss, n = time.perf_counter(), 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not cfg.progress, leave=False)
        for x, y in bar:
            x = x.contiguous(memory_format=memfmt)
            with autocast(bf16):
                out = model(x)
                t_out = teacher(x) if teacher is not None else None
            loss = distillation_loss(
                out, t_out, y,
                temperature=getattr(cfg, "temperature", 1.0),
                alpha=cfg.alpha if kd else 1.0, beta=cfg.beta if kd else 0.0,
                label_smoothing=cfg.label_smoothing,
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate ({cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item() * len(y)
            n += len(y)
            step += 1
            if on_step is not None:
                on_step(step)
            bar.set_postfix(loss=f"{run_loss / n:.3f}", lr=f"{sched.get_last_lr()[0]:.4f}")
            if step >= total:
                break
        rec = {"epoch": epoch + 1, "steps": step, "loss": run_loss / max(n, 1),
               "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 1)}
        last = epoch == epochs - 1 or step >= total
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            rec["val_top1"] = evaluate(model, val_loader)
        history.append(rec)
        log(json.dumps(rec))
        if ckpt:
            ckpt.mkdir(parents=True, exist_ok=True)
            score = rec.get("val_top1", -1.0)
            if score > best:
                best = score
                _atomic_save(model.state_dict(), ckpt / "best.pt")
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "epoch": epoch, "best": best}, ckpt / "last.pt")
            (ckpt / "history.json").write_text(json.dumps(history, indent=1))
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def distill_(student: nn.Module, teacher: nn.Module, train_loader, val_loader=None,
             cfg: DistillConfig | None = None, **kw) -> list[dict]:
    """Fine-tune ``student`` in place by distillation from a frozen copy of ``teacher``."""
    teacher = copy.deepcopy(teacher).eval()
    return fit(student, train_loader, val_loader, cfg or DistillConfig(), teacher=teacher, **kw)
