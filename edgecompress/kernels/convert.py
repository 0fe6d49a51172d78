"""``convert_to_kernels``: a quantized and/or sparsified model -> the same network on the kernel ops.

1. every enabled ``FakeQuantConv2d`` / ``FakeQuantLinear`` (``torch`` contract) becomes an
   ``Int8Conv2d`` / ``Int8Linear`` with the calibrated scales (the simulation's exact arithmetic);
2. float convs (groups=1) with enough zero weights become ``SparseConv2d`` where, timed on the layer's
   real input shape, the sparse kernel beats the dense torch conv (else they stay dense);
3. with ``torch.fx``: a ReLU/ReLU6 whose only input is a kernel conv with no other user is fused into
   it, and an int8 conv whose only users are int8 layers with one common input scale/zero point
   requantizes to u8 for them (the next layer skips its float round trip).

>>> fast = convert_to_kernels(qmodel, example_inputs=(x,))      # doctest: +SKIP
>>> fast.edgecompress_kernels["layers"]["layer1.0.conv1"]        # doctest: +SKIP
{'kind': 'int8', 'activation': 'relu', 'output': 'u8'}
"""

from __future__ import annotations

import copy
import operator
import statistics
import time

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.kernels import ops
from edgecompress.kernels.modules import ACTIVATIONS, Int8Conv2d, Int8Linear, SparseConv2d


def _set(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, mod)


def _median_ms(fn, x, iters: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


@torch.no_grad()
def _layer_inputs(model: nn.Module, names: list[str], example_inputs: tuple) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen.setdefault(n, a[0].detach().clone())) for n in names]
    try:
        model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def convert_to_kernels(model: nn.Module, *, example_inputs: tuple | torch.Tensor | None = None, int8: bool = True,
                       sparse: bool = True, min_sparsity: float = 0.5, time_sparse: bool = True,
                       fuse: bool = True, timing_iters: int = 20) -> nn.Module:
    """A converted deep copy of ``model`` (eval mode); the decisions per layer are in its
    ``edgecompress_kernels`` attribute. ``example_inputs`` are needed to time sparse layers against
    dense (without them a conv goes sparse when its sparsity reaches ``min_sparsity``)."""
    from edgecompress.quantize.ptq import FakeQuantConv2d, FakeQuantLinear

    backend = ops.load()
    m = copy.deepcopy(model).eval()
    if torch.is_tensor(example_inputs):
        example_inputs = (example_inputs,)
    info: dict = {"backend": backend, "layers": {}}
    for name, mod in list(m.named_modules()):
        if int8 and isinstance(mod, FakeQuantConv2d) and mod.enabled:
            _set(m, name, Int8Conv2d.from_fake_quant(mod))
            info["layers"][name] = {"kind": "int8"}
        elif int8 and isinstance(mod, FakeQuantLinear) and mod.enabled:
            _set(m, name, Int8Linear.from_fake_quant(mod))
            info["layers"][name] = {"kind": "int8"}
        elif isinstance(mod, (FakeQuantConv2d, FakeQuantLinear)):  # float fallback layer of the quantizer
            plain = (nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                               mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode)
                     if isinstance(mod, nn.Conv2d) else nn.Linear(mod.in_features, mod.out_features, mod.bias is not None))
            plain.load_state_dict({k: v for k, v in mod.state_dict().items() if k in ("weight", "bias")})
            _set(m, name, plain.eval())
            info["layers"][name] = {"kind": "float", "reason": "kept float by the quantizer"}
    if sparse:
        _sparsify(m, info, example_inputs, min_sparsity, time_sparse, timing_iters)
    if fuse:
        m = _fuse(m, info)
    m.edgecompress_kernels = info
    return m


def _sparsify(m, info, example_inputs, min_sparsity, time_sparse, iters) -> None:
    cands = [n for n, mod in m.named_modules() if type(mod) is nn.Conv2d and mod.groups == 1
             and isinstance(mod.padding, tuple) and mod.padding_mode == "zeros"
             and float((mod.weight == 0).float().mean()) >= min_sparsity]
    inputs = _layer_inputs(m, cands, example_inputs) if (cands and time_sparse and example_inputs) else {}
    for name in cands:
        conv = m.get_submodule(name)
        sp = SparseConv2d.from_conv(conv)
        rec = {"kind": "dense", "sparsity": round(1 - sp.density, 4)}
        if name in inputs:
            x = inputs[name].contiguous()
            t_dense, t_sparse = _median_ms(conv, x, iters), _median_ms(sp, x, iters)
            rec.update(dense_ms=round(t_dense, 4), sparse_ms=round(t_sparse, 4))
            if t_sparse < t_dense:
                rec["kind"] = "sparse"
        else:
            rec["kind"] = "sparse"
            rec["note"] = "not timed (no example_inputs)"
        if rec["kind"] == "sparse":
            _set(m, name, sp)
        info["layers"][name] = rec


_RELU = {nn.ReLU: "relu", nn.ReLU6: "relu6", F.relu: "relu", torch.relu: "relu", F.relu6: "relu6",
         torch.relu_: "relu", F.relu_: "relu"}


def _act_of(node: fx.Node, mods: dict) -> str | None:
    if node.op == "call_module":
        return _RELU.get(type(mods[node.target]))
    if node.op == "call_function":
        if node.target in (F.hardtanh,) and node.args[1:3] == (0.0, 6.0):
            return "relu6"
        return _RELU.get(node.target)
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, mod: nn.Module, qualname: str) -> bool:
        return isinstance(mod, (Int8Conv2d, Int8Linear, SparseConv2d)) or super().is_leaf_module(mod, qualname)


def _fuse(m: nn.Module, info: dict) -> nn.Module:
    try:
        gm = fx.GraphModule(m, _Tracer().trace(m), type(m).__name__)
    except Exception as e:  # noqa: BLE001 - data-dependent control flow etc.: keep the unfused modules
        info["fusion"] = f"skipped: torch.fx could not trace the model ({type(e).__name__})"
        return m
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):  # folded BatchNorms are Identity: drop them so conv -> relu is adjacent
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    kernel = (Int8Conv2d, SparseConv2d)
    fused = 0
    for node in list(gm.graph.nodes):
        act = _act_of(node, mods)
        if act is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if src.op != "call_module" or not isinstance(mods.get(src.target), kernel) or len(src.users) != 1:
            continue
        if mods[src.target].activation:
            continue
        mods[src.target].activation = ACTIVATIONS[act]
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        info["layers"].setdefault(src.target, {})["activation"] = act
        fused += 1
    chained = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), Int8Conv2d):
            continue
        users = list(node.users)
        targets = []
        for u in users:
            mod = mods.get(u.target) if u.op == "call_module" else None
            conv = mod.conv if isinstance(mod, Int8Linear) else mod
            if not isinstance(conv, Int8Conv2d) or u.args[0] is not node or (isinstance(mod, Int8Linear)):
                targets = []
                break
            targets.append(conv)
        if targets and len({(t.x_scale, t.x_zero_point) for t in targets}) == 1:
            mods[node.target].out_qparams = (targets[0].x_scale, targets[0].x_zero_point)
            info["layers"].setdefault(node.target, {})["output"] = "u8"
            chained += 1
    gm.graph.lint()
    gm.recompile()
    info["fusion"] = {"activations_fused": fused, "u8_chains": chained}
    return gm
