"""Deployment targets: which artifacts to write and which int8 contract the quantizer simulates.

>>> list_targets()
['ncnn', 'ncnn-fp16', 'ncnn-int8', 'onnx', 'onnx-fp16', 'onnx-int8', 'tensorrt', 'tensorrt-int8', 'torch']
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
    contract: str = ""  # the quantize_ contract (the backend whose integer arithmetic is simulated)
    needs_int8: bool = False  # its artifact is int8: compress(..., quantize=False) is an error

    def __post_init__(self):
        if not self.contract:
            object.__setattr__(self, "contract", self.name.split("-")[0])


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
register_target(Target("onnx-fp16", ("onnx-fp16",), "affine",
                       "ONNX fp16 (half weights and arithmetic, float32 input/output), verified in onnxruntime"))
register_target(Target("onnx-int8", ("onnx-int8", "onnx"), "affine",
                       "ONNX int8 QDQ from our scales (u8 activations + zero points, s8 per-channel weights, int32 "
                       "bias) for onnxruntime's int8 kernels, plus the fp32 ONNX", needs_int8=True))
register_target(Target("ncnn", ("ncnn", "onnx"), "symmetric",
                       "ncnn fp32 param/bin via pnnx, verified in ncnn; int8 simulated symmetric (ncnn's contract)",
                       prune_round_to=8))  # ncnn packs channels by 8 on x86 AVX (elempack 8) and 4 on ARM
register_target(Target("ncnn-fp16", ("ncnn-fp16",), "symmetric",
                       "ncnn with fp16 weights (pnnx's default), run with ncnn's fp16 storage/arithmetic",
                       prune_round_to=8))
register_target(Target("ncnn-int8", ("ncnn-int8", "ncnn"), "symmetric",
                       "ncnn int8 written from our scales (int8 weights, requantize fusion, .table for ncnn's "
                       "tools), bit-exact with the simulation on regular convs; plus the fp32 ncnn model",
                       prune_round_to=8, needs_int8=True))
register_target(Target("tensorrt", ("tensorrt",), "symmetric",
                       "TensorRT fp16 engine from an fp16 ONNX (needs TensorRT and an NVIDIA GPU; without them the "
                       "ONNX is written and validated in onnxruntime and the engine step is reported as skipped)",
                       prune_round_to=8))
register_target(Target("tensorrt-int8", ("tensorrt-int8",), "symmetric",
                       "TensorRT int8 engine from a TensorRT-ready QDQ ONNX (symmetric, zero point 0); same gating "
                       "as tensorrt", prune_round_to=8, needs_int8=True))
register_target(Target("torch", ("torch",), "affine",
                       "torch.export program (.pt2) of the int8 model on edgecompress's C++ kernels (float "
                       "program without quantization), verified by re-loading"))
