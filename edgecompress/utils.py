"""Small shared helpers: seeding, device/precision context, evaluation, tensor stats."""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import torch
import torch.nn as nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_supports_bf16() -> bool:
    """True where CPU bf16 autocast has native support (AVX-512 BF16 / AMX); slow emulation otherwise."""
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX") or _cpuinfo_has("avx512_bf16")
    except Exception:
        return False


def _cpuinfo_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read()
    except OSError:
        return False


def autocast(enabled: bool, device: str = "cpu"):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, loader, *, limit: int | None = None, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of ``model`` over ``loader`` (first ``limit`` samples if given), in eval mode."""
    was_training = model.training
    model.eval()
    dev = model_device(model)
    outs, labels, n = [], [], 0
    try:
        for x, y in loader:
            with autocast(bf16, dev.type):
                outs.append(model(x.to(dev)).float().cpu())
            labels.append(y)
            n += len(y)
            if limit is not None and n >= limit:
                break
    finally:
        model.train(was_training)
    logits, labels = torch.cat(outs), torch.cat(labels)
    return (logits[:limit], labels[:limit]) if limit is not None else (logits, labels)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def evaluate(model: nn.Module, loader, *, limit: int | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``loader``."""
    return top1(*predict(model, loader, limit=limit))


def sqnr_db(ref: torch.Tensor, other: torch.Tensor) -> float:
    """20·log10(‖ref‖ / ‖ref − other‖); +inf when identical."""
    ref, other = ref.double(), other.double()
    err = torch.linalg.vector_norm(ref - other).item()
    if err == 0:
        return math.inf
    return 20 * math.log10(torch.linalg.vector_norm(ref).item() / err)
