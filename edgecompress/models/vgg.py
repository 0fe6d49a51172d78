"""VGG-16 for CIFAR (Simonyan & Zisserman config D with BatchNorm, one linear classifier)."""

from __future__ import annotations

import torch.nn as nn

from edgecompress.models.registry import register_model

_CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg=_CFG16, num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model
def vgg16(num_classes: int = 10, **kw) -> VGG:
    return VGG(_CFG16, num_classes, **kw)
