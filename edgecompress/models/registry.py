from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

from edgecompress.errors import UnknownModelError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model constructor under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model("resnet20", num_classes=10)``."""
    if name not in _MODELS:
        raise UnknownModelError(name, list(_MODELS))
    return _MODELS[name](**kwargs)
