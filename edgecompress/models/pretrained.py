"""Checkpoints shipped inside the package (weights only, safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from edgecompress.errors import EdgeCompressError, UnknownModelError
from edgecompress.models.registry import create_model

_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
_SHIPPED = {"resnet20": "resnet20_cifar10.safetensors", "mobilenetv2_x0_5": "mobilenetv2_x0_5_cifar10.safetensors"}


def pretrained_path(name: str) -> Path:
    if name not in _SHIPPED:
        raise UnknownModelError(f"{name} (pretrained)", list(_SHIPPED))
    return _WEIGHTS / _SHIPPED[name]


def load_pretrained(name: str = "resnet20") -> nn.Module:
    """The shipped CIFAR-10 checkpoint of ``name`` (see benchmarks/train_baseline.sh), in eval mode."""
    from safetensors.torch import load_file

    path = pretrained_path(name)
    if not path.is_file():
        raise EdgeCompressError(f"shipped weights {path} are missing; reinstall edgecompress or retrain them "
                                f"with benchmarks/train_baseline.sh")
    model = create_model(name)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
