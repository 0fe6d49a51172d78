"""Structured filter pruning over coupled channel groups, on a Torch-Pruning dependency graph.

>>> import edgecompress as ec
>>> report = ec.prune_(model, ec.PruneConfig(method="fpgm", ratio=0.5), example_inputs=(x,))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import ModelInputError, PruningError


@dataclasses.dataclass
class PruneConfig(Config):
    """method: fpgm | l1 | l2 | random. ratio: fraction of channels removed from each prunable
    group (local) or across all groups (global_pruning). The classifier (last Linear) is never
    pruned; ``ignored_layers`` adds module names. ``round_to`` keeps channel counts a multiple of N.
    """

    method: str = "fpgm"
    ratio: float = 0.5
    global_pruning: bool = False
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    ignored_layers: tuple[str, ...] = ()
    seed: int = 0

    def validate(self) -> None:
        n = type(self).__name__
        from edgecompress.prune.importance import IMPORTANCES

        check_choice(n, "method", self.method, set(IMPORTANCES))
        check_range(n, "ratio", self.ratio, 0.0, 1.0, hi_open=True)
        check_range(n, "max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, hi_open=True)
        if self.round_to is not None:
            check_range(n, "round_to", self.round_to, 1, 4096)
        self.ignored_layers = tuple(self.ignored_layers)


def _classifier_layers(model: nn.Module) -> list[nn.Module]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _widths(model: nn.Module) -> dict[str, list[int]]:
    return {n: [m.in_channels, m.out_channels] if isinstance(m, nn.Conv2d) else [m.in_features, m.out_features]
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def prune_(model: nn.Module, cfg: PruneConfig, example_inputs: tuple) -> dict:
    """Prune ``model`` in place. Returns a report: per-layer [in, out] widths before/after,
    the number of groups pruned, and channels removed."""
    import torch_pruning as tp

    from edgecompress.prune.importance import IMPORTANCES

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    names = dict(model.named_modules())
    missing = [n for n in cfg.ignored_layers if n not in names]
    if missing:
        raise PruningError(f"ignored_layers {missing} are not modules of the model; some valid names: "
                           f"{[n for n in names if n][:8]}")
    ignored = _classifier_layers(model) + [names[n] for n in cfg.ignored_layers]
    before = _widths(model)
    model.eval()
    with torch.no_grad():
        try:
            ref_shape = model(*example_inputs).shape
        except Exception as e:  # noqa: BLE001 - surfaced as a typed error
            raise ModelInputError(f"model does not accept the example inputs: {e}") from e
    if cfg.ratio == 0:
        return {"method": cfg.method, "ratio": 0.0, "groups_pruned": 0, "channels_removed": 0,
                "widths_before": before, "widths_after": before}
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=IMPORTANCES[cfg.method](cfg.seed),
        pruning_ratio=cfg.ratio, global_pruning=cfg.global_pruning, max_pruning_ratio=cfg.max_layer_ratio,
        round_to=cfg.round_to, ignored_layers=ignored,
    )
    groups, removed = 0, 0
    for group in pruner.step(interactive=True):
        groups += 1
        removed += len(group[0].idxs)
        group.prune()
    with torch.no_grad():
        out = model(*example_inputs)
    if out.shape != ref_shape:
        raise PruningError(f"pruning changed the output shape {tuple(ref_shape)} -> {tuple(out.shape)}")
    return {"method": cfg.method, "ratio": cfg.ratio, "global": cfg.global_pruning, "groups_pruned": groups,
            "channels_removed": removed, "widths_before": before, "widths_after": _widths(model)}
