"""Fold eval-mode BatchNorm into the preceding convolution, as every int8 backend does."""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from edgecompress.errors import ConfigError


def fold_bn_(model: nn.Module) -> int:
    """Fold each BatchNorm2d whose only input is a Conv2d used nowhere else; the BN becomes
    Identity. Module names are kept. Returns the number of folds. Finding the conv -> BN pairs needs
    an fx-traceable model; one that is not gets 0 folds when it has no BatchNorm, else a ConfigError."""
    model.eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - torch.fx raises several types for untraceable code
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return 0
        raise ConfigError(f"cannot fold BatchNorm: torch.fx could not trace {type(model).__name__} "
                          f"({type(e).__name__}: {str(e)[:200]}); fold it before quantizing "
                          "(torch.ao.quantization.fuse_modules) or remove the data-dependent control flow") from e
    mods = dict(model.named_modules())
    folded = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)):
            continue
        if len(src.users) != 1:
            continue
        conv, bn = mods[src.target], mods[node.target]
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        conv.weight = nn.Parameter(w.detach())
        conv.bias = nn.Parameter(b.detach())
        parent_name, _, attr = node.target.rpartition(".")
        setattr(mods[parent_name] if parent_name else model, attr, nn.Identity())
        folded += 1
    return folded
