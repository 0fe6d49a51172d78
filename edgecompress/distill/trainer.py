"""The trainer: SGD (Nesterov)/Adam, cosine or multistep LR with warm-up, CPU bf16 autocast,
channels-last, weights-only checkpoints with exact resume, evaluation each epoch, budgets (steps,
seconds, patience), Hinton knowledge distillation from a frozen teacher with FitNets hints, and
DDP: the same call runs under ``torchrun --nproc_per_node=N`` (see ``edgecompress.distill.dist``).

>>> from edgecompress.distill import TrainConfig, fit
>>> hist = fit(model, train_loader, val_loader, TrainConfig(epochs=1))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edgecompress.config import Config, check_choice, check_range
from edgecompress.distill import dist
from edgecompress.distill.losses import FeatureHints, check_weights, distillation_loss
from edgecompress.errors import CheckpointError, ConfigError, DataError
from edgecompress.utils import autocast, cpu_supports_bf16, predict, seed_everything


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation settings. Budgets: ``max_steps`` optimiser steps, ``max_seconds`` of wall time,
    ``patience`` evaluations without a better validation accuracy (each stops after the step or
    evaluation that exceeds it). ``sync_bn``: BatchNorm statistics over all processes under DDP
    (CUDA only; PyTorch's SyncBatchNorm does not run on the CPU)."""

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
    max_seconds: float | None = None
    patience: int | None = None
    bf16: bool | None = None  # None: on where the CPU has native bf16
    channels_last: bool = True
    sync_bn: bool = True
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
        check_range(n, "eval_every", self.eval_every, 0, 10_000)
        if self.max_steps is not None:
            check_range(n, "max_steps", self.max_steps, 0, 10**9)
        if self.max_seconds is not None:
            check_range(n, "max_seconds", self.max_seconds, 0, 10**9)
        if self.patience is not None:
            check_range(n, "patience", self.patience, 1, 10**6)


@dataclasses.dataclass
class DistillConfig(TrainConfig):
    """Knowledge-distillation fine-tuning: loss = alpha·CE + beta·T²·KL(teacher ‖ student)
    + hint_weight·Σ FitNets hints over ``hint_layers`` ((student, teacher) module names, or one name
    for both). ``alpha="auto"`` sets alpha/beta from two probe trainings (``resolve_weights``)."""

    temperature: float = 4.0
    alpha: float | str = 0.1
    beta: float = 0.9
    hint_layers: tuple = ()
    hint_weight: float = 1.0
    probe_steps: int = 100
    lr: float = 0.01

    def validate(self) -> None:
        super().validate()
        n = type(self).__name__
        if not self.temperature > 0:
            raise ConfigError(f"{n}.temperature={self.temperature}: must be > 0 (softmax(z/T)); use e.g. 4")
        check_range(n, "temperature", self.temperature, 1e-3, 1e4)
        if self.alpha != "auto":
            if isinstance(self.alpha, str):
                raise ConfigError(f"{n}.alpha={self.alpha!r}; pass a number or 'auto'")
            check_range(n, "alpha", self.alpha, 0, 1e3)
            check_range(n, "beta", self.beta, 0, 1e3)
            check_weights(self.alpha, self.beta)
        check_range(n, "hint_weight", self.hint_weight, 0, 1e6)
        check_range(n, "probe_steps", self.probe_steps, 1, 10**7)


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


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr)


class _Student(nn.Module):
    """What DDP wraps: the student and its hint adapters; forward returns (logits, hint loss)."""

    def __init__(self, model: nn.Module, hints: FeatureHints | None):
        super().__init__()
        self.model, self.hints = model, hints

    def forward(self, x):
        out = self.model(x)
        return out, (self.hints.loss() if self.hints is not None else None)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "python": list(py[1]), "python_version": py[0], "python_gauss": py[2]}


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    has_gauss, gauss = st["numpy_gauss"]
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), st["numpy_pos"], has_gauss, gauss))
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))


def _load_state(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path} was written for a different model ({first[1].strip() if len(first) > 1 else first[0]}"
                              "); resume with the architecture that wrote it, or train into a fresh checkpoint_dir "
                              "(or resume=False)") from e


def _revert_sync_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn.to(next(child.buffers()).device))
        else:
            _revert_sync_bn(child)


def _evaluate(model: nn.Module, loader, bf16: bool) -> float:
    """Top-1 over all ranks' shards (each rank evaluates its own; counts are summed)."""
    logits, labels = predict(model, loader, bf16=bf16)
    correct, n = dist.all_sum(float((logits.argmax(1) == labels).sum()), float(len(labels)))
    return correct / max(n, 1.0)


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

    Returns the per-epoch history ``[{epoch, steps, loss, lr, seconds, val_top1}]``. With
    ``checkpoint_dir``, writes ``last.pt`` (weights, optimiser, scheduler, RNG states), ``best.pt``
    (weights) and ``history.json``; ``resume=True`` continues from ``last.pt`` and reaches the
    weights an uninterrupted run would (same seed, same threads). ``on_step(step)`` runs after
    every optimiser step (e.g. ``MagnitudePruner.step``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the loaders are sharded (their batch size is the global
    batch), the model is wrapped in DDP for this call only, metrics are reduced over ranks and only
    rank 0 logs and writes files.
    """
    cfg = cfg or TrainConfig()
    kd = isinstance(cfg, DistillConfig)
    if kd and cfg.alpha == "auto":
        raise ConfigError("DistillConfig(alpha='auto') needs the probe trainings; call distill_() (which runs them) "
                          "or resolve_weights() first")
    rank, world = dist.init_from_env()
    main = rank == 0
    say = log if main else (lambda s: None)
    train = dist.shard_loader(train_loader, rank, world, train=True, seed=cfg.seed) if train_loader is not None else None
    try:
        steps_per_epoch = len(train)
    except TypeError:
        steps_per_epoch = None
    if not steps_per_epoch:
        raise DataError("the training data is empty; pass a loader that yields at least one (x, y) batch")
    val = dist.shard_loader(val_loader, rank, world, train=False) if val_loader is not None else None
    seed_everything(cfg.seed)
    bf16 = cpu_supports_bf16() if cfg.bf16 is None else cfg.bf16
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    memfmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memfmt)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("every parameter of the model to train has requires_grad=False; unfreeze it "
                          "(model.requires_grad_(True)) or the layers you want trained")
    hints = None
    teacher_trainable = []
    if teacher is not None:
        teacher = teacher.eval().to(memory_format=memfmt)
        teacher_trainable = [p for p in teacher.parameters() if p.requires_grad]
        for p in teacher_trainable:  # frozen while distilling, given back as it came (finally below)
            p.requires_grad_(False)
        if kd and cfg.hint_layers:
            hints = FeatureHints(model, teacher, cfg.hint_layers)
            x0 = next(iter(train))[0].contiguous(memory_format=memfmt)
            hints.materialize(model, teacher, x0)
    student = _Student(model, hints)
    use_sync = cfg.sync_bn and next(model.parameters()).is_cuda
    net = dist.wrap(student, sync_bn=use_sync)
    opt = _optimizer(list(student.parameters()), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total, steps_per_epoch))
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    history, start_epoch, best, since_best = [], 0, -1.0, 0
    if ckpt and resume and (ckpt / "last.pt").exists():
        state = torch.load(ckpt / "last.pt", weights_only=True, map_location="cpu")
        _load_state(model, state["model"], ckpt / "last.pt")
        if hints is not None and "hints" in state:
            hints.adapters.load_state_dict(state["hints"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
        since_best = int(state.get("since_best", 0))
        if "rng" in state:
            _set_rng_state(state["rng"])
        history = json.loads((ckpt / "history.json").read_text()) if (ckpt / "history.json").exists() else []
        say(f"resumed from {ckpt / 'last.pt'} at epoch {start_epoch}")
    step = start_epoch * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    t_start = time.perf_counter()
    stop = False
    temperature = getattr(cfg, "temperature", 1.0)
    alpha, beta = (cfg.alpha, cfg.beta) if kd else (1.0, 0.0)
    try:
        for epoch in range(start_epoch, epochs):
            if step >= total or stop:
                break
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch)
            elif hasattr(getattr(train, "sampler", None), "set_epoch"):
                train.sampler.set_epoch(epoch)
            net.train()
            t0, run_loss, n = time.perf_counter(), 0.0, 0
            bar = tqdm(train, desc=f"epoch {epoch + 1}/{epochs}", disable=not (cfg.progress and main), leave=False)
            for x, y in bar:
                x = x.contiguous(memory_format=memfmt)
                with autocast(bf16):
                    t_out = teacher(x) if teacher is not None else None
                    out, hint = net(x)
                loss = distillation_loss(out, t_out, y, temperature=temperature, alpha=alpha, beta=beta,
                                         label_smoothing=cfg.label_smoothing)
                if hint is not None:
                    loss = loss + cfg.hint_weight * hint
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
                if cfg.max_seconds is not None:
                    over = time.perf_counter() - t_start > cfg.max_seconds
                    stop = dist.all_sum(float(over))[0] > 0  # every rank stops at the same step
                if step >= total or stop:
                    break
            loss_sum, count = dist.all_sum(run_loss, float(n))
            rec = {"epoch": epoch + 1, "steps": step, "loss": loss_sum / max(count, 1.0),
                   "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 1)}
            last = epoch == epochs - 1 or step >= total or stop
            if val is not None and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or last):
                rec["val_top1"] = _evaluate(model, val, bf16=False)
                if rec["val_top1"] > best:
                    best, since_best = rec["val_top1"], 0
                    if ckpt and main:
                        ckpt.mkdir(parents=True, exist_ok=True)
                        _atomic_save(model.state_dict(), ckpt / "best.pt")
                else:
                    since_best += 1
                    if cfg.patience is not None and since_best >= cfg.patience:
                        rec["early_stop"] = f"no better validation accuracy in {since_best} evaluations"
                        stop = True
            if stop and "early_stop" not in rec:
                rec["early_stop"] = f"time budget of {cfg.max_seconds} s reached"
            history.append(rec)
            say(json.dumps(rec))
            if ckpt and main:
                ckpt.mkdir(parents=True, exist_ok=True)
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "epoch": epoch, "best": best, "since_best": since_best, "rng": _rng_state()}
                if hints is not None:
                    state["hints"] = hints.adapters.state_dict()
                _atomic_save(state, ckpt / "last.pt")
                (ckpt / "history.json").write_text(json.dumps(history, indent=1))
            dist.barrier()
    finally:
        for p in teacher_trainable:
            p.requires_grad_(True)
        if hints is not None:
            hints.remove()
        if use_sync:
            _revert_sync_bn(model)
        model.to(memory_format=torch.contiguous_format)
        model.eval()
    return history


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def distill_(student: nn.Module, teacher: nn.Module, train_loader, val_loader=None,
             cfg: DistillConfig | None = None, **kw) -> list[dict]:
    """Fine-tune ``student`` in place by distillation from a frozen copy of ``teacher``.
    ``alpha="auto"`` first runs the two probe trainings of ``resolve_weights`` (on copies)."""
    cfg = cfg or DistillConfig()
    teacher = copy.deepcopy(teacher).eval()
    if cfg.alpha == "auto":
        from edgecompress.distill.allocation import resolve_weights

        cfg, alloc = resolve_weights(cfg, student, teacher, train_loader, val_loader)
        kw.get("log", print)(json.dumps({"kd_weights": alloc}))
    return fit(student, train_loader, val_loader, cfg, teacher=teacher, **kw)
