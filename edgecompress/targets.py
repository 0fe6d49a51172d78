"""Deployment targets: which artifacts to write and which int8 contract the quantizer simulates.

>>> list_targets()
['ncnn', 'onnx', 'torch']
"""

from __future__ import annotations

import dataclasses

from edgecompress.errors import UnknownTargetError


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    exporters: tuple[str, ...]
    quant_scheme: str  # the int8 contract simulated: "affine" (zero points) or "symmetric"
    description: str
    prune_round_to: int | None = None  # default PruneConfig.round_to: the runtime's channel packing


_TARGETS: dict[str, Target] = {}


def register_target(t: Target) -> Target:
    _TARGETS[t.name] = t
    return t


def list_targets() -> list[str]:
    return sorted(_TARGETS)


def get_target(name: str) -> Target:
    if name not in _TARGETS:
        raise UnknownTargetError(name, list(_TARGETS))
    return _TARGETS[name]


register_target(Target("onnx", ("onnx",), "affine",
                       "ONNX fp32 (dynamic batch), verified in onnxruntime; int8 simulated affine (u8 + zero point)"))
register_target(Target("ncnn", ("ncnn", "onnx"), "symmetric",
                       "ncnn fp32 param/bin via pnnx, verified in ncnn; int8 simulated symmetric (ncnn's contract)",
                       prune_round_to=8))  # ncnn packs channels by 8 on x86 AVX (elempack 8) and 4 on ARM
register_target(Target("torch", ("torch",), "affine",
                       "torch.export program (.pt2) of the int8 model on edgecompress's C++ kernels (float "
                       "program without quantization), verified by re-loading"))
