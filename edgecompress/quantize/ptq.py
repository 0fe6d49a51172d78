"""Post-training int8 quantization simulated in PyTorch.

Every Conv2d / Linear gets fake-quantized weights (per output channel, symmetric s8 in
[-127, 127]) and a fake-quantized input activation (per tensor), which is where ncnn and
onnxruntime's QDQ kernels quantize. Two activation schemes:

* ``affine``: u8 with a zero point, x ≈ s·(q − z), q ∈ [0, 255] (onnxruntime CPU, our kernels);
* ``symmetric``: s8 without zero point, q ∈ [−127, 127] (ncnn, TensorRT).

>>> qmodel = copy.deepcopy(model); report = quantize_(qmodel, QuantConfig(), calib_loader)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import DataError
from edgecompress.quantize.fold import fold_bn_

W_QMIN, W_QMAX = -127, 127


@dataclasses.dataclass
class QuantConfig(Config):
    """scheme: affine | symmetric | None (the target's default). calibration: minmax | percentile."""

    scheme: str | None = None
    calibration: str = "percentile"
    percentile: float = 99.99
    calib_batches: int = 8
    per_channel: bool = True
    skip_layers: tuple[str, ...] = ()

    def validate(self) -> None:
        n = type(self).__name__
        if self.scheme is not None:
            check_choice(n, "scheme", self.scheme, {"affine", "symmetric"})
        check_choice(n, "calibration", self.calibration, {"minmax", "percentile"})
        check_range(n, "percentile", self.percentile, 50.0, 100.0)
        check_range(n, "calib_batches", self.calib_batches, 1, 100_000)
        self.skip_layers = tuple(self.skip_layers)


class _ActObserver(nn.Module):
    """Collects the range of the tensors it sees, then fake-quantizes them."""

    def __init__(self, scheme: str, calibration: str, percentile: float):
        super().__init__()
        self.scheme, self.calibration, self.percentile = scheme, calibration, percentile
        self.observing = True
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self._los, self._his = [], []

    @property
    def qrange(self) -> tuple[int, int]:
        return (0, 255) if self.scheme == "affine" else (-127, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            xf = x.detach().float().flatten()
            if self.calibration == "percentile" and xf.numel() > 1:
                k = self.percentile / 100.0
                sample = xf if xf.numel() <= 2**24 else xf[:: xf.numel() // 2**24 + 1]
                self._los.append(torch.quantile(sample, 1 - k).item())
                self._his.append(torch.quantile(sample, k).item())
            else:
                self._los.append(xf.min().item())
                self._his.append(xf.max().item())
            return x
        qmin, qmax = self.qrange
        return torch.fake_quantize_per_tensor_affine(x, self.scale.item(), int(self.zero_point.item()), qmin, qmax)

    def finalize(self) -> None:
        if not self._los:
            raise DataError("a quantized layer saw no calibration data; pass calibration batches that reach every layer")
        reduce = (lambda v: sum(v) / len(v)) if self.calibration == "percentile" else None
        lo = reduce(self._los) if reduce else min(self._los)
        hi = reduce(self._his) if reduce else max(self._his)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.scheme == "affine":
            scale = max((hi - lo) / 255.0, 1e-8)
            zp = int(min(255, max(0, round(-lo / scale))))
        else:
            scale = max(max(abs(lo), abs(hi)) / 127.0, 1e-8)
            zp = 0
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)
        self.observing = False
        self._los, self._his = [], []


def _weight_scales(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    absmax = w.detach().abs().flatten(1).amax(1) if per_channel else w.detach().abs().max().expand(w.shape[0])
    return (absmax / W_QMAX).clamp_min(1e-12).float()


def _fq_weight(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    zp = torch.zeros(len(scales), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scales, zp, 0, W_QMIN, W_QMAX)


def _attach_quant(q: nn.Module, src: nn.Module, cfg: QuantConfig, scheme: str) -> nn.Module:
    """Copy ``src``'s weights into ``q`` and give it an input observer and per-channel weight scales."""
    q.load_state_dict(src.state_dict())
    q.act = _ActObserver(scheme, cfg.calibration, cfg.percentile)
    q.register_buffer("w_scale", _weight_scales(src.weight, cfg.per_channel))
    return q


class FakeQuantConv2d(nn.Conv2d):
    """Conv2d computing on int8-representable inputs and weights (float arithmetic, exact grid)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, cfg: QuantConfig, scheme: str) -> "FakeQuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        return _attach_quant(q, conv, cfg, scheme)

    def forward(self, x):
        return self._conv_forward(self.act(x), _fq_weight(self.weight, self.w_scale), self.bias)


class FakeQuantLinear(nn.Linear):
    @classmethod
    def from_float(cls, lin: nn.Linear, cfg: QuantConfig, scheme: str) -> "FakeQuantLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None)
        return _attach_quant(q, lin, cfg, scheme)

    def forward(self, x):
        return F.linear(self.act(x), _fq_weight(self.weight, self.w_scale), self.bias)


def quantize_(model: nn.Module, cfg: QuantConfig, calib_data, *, scheme: str = "affine", progress: bool = True) -> dict:
    """Fold BN, swap Conv2d/Linear for fake-quant versions, calibrate activation ranges on
    ``cfg.calib_batches`` batches of ``calib_data``. In place; returns per-layer scales."""
    scheme = cfg.scheme or scheme
    model.eval()
    folded = fold_bn_(model)
    swapped = {}
    for name, mod in list(model.named_modules()):
        if name in cfg.skip_layers:
            continue
        if type(mod) is nn.Conv2d:
            swapped[name] = FakeQuantConv2d.from_float(mod, cfg, scheme)
        elif type(mod) is nn.Linear:
            swapped[name] = FakeQuantLinear.from_float(mod, cfg, scheme)
    for name, q in swapped.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, q)
    seen = 0
    with torch.no_grad():
        for i, (x, _) in enumerate(tqdm(calib_data, total=cfg.calib_batches, desc="calibrate", disable=not progress, leave=False)):
            if i >= cfg.calib_batches:
                break
            model(x)
            seen += 1
    if seen == 0:
        raise DataError("no calibration batches: pass non-empty train_data (or calib data) to quantize")
    for q in swapped.values():
        q.act.finalize()
    return {
        "scheme": scheme, "calibration": cfg.calibration, "calib_batches": seen, "bn_folded": folded,
        "layers": {n: {"act_scale": q.act.scale.item(), "act_zero_point": int(q.act.zero_point.item()),
                       "act_range": [q.act.lo.item(), q.act.hi.item()],
                       "w_scale_min": q.w_scale.min().item(), "w_scale_max": q.w_scale.max().item()}
                   for n, q in swapped.items()},
    }
