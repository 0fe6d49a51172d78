"""fp16 as each backend stores it, simulated in PyTorch (fp32 arithmetic on the values the artifact
holds), so fp16 accuracy can be measured before exporting and ``validate`` compares an fp16 artifact
with what it should compute.

- ``ncnn`` (pnnx ``fp16=1``): BatchNorm folded into the convs first, then Convolution /
  ConvolutionDepthWise / InnerProduct ``weight_data`` rounded to fp16 (round to nearest even);
  ``bias_data`` stays fp32; arithmetic in fp32. Measured on ResNet-20, 1000 CIFAR-10 test images,
  ncnn's default options on this x86 CPU (benchmarks/fp16_reference.py): max |logit diff| 0.0016
  from ncnn-fp16, against 0.032 for "every parameter rounded" and 0.010 for plain fp32; also
  rounding every layer's output to fp16 made it worse (0.023). The rest is ncnn's own fp16 blob
  storage where it uses it, not simulated; ARM cores with fp16 arithmetic will differ more.
- ``onnx`` / ``tensorrt`` (the graph cast to half): every floating parameter and buffer rounded to
  fp16. onnxruntime's fp16 graph on x86 then differs by up to ~0.04 (same run): its own fusions run in
  fp16, which fp32 arithmetic here does not reproduce.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.errors import ConfigError
from edgecompress.quantize.fold import fold_bn_
from edgecompress.utils import sqnr_db

FP16_TARGETS = ("ncnn", "onnx", "tensorrt")


@torch.no_grad()
def simulate_fp16_(model: nn.Module, target: str = "onnx") -> dict:
    """Round ``model`` in place to what ``target``'s fp16 artifact stores; returns per layer the
    weight SQNR (dB) of the rounding, and what was rounded."""
    if target not in FP16_TARGETS:
        raise ConfigError(f"no fp16 simulation for target {target!r}; choose one of {list(FP16_TARGETS)}")
    model.eval()
    folded = 0
    if target == "ncnn":
        folded = fold_bn_(model)
        tensors = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    else:
        tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()}
    sqnr = {}
    for name, t in tensors.items():
        r = t.half().float()
        if name.endswith("weight") and t.dim() > 1:
            sqnr[name.rpartition(".")[0]] = sqnr_db(t, r)
        t.copy_(r)
    return {"target": target, "bn_folded": folded, "rounded_tensors": len(tensors),
            "rounded": "conv/linear weights (biases fp32)" if target == "ncnn" else "every floating parameter and buffer",
            "weight_sqnr_db": sqnr}
