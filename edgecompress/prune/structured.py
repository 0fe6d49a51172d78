"""Structured (filter) pruning: channels are physically removed from the weights of every coupled
layer, on any model Torch-Pruning can trace (and, part by part, on models it cannot).

>>> import edgecompress as ec
>>> report = ec.prune_(model, ec.PruneConfig(method="fpgm", ratio=0.5), example_inputs=(x,))  # doctest: +SKIP
>>> ec.prune.save_plan(report["plan"], "plan.json")                                          # doctest: +SKIP
>>> fresh = apply_plan(MyNet(), load_plan("plan.json"), (x,)); fresh.load_state_dict(sd)       # doctest: +SKIP

Selection. ``mode="local"``: every group loses ``ratio`` of its channels (``layer_ratios`` overrides
per root layer, fnmatch patterns). ``mode="global"``: one threshold over all groups' normalised
scores removes ``ratio`` of all channels, or, with ``macs_target``, as many as it takes to keep that
fraction of the conv/linear MACs. ``method="legr"`` learns per-group affine transforms of the squared
filter norm by evolutionary search (Chin et al. 2020) and ranks globally under a MACs budget.
In every mode a group keeps at least one channel, at least ``1 - max_layer_ratio`` of its channels
and, with ``round_to``, a multiple of ``round_to``.

Schedules. ``oneshot``; ``iterative``: ``steps`` rounds of prune-then-``finetune`` reaching ``ratio``
linearly; ``soft``: soft filter pruning, ``steps`` rounds of zeroing the currently least important
filters and fine-tuning them (they may recover), then one physical removal at the end.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import ConfigError, ModelInputError, PruningError
from edgecompress.prune.graph import (
    MacsModel,
    Skipped,
    _outputs,
    apply_group,
    build_parts,
    collect_groups,
    forward_with_hooks,
    keep_count,
    layer_macs,
    zero_root_channels,
)

PLAN_FORMAT = "edgecompress.prune.plan/1"


@dataclasses.dataclass
class LegrConfig(Config):
    """Regularised evolution (Real et al.) over per-group (α, κ): ``iterations`` candidates, each
    mutated from the best of ``sample`` drawn out of a ``population`` of the most recent, with
    log-normal noise ``sigma`` on α and normal noise on κ (scores start normalised per group)."""

    population: int = 16
    sample: int = 4
    iterations: int = 48
    sigma: float = 0.3

    def validate(self) -> None:
        n = type(self).__name__
        check_range(n, "population", self.population, 2, 10_000)
        check_range(n, "sample", self.sample, 1, self.population)
        check_range(n, "iterations", self.iterations, 0, 100_000)
        check_range(n, "sigma", self.sigma, 0.0, 10.0)


@dataclasses.dataclass
class PruneConfig(Config):
    """See the module docstring. The classifier (last Linear, or the conv that produces the output)
    is never pruned; ``ignored_layers`` adds module names. ``round_to=None`` in ``compress`` takes
    the target's packing width (ncnn: 8); pass 1 for no rounding."""

    method: str = "fpgm"
    ratio: float = 0.5
    mode: str = "local"
    macs_target: float | None = None
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    layer_ratios: dict[str, float] | None = None
    ignored_layers: tuple[str, ...] = ()
    schedule: str = "oneshot"
    steps: int = 1
    check: str = "auto"
    legr: LegrConfig = dataclasses.field(default_factory=LegrConfig)
    seed: int = 0

    def validate(self) -> None:
        from edgecompress.prune.importance import IMPORTANCES

        n = type(self).__name__
        check_choice(n, "method", self.method, set(IMPORTANCES))
        check_range(n, "ratio", self.ratio, 0.0, 1.0, hi_open=True)
        check_choice(n, "mode", self.mode, {"local", "global"})
        if self.macs_target is not None:
            check_range(n, "macs_target", self.macs_target, 1e-6, 1.0)
        check_range(n, "max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, hi_open=True)
        if self.round_to is not None:
            if not isinstance(self.round_to, int) or self.round_to <= 0:
                raise ConfigError(f"{n}.round_to={self.round_to!r}; pass a positive integer (e.g. 8) or None")
        for pat, r in (self.layer_ratios or {}).items():
            check_range(f"{n}.layer_ratios", pat, r, 0.0, 1.0, hi_open=True)
        check_choice(n, "schedule", self.schedule, {"oneshot", "iterative", "soft"})
        check_range(n, "steps", self.steps, 1, 10_000)
        check_choice(n, "check", self.check, {"auto", "run", "equivalence"})
        if isinstance(self.legr, dict):
            self.legr = LegrConfig.from_dict(self.legr)
        self.ignored_layers = tuple(self.ignored_layers)


# --------------------------------------------------------------------------------------------------


def _output_layers(model: nn.Module, example_inputs: tuple) -> list[nn.Module]:
    """The classifier: the last Linear/conv executed whose output has the model output's width."""
    order: list[nn.Module] = []
    out = forward_with_hooks(model, example_inputs, [m.register_forward_hook(lambda mod, i, o: order.append(mod))
                                                     for m in model.modules()
                                                     if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))])
    if not order:
        return []
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None
    last = order[-1]
    n_out = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    return [last] if width is None or n_out == width else []


def _widths(model: nn.Module) -> dict[str, list[int]]:
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[n] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            out[n] = [m.in_features, m.out_features]
    return out


def _ratio_for(name: str, cfg: PruneConfig, ratio: float) -> float:
    for pat, r in (cfg.layer_ratios or {}).items():
        if fnmatch.fnmatchcase(name, pat):
            return r
    return ratio


def _removals_from_counts(groups, scores, want: list[int], cfg: PruneConfig) -> list[list[int]]:
    out = []
    for g, s, w in zip(groups, scores, want):
        keep = keep_count(g.n, w, cfg.round_to, cfg.max_layer_ratio)
        out.append(sorted(torch.argsort(s, stable=True)[: g.n - keep].tolist()))
    return out


def _fractions(groups, removals) -> torch.Tensor:
    return torch.tensor([len(r) / g.n for g, r in zip(groups, removals)])


def select(groups, scores, cfg: PruneConfig, macs, ratio: float | None = None, macs_budget: float | None = None,
           mode: str | None = None) -> list[list[int]]:
    """Root channel indices to remove from each group."""
    ratio = cfg.ratio if ratio is None else ratio
    mode = mode or cfg.mode
    if mode == "local":
        if macs_budget is None:
            return _removals_from_counts(groups, scores, [math.floor(g.n * _ratio_for(g.name, cfg, ratio) + 1e-9)
                                                          for g in groups], cfg)
        lo, hi = 0.0, cfg.max_layer_ratio  # one uniform ratio, bisected to the budget
        for _ in range(40):
            mid = (lo + hi) / 2
            rem = _removals_from_counts(groups, scores, [math.floor(g.n * mid) for g in groups], cfg)
            lo, hi = (lo, mid) if macs(_fractions(groups, rem)) <= macs_budget else (mid, hi)
        return _removals_from_counts(groups, scores, [math.floor(g.n * hi) for g in groups], cfg)
    flat = torch.cat([s for s in scores]) if scores else torch.zeros(0)
    owner = torch.cat([torch.full((g.n,), i) for i, g in enumerate(groups)]) if groups else torch.zeros(0)
    order = torch.argsort(flat, stable=True)
    total = sum(g.n for g in groups)

    def removal(k: int) -> list[list[int]]:
        counts = torch.bincount(owner[order[:k]].long(), minlength=len(groups)).tolist()
        return _removals_from_counts(groups, scores, counts, cfg)

    def enough(k: int) -> bool:
        rem = removal(k)
        if macs_budget is not None:
            return macs(_fractions(groups, rem)) <= macs_budget
        return sum(map(len, rem)) >= ratio * total

    lo, hi = 0, total
    if not enough(hi):
        return removal(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return removal(lo)


# --------------------------------------------------------------------------------------------------


class _Pruner:
    """The traced model, its groups and the plan so far."""

    def __init__(self, model: nn.Module, cfg: PruneConfig, example_inputs: tuple, ignored: list[nn.Module]):
        self.model, self.cfg, self.inputs, self.ignored = model, cfg, example_inputs, ignored
        self.skipped: list[Skipped] = []
        self.steps: list[dict] = []
        self.kept: dict[str, list[int]] = {}  # group root -> kept channels in original indexing
        self.original: dict[str, int] = {}
        self.layer_group: dict[str, str] = {}  # layer whose output channels are exactly a group's, 1:1

    def trace(self):
        parts, skipped = build_parts(self.model, self.inputs)
        groups, skipped_groups = collect_groups(self.model, parts, self.ignored)
        self.partitioned = not parts or parts[0][0] != ""
        for g in groups:
            if g.name not in self.original:
                for m in g.out_members:
                    if m.idxs == m.root_idxs == list(range(g.n)):
                        self.layer_group.setdefault(m.name, g.name)
            self.original.setdefault(g.name, g.n)
            self.kept.setdefault(g.name, list(range(g.n)))
        return groups, skipped + skipped_groups

    def check_mode(self, g) -> str:
        """"auto": removing must equal zeroing (this catches index mappings the tracer got wrong,
        e.g. a channel shuffle it took for a plain reshape), except in groups with a layer that
        normalises across channels (LayerNorm, GroupNorm), where no zeroing equals removal; those
        are checked by running the pruned model."""
        if self.cfg.check != "auto":
            return self.cfg.check
        cross = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
        return "run" if any(isinstance(m.module, cross) for m in g.members) else "equivalence"

    def apply(self, groups, removals) -> tuple[int, int, list[Skipped]]:
        with torch.no_grad():
            reference = [t.clone() for t in _outputs(self.model(*self.inputs))]
        pruned, removed, failed = 0, 0, []
        for g, rem in zip(groups, removals):
            if not rem:
                continue
            why = apply_group(self.model, g, rem, self.inputs, reference, self.check_mode(g))
            if why:
                failed.append(Skipped(g.name, why))
                continue
            pruned += 1
            removed += len(rem)
            self.steps.append({"root": g.name, "remove": list(rem)})
            drop = set(rem)
            self.kept[g.name] = [o for i, o in enumerate(self.kept[g.name]) if i not in drop]
        return pruned, removed, failed

    def plan(self) -> dict:
        return {"format": PLAN_FORMAT, "ignored_layers": list(self.cfg.ignored_layers),
                "steps": self.steps,
                "kept": {k: v for k, v in self.kept.items() if len(v) < self.original[k]},
                "channels": {k: self.original[k] for k in self.kept if len(self.kept[k]) < self.original[k]},
                "layers": self.kept_by_layer()}

    def kept_by_layer(self) -> dict[str, list[int]]:
        """Output channels each pruned layer kept, in the original model's indexing."""
        names = dict(self.model.named_modules())
        return {name: self.kept[g] for name, g in sorted(self.layer_group.items())
                if name in names and len(self.kept[g]) < self.original[g]}


def prune_(model: nn.Module, cfg: PruneConfig, example_inputs, *,
           finetune: Callable[[nn.Module, int], None] | None = None,
           fitness: Callable[[nn.Module], float] | None = None) -> dict:
    """Prune ``model`` in place. ``finetune(model, step)`` is called between the steps of the
    iterative and soft schedules; ``fitness(model) -> float`` (higher is better, e.g. accuracy on a
    validation slice) drives ``method="legr"``. Returns a report: widths and conv/linear MACs before
    and after, groups pruned, channels removed, everything skipped with its reason, and the plan."""
    from edgecompress.prune.importance import IMPORTANCES

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    names = dict(model.named_modules())
    missing = [n for n in cfg.ignored_layers if n not in names]
    if missing:
        raise PruningError(f"ignored_layers {missing} are not modules of the model; valid names look like "
                           f"{[n for n in names if n][:8]}")
    if cfg.schedule != "oneshot" and cfg.steps > 1 and finetune is None:
        raise ConfigError(f"schedule={cfg.schedule!r} with steps={cfg.steps} needs finetune=callable(model, step); "
                          "pass one (e.g. from edgecompress.distill) or use schedule='oneshot'")
    if cfg.method == "legr" and fitness is None and cfg.legr.iterations > 0:
        raise ConfigError("method='legr' needs fitness=callable(model) -> float (e.g. prune.adaptive_bn_fitness); "
                          "pass one or set legr.iterations=0 for a per-group-normalised global ℓ2² ranking")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as e:  # noqa: BLE001 - surfaced as a typed error
        raise ModelInputError(f"model does not accept the example inputs ({type(e).__name__}: {e}); pass "
                              "example_inputs shaped like a real batch, e.g. (torch.randn(1, 3, 32, 32),)") from e
    ignored = _output_layers(model, example_inputs) + [names[n] for n in cfg.ignored_layers]
    before, macs_before = _widths(model), sum(layer_macs(model, example_inputs).values())
    report = {"config": cfg.to_dict(), "widths_before": before, "macs_before": macs_before,
              "groups_pruned": 0, "channels_removed": 0, "skipped": [], "legr": None}
    # Torch-Pruning traces the autograd graph: frozen parameters (e.g. a model that served as a
    # distillation teacher) would leave it empty. Unfreeze while pruning; refreeze them by name after.
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    for _, p in model.named_parameters():
        p.requires_grad_(True)
    try:
        pr = _Pruner(model, cfg, example_inputs, ignored)
        importance = IMPORTANCES[cfg.method](cfg.seed)
        if cfg.ratio > 0 or cfg.macs_target is not None:
            groups, skipped = pr.trace()
            report["skipped"] += [s.to_dict() for s in skipped]
            report["partitioned"] = pr.partitioned
            report["groups_found"] = len(groups)
            prunable = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
                        and m not in ignored]
            if not groups and prunable:
                why = skipped[0].reason if skipped else "the traced graph holds none of its layers"
                raise PruningError(
                    f"Torch-Pruning found no channel groups although the model has prunable layers {prunable[:4]} "
                    f"({why}); the forward must build an autograd graph (no torch.no_grad or .detach inside), "
                    "or prune its submodules separately")
            if cfg.schedule == "soft":
                _run_soft(pr, groups, importance, finetune, report)
            else:
                n_steps = cfg.steps if cfg.schedule == "iterative" else 1
                for step in range(n_steps):
                    if step:
                        groups, _ = pr.trace()
                    removals = _plan_step(pr, groups, importance, (step + 1) / n_steps, fitness, report)
                    p, r, failed = pr.apply(groups, removals)
                    report["groups_pruned"] = max(report["groups_pruned"], p)
                    report["channels_removed"] += r
                    report["skipped"] += [s.to_dict() for s in failed]
                    if n_steps > 1 and finetune is not None:
                        finetune(model, step)
    finally:
        model.train(was_training)
        params = dict(model.named_parameters())
        for n in frozen:
            if n in params:
                params[n].requires_grad_(False)
    if report.get("partitioned") and report["groups_pruned"] == 0:
        raise PruningError(
            "Torch-Pruning cannot trace this model as a whole and no part of it could be pruned on its own "
            f"({report['skipped'][0]['reason']}); make the forward traceable (no data-dependent reshapes), "
            "or prune its submodules separately. The model was left unchanged.")
    with torch.no_grad():
        model.eval()
        model(*example_inputs)
        model.train(was_training)
    report["widths_after"] = _widths(model)
    report["macs_after"] = sum(layer_macs(model, example_inputs).values())
    report["plan"] = pr.plan()
    # what FeatureHints uses to start a pruned student's adapters as channel selections
    model.edgecompress_kept_channels = report["plan"]["layers"]
    return report


def _originals(pr: _Pruner, groups) -> list[int]:
    return [pr.original.get(g.name, g.n) for g in groups]


def _plan_step(pr: _Pruner, groups, importance, progress: float, fitness, report) -> list[list[int]]:
    """Removals for one step; ``progress`` in (0, 1] scales the target (iterative schedule)."""
    cfg, model = pr.cfg, pr.model
    scores = [importance(g) for g in groups]
    macs_of_original = None
    if cfg.macs_target is not None:
        # budgets are fractions of the *original* MACs: recorded on the first step
        if not hasattr(pr, "macs0"):
            pr.macs0 = sum(layer_macs(model, pr.inputs).values())
        macs_of_original = pr.macs0 * (1 - progress * (1 - cfg.macs_target))
    if cfg.mode == "local" and macs_of_original is None and cfg.method != "legr":
        orig = _originals(pr, groups)
        want = []
        for g, n0 in zip(groups, orig):
            r = _ratio_for(g.name, cfg, cfg.ratio) * progress
            keep = keep_count(n0, math.floor(n0 * r + 1e-9), cfg.round_to, cfg.max_layer_ratio)
            want.append(max(0, g.n - keep))
        return _removals_from_counts(groups, scores, want, dataclasses.replace(cfg, max_layer_ratio=0.999999))
    macs = MacsModel(model, groups, pr.inputs)  # predicts MACs for budgeted and global selection
    if cfg.method == "legr":
        from edgecompress.prune.legr import legr_search

        budget = macs_of_original
        if budget is None:  # the budget of uniform pruning at `ratio`
            uniform = select(groups, scores, cfg, macs, ratio=cfg.ratio * progress, mode="local")
            budget = macs(_fractions(groups, uniform))
        removals, info = legr_search(model, groups, scores, cfg, macs, budget, fitness, pr.inputs)
        report["legr"] = info
        return removals
    if cfg.mode == "global" and macs_of_original is None:
        total0 = sum(_originals(pr, groups))
        done = total0 - sum(g.n for g in groups)
        r = max(0.0, (cfg.ratio * progress * total0 - done) / max(1, sum(g.n for g in groups)))
        return select(groups, scores, cfg, macs, ratio=r)
    return select(groups, scores, cfg, macs, macs_budget=macs_of_original)


def _run_soft(pr: _Pruner, groups, importance, finetune, report) -> None:
    """Soft filter pruning (He et al. 2018, used with FPGM): zero the least important filters,
    fine-tune with them trainable, repeat; remove the last selection physically."""
    cfg = pr.cfg
    for step in range(cfg.steps):
        removals = _plan_step(pr, groups, importance, 1.0, None, report)
        zero_root_channels(groups, removals)
        if finetune is not None:
            finetune(pr.model, step)
    removals = _plan_step(pr, groups, importance, 1.0, None, report)
    p, r, failed = pr.apply(groups, removals)
    report["groups_pruned"], report["channels_removed"] = p, r
    report["skipped"] += [s.to_dict() for s in failed]


# --------------------------------------------------------------------------------------------------
# Plans: rebuild a pruned architecture from the user's own model code.


def save_plan(plan: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, path)
    return path


def load_plan(path: str | os.PathLike) -> dict:
    plan = json.loads(Path(path).read_text())
    if plan.get("format") != PLAN_FORMAT:
        raise PruningError(f"{path} is not an edgecompress pruning plan (format {plan.get('format')!r}, "
                           f"expected {PLAN_FORMAT!r}); save plans with edgecompress.prune.save_plan")
    return plan


def apply_plan(model: nn.Module, plan: dict, example_inputs) -> nn.Module:
    """Replay a plan on a freshly built model (same code as the pruned one); then load the pruned
    state_dict into it. Returns the model, changed in place."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    if plan.get("format") != PLAN_FORMAT:
        raise PruningError(f"not an edgecompress pruning plan (format {plan.get('format')!r}); "
                           "use the 'plan' of a prune_ report or edgecompress.prune.load_plan")
    names = dict(model.named_modules())
    missing = [s["root"] for s in plan["steps"] if s["root"] not in names]
    if missing:
        raise PruningError(f"the plan names layers this model does not have: {missing[:5]}; build the same "
                           "architecture the plan was made from")
    model.eval()
    parts, _ = build_parts(model, example_inputs)
    owner = {}
    for _, _, dg in parts:
        for m in dg.module2node:
            owner.setdefault(m, dg)
    for step in plan["steps"]:
        root = names[step["root"]]
        dg = owner.get(root)
        if dg is None:
            raise PruningError(f"{step['root']} is not traced in this model; was it built from the same code?")
        pruner = dg.get_pruner_of_module(root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg.get_pruning_group(root, pruner.prune_out_channels, list(step["remove"])).prune(record_history=False)
    return model

