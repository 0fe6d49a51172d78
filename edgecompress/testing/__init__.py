"""Helpers for testing compression code on tiny models and synthetic data, shipped for users."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from edgecompress.data.cifar10 import ArrayLoader


def synthetic_loaders(n_train: int = 256, n_val: int = 128, batch_size: int = 32, seed: int = 0,
                      learnable: bool = True) -> tuple[ArrayLoader, ArrayLoader]:
    """CIFAR-shaped uint8 images. With ``learnable`` the class is encoded in the image (a bright
    quadrant/channel pattern plus noise), so a tiny model can learn it in a few steps."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 96, (n, 32, 32, 3), dtype=np.int64)
        if learnable:
            for i, c in enumerate(y):
                r, col, ch = (c // 4) % 2, c % 4, c % 3
                x[i, 16 * r:16 * r + 16, 8 * col:8 * col + 8, ch] += 150
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    (tx, ty), (vx, vy) = make(n_train), make(n_val)
    return (ArrayLoader(tx, ty, batch_size, shuffle=True, augment=False, drop_last=True, seed=seed),
            ArrayLoader(vx, vy, batch_size))


@torch.no_grad()
def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (as after training), so
    tests of folding and export are not passed by identity BNs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()
