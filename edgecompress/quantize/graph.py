"""Tensor-level quantization points around residual adds, so a QDQ runtime can stay in int8 through
a whole residual network.

``ptq`` quantizes the *inputs* of Conv2d / Linear layers. That is all ncnn runs (it requantizes
between int8 layers and adds in float), but onnxruntime forms its int8 kernels from QDQ patterns:
``DQ -> Conv -> Q`` becomes QLinearConv only when the conv's output is quantized, and
``DQ, DQ -> Add -> Q`` becomes QLinearAdd. With inputs quantized only, every conv that feeds a
residual add stays float, and the graph shuttles between layouts (ResNet-20: 10 of 19 convs float,
18 Transposes, slower than fp32).

This pass traces the model with ``torch.fx`` (fake-quant layers as leaves), and for every add of two
float tensors puts a ``FakeQuantAct`` on

- each input of the add (a conv output feeding a residual, the block's input on the identity path);
- its output, after the ReLU when a ReLU is the add's only consumer (so the range starts at 0, the
  zero point is 0, and the ReLU is exact inside ``QuantizeLinear``'s clamp).

A tensor is quantized once, for all its consumers: a conv whose input is such a point takes the
point's scale and zero point (``input_point``), so its own input quantization is the identity and the
exported graph has one Q/DQ pair per tensor. The model keeps its object identity: the points are
registered under ``model.act_quant`` and ``model.forward`` becomes the traced graph's forward, bound to
the model (``copy.deepcopy`` follows it; pickle the ``state_dict``, not the module).
"""

from __future__ import annotations

import operator
import types

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
CONTAINER = "act_quant"


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf_types: tuple):
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, qualname)


def _is_float_tensor(n) -> bool:
    meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _add_inputs(n: fx.Node) -> tuple | None:
    """The two tensor operands of an add node (``a + b``, ``a += b``, ``torch.add``, ``a.add(b)``), else None."""
    if n.op == "call_function" and n.target in _ADD_FUNCTIONS:
        args = n.args[:2]
    elif n.op == "call_method" and n.target in ("add", "add_"):
        args = n.args[:2]
    else:
        return None
    if len(args) != 2 or "alpha" in n.kwargs or len(n.args) > 2:
        return None
    if not all(_is_float_tensor(a) for a in args) or not _is_float_tensor(n):
        return None
    if len({tuple(m.meta["tensor_meta"].shape) for m in (n, *args)}) != 1:
        return None  # broadcasting adds (a bias-like term) are not residuals
    return tuple(args)


def _is_relu(n: fx.Node, modules: dict) -> bool:
    if n.op == "call_function":
        return n.target in _RELU_FUNCTIONS
    if n.op == "call_method":
        return n.target in ("relu", "relu_")
    return n.op == "call_module" and type(modules.get(n.target)) is nn.ReLU


def _point_name(n: fx.Node, modules: dict) -> str:
    """A readable name for the tensor a node produces: ``layer1.0.conv2:out``, ``layer1.0:relu_2``
    (through the Identity a folded BatchNorm leaves behind)."""
    while n.op == "call_module" and type(modules.get(n.target)) is nn.Identity and isinstance(n.args[0], fx.Node):
        n = n.args[0]
    if n.op == "call_module":
        return f"{n.target}:out"
    if n.op == "placeholder":
        return f"input:{n.name}"
    stack = n.meta.get("nn_module_stack") or {}
    scope = next(reversed(stack.values()))[0] if stack else ""
    scope = scope if isinstance(scope, str) else ""
    return f"{scope}:{n.name}" if scope else n.name


def insert_residual_points_(model: nn.Module, contract, example: torch.Tensor, leaf_types: tuple,
                            point_cls: type) -> tuple[dict, str | None]:
    """Trace ``model``, add quantization points around its residual adds (module docstring), tie the
    quantized convs that read a point to it, and rebind ``model.forward`` to the new graph.

    Returns ``({point name: FakeQuantAct}, None)``, or ``({}, reason)`` when the model cannot be
    traced or has no residual add (the model is then left as it was)."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        tracer = _LeafTracer(leaf_types)
        graph = tracer.trace(model)
        gm = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "no graph pass", said in the report
        return {}, f"torch.fx could not trace the model ({type(e).__name__}: {str(e)[:200]})"
    graph = gm.graph
    modules = dict(gm.named_modules())
    adds = [(n, ab) for n in graph.nodes if (ab := _add_inputs(n)) is not None]
    if not adds:
        return {}, "no residual add in the model"

    container = nn.Module()
    points: dict[str, nn.Module] = {}
    point_of: dict[fx.Node, fx.Node] = {}  # node -> its point node

    def quantize_after(node: fx.Node) -> None:
        if node in point_of or (node.op == "call_module" and isinstance(modules.get(node.target), point_cls)):
            return
        name = _point_name(node, modules)
        key = f"p{len(points)}"
        point = point_cls(contract, name)
        container.add_module(key, point)
        gm.add_submodule(f"{CONTAINER}.{key}", point)
        modules[f"{CONTAINER}.{key}"] = point
        with graph.inserting_after(node):
            p = graph.call_module(f"{CONTAINER}.{key}", (node,))
        node.replace_all_uses_with(p, delete_user_cb=lambda user: user is not p)
        p.meta = dict(node.meta)
        point_of[node] = p
        points[name] = point

    for add, (a, b) in adds:
        quantize_after(a)
        quantize_after(b)
        users = list(add.users)
        quantize_after(users[0] if len(users) == 1 and _is_relu(users[0], modules) else add)

    graph.lint()
    gm.recompile()
    model.add_module(CONTAINER, container)
    model.forward = types.MethodType(type(gm).forward, model)
    _tie_inputs(graph, modules, points)
    return points, None


def _tie_inputs(graph: fx.Graph, modules: dict, points: dict) -> None:
    """A quantized conv/linear whose every call reads one point takes that point's parameters."""
    by_module = {id(p): p for p in points.values()}
    reads: dict[str, set] = {}
    for n in graph.nodes:
        if n.op == "call_module" and hasattr(modules.get(n.target), "w_scale"):
            src = n.args[0] if n.args else None
            pt = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
            reads.setdefault(n.target, set()).add(id(pt) if pt is not None and id(pt) in by_module else None)
    for target, ids in reads.items():
        if len(ids) == 1 and None not in ids:
            modules[target].tie_input(by_module[next(iter(ids))])
