"""Channel groups of a model, found on Torch-Pruning dependency graphs, and the safe application of
one group's removal.

A *group* is one set of coupled channels: the output filters of a root conv/linear together with
every layer that must lose the same channels (BN, the consumers' input channels, residual partners,
concatenation slices, depthwise convs). Torch-Pruning traces the model once and finds them.

When tracing the whole model fails (at the time of writing Torch-Pruning raises on the
``channel_shuffle`` reshapes of torchvision's ShuffleNetV2), the model is *partitioned*: each child
module that traces on its own (with the inputs it received in a real forward pass) gets its own
graph; children that still fail are split further. A group found inside a part may reach the part's
boundary, where Torch-Pruning cannot see the consumers; such a group is only kept if removing its
channels gives exactly the outputs of zeroing them (the *equivalence* check), so nothing unsound
slips through: it is reverted and reported instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any

import torch
import torch.nn as nn

_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclasses.dataclass
class Member:
    """One layer of a group. ``kind`` is "out" (its output channels are removed; carries weights that
    score/zero) or "in" (a consumer loses input channels). ``count`` = channels of this layer in the
    group (differs from the root's when e.g. a flatten maps one channel to H*W features)."""

    name: str
    module: Any
    kind: str
    idxs: list[int]
    root_idxs: list[int]

    @property
    def count(self) -> int:
        return len(self.idxs)


@dataclasses.dataclass
class ChannelGroup:
    name: str  # root module name in the full model
    root: nn.Module
    n: int  # prunable channels of the root
    members: list[Member]
    dg: Any  # torch_pruning.DependencyGraph that owns it
    part: str  # "" for the whole model, else the partition's module name

    @property
    def out_members(self) -> list[Member]:
        return [m for m in self.members if m.kind == "out"]

    def layer_names(self) -> list[str]:
        return sorted({m.name for m in self.members})


@dataclasses.dataclass
class Skipped:
    where: str
    reason: str

    def to_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason}


def _member(dg, name, target, kind, idxs, root_idxs) -> Member:
    """A member with its (index, root index) pairs de-duplicated and inside the layer's width
    (Torch-Pruning's index mapping through residual adds can repeat the last root channel)."""
    try:
        dim = dg.get_out_channels(target) if kind == "out" else dg.get_in_channels(target)
    except Exception:  # noqa: BLE001 - widths of exotic layers are unknown: keep every index
        dim = None
    pairs, seen = [], set()
    for i, r in zip(idxs, root_idxs):
        if i in seen or (dim is not None and i >= dim):
            continue
        seen.add(i)
        pairs.append((int(i), int(r)))
    return Member(name, target, kind, [i for i, _ in pairs], [r for _, r in pairs])


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def forward_with_hooks(model: nn.Module, example_inputs: tuple, handles: list):
    """One no-grad forward pass; the hook ``handles`` are removed afterwards, whatever happens."""
    try:
        with torch.no_grad():
            return model(*example_inputs)
    finally:
        for h in handles:
            h.remove()


def _capture_inputs(model: nn.Module, example_inputs: tuple) -> dict[nn.Module, tuple]:
    """One forward pass recording (args, kwargs) of every submodule called exactly once."""
    seen: dict[nn.Module, list] = {}

    def hook(mod, args, kwargs):
        seen.setdefault(mod, []).append((args, kwargs))

    forward_with_hooks(model, example_inputs,
                       [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()])
    return {m: calls[0] for m, calls in seen.items() if len(calls) == 1}


def _build_dg(module: nn.Module, args: tuple, kwargs: dict):
    # Ignored layers are left out when groups are formed, not here: a graph traced without the
    # classifier maps the flatten before it wrongly (every channel of the last stage lands in a group).
    import torch_pruning as tp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            module, example_inputs=args, forward_fn=lambda m, _: m(*args, **kwargs), verbose=False)


def build_parts(model: nn.Module, example_inputs: tuple):
    """Dependency graphs covering the model: [(part_name, module, dg)] plus what could not be traced."""
    names = {m: n for n, m in model.named_modules()}
    skipped: list[Skipped] = []
    try:
        return [("", model, _build_dg(model, example_inputs, {}))], skipped
    except Exception as e:  # noqa: BLE001 - any tracer failure leads to partitioning, reported below
        skipped.append(Skipped("<whole model>", f"dependency tracing failed ({type(e).__name__}: {e}); "
                                                "pruning inside the parts that trace on their own"))
    calls = _capture_inputs(model, example_inputs)
    parts = []

    def visit(mod: nn.Module) -> None:
        for child in mod.children():
            cname = names[child]
            if not any(isinstance(m, _ROOT_TYPES) for m in child.modules()):
                continue
            if child not in calls:
                skipped.append(Skipped(cname, "called more than once (or never) in forward; not traced alone"))
                continue
            args, kwargs = calls[child]
            try:
                parts.append((cname, child, _build_dg(child, args, kwargs)))
            except Exception as e:  # noqa: BLE001
                if any(True for _ in child.children()):
                    visit(child)
                else:
                    skipped.append(Skipped(cname, f"dependency tracing failed ({type(e).__name__}: {e})"))

    visit(model)
    return parts, skipped


class IndexExpansionError(Exception):
    pass


# A reshape that Torch-Pruning reads as "flatten" maps each channel to ``stride`` consecutive
# positions. For a real flatten before a classifier that is C·H·W positions (VGG-16 at 224²:
# 25,088). Inside attention blocks (Swin's window partitions) the mappings chain and the index lists
# grow to millions of entries: tracing one group then takes minutes and the mapping is wrong anyway.
MAX_INDEX_EXPANSION = 1 << 18


@contextlib.contextmanager
def bounded_index_expansion(limit: int = MAX_INDEX_EXPANSION):
    """Within the block, a flatten index mapping that would produce more than ``limit`` indices
    raises IndexExpansionError (the group is then left intact, with that reason)."""
    from torch_pruning.dependency import index_mapping

    cls = index_mapping._FlattenIndexMapping
    original = cls.__call__

    def guarded(self, idxs):
        if not self.reverse and len(idxs) * self._stride > limit:
            raise IndexExpansionError(
                f"a reshape would map {len(idxs)} indices of this group to {len(idxs) * self._stride} positions "
                f"(more than {limit}): Torch-Pruning reads it as a flatten, which it is not here (e.g. window "
                "attention); the group is left intact")
        return original(self, idxs)

    cls.__call__ = guarded
    try:
        yield
    finally:
        cls.__call__ = original


def collect_groups(model: nn.Module, parts, ignored: list[nn.Module]) -> tuple[list[ChannelGroup], list[Skipped]]:
    """All groups with full channel index lists, in model order, and the groups left out (why)."""
    names = {m: n for n, m in model.named_modules()}
    groups: list[ChannelGroup] = []
    skipped: list[Skipped] = []
    visited: set[int] = set()
    for part_name, _, dg in parts:
        for mod in list(dg.module2node.keys()):
            if not isinstance(mod, _ROOT_TYPES) or id(mod) in visited or mod in ignored:
                continue
            pruner = dg.get_pruner_of_module(mod)
            n = pruner.get_out_channels(mod) if pruner is not None else None
            if not n:
                continue
            name = names.get(mod, "?")
            try:
                with bounded_index_expansion():
                    g = dg.get_pruning_group(mod, pruner.prune_out_channels, list(range(n)))
            except IndexExpansionError as e:
                skipped.append(Skipped(name, str(e)))
                continue
            except Exception as e:  # noqa: BLE001
                skipped.append(Skipped(name, f"group construction failed ({type(e).__name__}: {e})"))
                continue
            members, blocked = [], []
            for item in g:
                dep, idxs = item.dep, item.idxs
                target = dep.target.module
                kind = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                tname = names.get(target) if isinstance(target, nn.Module) else dg._param_to_name.get(target, "?")
                tname = _qualify(part_name, tname) if part_name and isinstance(target, nn.Parameter) else tname
                if kind == "out":
                    visited.add(id(target))
                    if target in ignored:
                        blocked.append(tname)
                members.append(_member(dg, tname or "?", target, kind, idxs, item.root_idxs))
            if blocked:
                skipped.append(Skipped(name, f"coupled with ignored layer(s) {sorted(set(blocked))}"))
                continue
            groups.append(ChannelGroup(name, mod, n, members, dg, part_name))
    return groups, skipped


# --------------------------------------------------------------------------------------------------
# Applying one group: snapshot, prune, check, restore on failure.


def _module_snapshot(m: nn.Module) -> dict:
    d = dict(m.__dict__)
    d["_parameters"] = dict(m._parameters)
    d["_buffers"] = dict(m._buffers)
    return d


def _restore_module(m: nn.Module, snap: dict) -> None:
    m.__dict__.clear()
    m.__dict__.update(snap)


def _unwrapped_location(model: nn.Module, dg, p: nn.Parameter):
    name = dg._param_to_name[p]
    parent = dg.model
    *path, attr = name.split(".")
    for a in path:
        parent = getattr(parent, a)
    return parent, attr, name


@torch.no_grad()
def _zero_rows(t, idxs: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zero output channels ``idxs`` of a layer's weight/bias (or of an unwrapped parameter, along its
    last non-singleton dim, as Torch-Pruning prunes it). Returns (tensor, saved copy) to restore."""
    if not idxs:
        return []
    if isinstance(t, nn.Parameter):
        params, dim = [t], max(i for i, s in enumerate(t.shape) if s > 1)
    else:
        params = [getattr(t, "weight", None), getattr(t, "bias", None)]
        dim = 1 if isinstance(t, nn.modules.conv._ConvTransposeNd) else 0
    saved = []
    for p in params:
        if isinstance(p, torch.Tensor) and p.dim() > dim and p.shape[dim] > max(idxs):
            saved.append((p, p.detach().clone()))
            p.data.index_fill_(dim, torch.as_tensor(idxs), 0)
    return saved


def _zero_channels(group) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zero, in place, every output-channel parameter of a Torch-Pruning group: the result equals
    removing them when nothing downstream normalises across channels. Returns what to restore."""
    saved = []
    for item in group:
        if group._DG.is_out_channel_pruning_fn(item.dep.handler):
            saved += _zero_rows(item.dep.target.module, list(item.idxs))
    return saved


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs(o)]
    return []


def apply_group(model: nn.Module, g: ChannelGroup, remove: list[int], example_inputs: tuple,
                reference: list[torch.Tensor], check: str) -> str | None:
    """Remove channels ``remove`` (root indices) of group ``g`` from the model. ``check``: "run"
    (the model still runs, output shapes unchanged, finite) or "equivalence" (and equals zeroing the
    channels). On any failure the model is restored exactly and the reason returned."""
    dg = g.dg
    pruner = dg.get_pruner_of_module(g.root)
    try:
        with bounded_index_expansion():
            group = dg.get_pruning_group(g.root, pruner.prune_out_channels, sorted(remove))
    except Exception as e:  # noqa: BLE001
        return f"group construction failed ({type(e).__name__}: {e})"
    if not dg.check_pruning_group(group):
        return "would remove every channel of a coupled layer"
    snaps, params = [], []
    for item in group:
        t = item.dep.target.module
        if isinstance(t, nn.Parameter):
            params.append((t, *_unwrapped_location(model, dg, t)))
        elif isinstance(t, nn.Module):
            snaps.append((t, _module_snapshot(t)))
    masked = None
    if check == "equivalence":
        saved = _zero_channels(group)
        try:
            with torch.no_grad():
                masked = [t.clone() for t in _outputs(model(*example_inputs))]
        finally:
            for p, v in saved:
                p.data.copy_(v)

    def restore() -> None:
        for m, s in snaps:
            _restore_module(m, s)
        for old, parent, attr, name in params:
            new = getattr(parent, attr)
            setattr(parent, attr, old)
            dg._param_to_name.pop(new, None)
            dg._param_to_name[old] = name
            if new in dg.module2node:
                node = dg.module2node.pop(new)
                node.module = old
                dg.module2node[old] = node

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group.prune(record_history=False)
        with torch.no_grad():
            out = _outputs(model(*example_inputs))
    except Exception as e:  # noqa: BLE001
        restore()
        return f"pruned model fails to run ({type(e).__name__}: {str(e)[:200]})"
    why = None
    if [t.shape for t in out] != [t.shape for t in reference]:
        why = f"output shape changed {[tuple(t.shape) for t in reference]} -> {[tuple(t.shape) for t in out]}"
    elif not all(torch.isfinite(t).all() for t in out if t.is_floating_point()):
        why = "outputs became non-finite"
    elif masked is not None:
        for a, b in zip(out, masked):
            tol = 1e-4 * max(1.0, b.abs().max().item())
            err = (a - b).abs().max().item()
            if err > tol:
                why = f"removing the channels differs from zeroing them (max diff {err:.3g}); a consumer is outside the traced part or normalises across channels"
                break
    if why:
        restore()
    return why


# --------------------------------------------------------------------------------------------------
# A MACs model: per-layer MACs scaled by the fraction of input/output channels each group keeps.


def layer_macs(model: nn.Module, example_inputs: tuple) -> dict[nn.Module, float]:
    """MACs of each conv/linear for one forward of the example inputs (per sample of the batch)."""
    macs: dict[nn.Module, float] = {}

    def hook(mod, inp, out):
        batch = out.shape[0] if out.dim() > 1 else 1
        if isinstance(mod, nn.modules.conv._ConvNd):
            k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
            if isinstance(mod, nn.modules.conv._ConvTransposeNd):
                k = math.prod(mod.kernel_size) * mod.out_channels // mod.groups
                macs[mod] = macs.get(mod, 0) + inp[0].numel() / batch * k
                return
            macs[mod] = macs.get(mod, 0) + out.numel() / batch * k
        else:
            macs[mod] = macs.get(mod, 0) + out.numel() / batch * mod.in_features

    forward_with_hooks(model, example_inputs,
                       [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _ROOT_TYPES)])
    return macs


class MacsModel:
    """Predicts a model's conv+linear MACs for a given number of channels kept per group, without
    pruning anything: exact for layers whose channels each belong to one group."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], example_inputs: tuple):
        self.macs = layer_macs(model, example_inputs)
        self.total = sum(self.macs.values())
        self.layers = list(self.macs)
        index = {m: i for i, m in enumerate(self.layers)}
        L, G = len(self.layers), len(groups)
        self.out_frac = torch.zeros(L, G)
        self.in_frac = torch.zeros(L, G)
        self.depthwise = torch.zeros(L, dtype=torch.bool)
        for j, g in enumerate(groups):
            for mem in g.members:
                i = index.get(mem.module)
                if i is None:
                    continue
                layer = self.layers[i]
                if isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels and layer.groups > 1:
                    self.depthwise[i] = True
                dim_out = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features
                dim_in = layer.in_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.in_features
                if mem.kind == "out":
                    self.out_frac[i, j] = max(self.out_frac[i, j].item(), mem.count / dim_out)
                else:
                    self.in_frac[i, j] = max(self.in_frac[i, j].item(), mem.count / dim_in)
        self.m = torch.tensor([self.macs[l] for l in self.layers], dtype=torch.float64)

    def __call__(self, removed_fraction: torch.Tensor) -> float:
        """removed_fraction[g] = channels removed / channels of group g."""
        r = removed_fraction.to(torch.float32)
        keep_out = 1 - (self.out_frac @ r).clamp(max=1)
        keep_in = torch.where(self.depthwise, torch.ones_like(keep_out), 1 - (self.in_frac @ r).clamp(max=1))
        return float((self.m * (keep_out * keep_in).double()).sum())


def keep_count(n: int, remove_wanted: int, round_to: int | None, max_ratio: float) -> int:
    """Channels kept when ``remove_wanted`` of ``n`` are asked to go: at least one, at least
    ``(1 - max_ratio)·n``, and with ``round_to`` the nearest multiple of it (a group narrower than
    ``round_to`` is left whole)."""
    keep = n - max(0, min(remove_wanted, n))
    keep = max(keep, math.ceil(n * (1 - max_ratio) - 1e-9), 1)
    if round_to and round_to > 1 and n >= round_to:
        floor = math.ceil(n * (1 - max_ratio) - 1e-9)
        down, up = keep // round_to * round_to, math.ceil(keep / round_to) * round_to
        # the nearest multiple (ties keep more), never below the floor, never zero, never above n
        keep = down if down >= max(floor, round_to) and keep - down < up - keep else up
        keep = min(keep, n // round_to * round_to)
    return keep


def zero_root_channels(groups, removals) -> None:
    """Soft pruning: zero (not remove) the output filters of the chosen root channels."""
    for g, rem in zip(groups, removals):
        root_set = set(rem)
        for mem in g.out_members:
            _zero_rows(mem.module, [i for i, r in zip(mem.idxs, mem.root_idxs) if r in root_set])
