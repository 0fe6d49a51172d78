"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs: stride 1 in the stem and first stages."""

from __future__ import annotations

import torch.nn as nn

from edgecompress.models.registry import register_model

# (expansion t, output c, repeats n, stride s); CIFAR variant: strides of stage 2 and the stem set to 1.
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(cin, cout, k, s, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else _conv_bn(cin, hidden, 1, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, 1, act=False)
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        cin = int(32 * width_mult)
        layers = _conv_bn(3, cin, 3, 1)
        for t, c, n, s in _CFG:
            cout = int(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = int(1280 * max(1.0, width_mult))
        layers += _conv_bn(cin, last, 1, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def mobilenetv2(num_classes: int = 10, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes, **kw)


@register_model
def mobilenetv2_x0_5(num_classes: int = 10, **kw) -> MobileNetV2:
    """Half width (25.3 M MACs at 32x32 against 88.0 M): the MobileNetV2-CIFAR a 2-core CPU can train."""
    return MobileNetV2(num_classes, width_mult=0.5, **kw)
