"""Tiny registered models so tests and examples run in seconds."""

from __future__ import annotations

import torch.nn as nn

from edgecompress.models.registry import register_model
from edgecompress.models.resnet_cifar import CifarResNet


class TinyCNN(nn.Module):
    """conv-bn-relu x3 + GAP + linear: a plain CNN."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model
def tiny_cnn(num_classes: int = 10, **kw) -> TinyCNN:
    return TinyCNN(num_classes, **kw)


@register_model
def tiny_resnet(num_classes: int = 10, **kw) -> CifarResNet:
    """ResNet-8 at width 8: the smallest residual net with projection shortcuts."""
    return CifarResNet(8, num_classes, width=kw.pop("width", 8), **kw)
