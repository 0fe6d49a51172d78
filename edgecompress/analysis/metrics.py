"""Model size and cost: parameters, MACs (torch.utils.flop_counter), file bytes, agreement."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: tuple) -> int:
    """Multiply-accumulates of one forward pass at the example's batch size, divided by it
    (so: per image). torch's flop counter counts 2 FLOPs per MAC for conv and matmul."""
    was = model.training
    switch = not isinstance(model, torch.fx.GraphModule)  # a torch.export program's module has no train/eval
    if switch:
        model.eval()
    x = example_inputs[0]
    try:
        with FlopCounterMode(display=False) as fc:
            model(*example_inputs)
    finally:
        if switch:
            model.train(was)
    return int(fc.get_total_flops() // 2 // max(1, x.shape[0]))


def file_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Top-1 agreement of two logit tensors."""
    return (a.argmax(1) == b.argmax(1)).float().mean().item()
