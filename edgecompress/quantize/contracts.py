"""Per-backend int8 contracts: the integer rules each runtime applies, so that the PyTorch simulation
computes what the device computes.

| contract | activations | weights | rounding | scale convention |
|---|---|---|---|---|
| onnx (ORT QDQ, CPU) | u8 [0, 255] + zero point | s8 [-127, 127] per out-channel | half to even | q = x / scale |
| torch (our kernels) | u8 [0, 255] + zero point | s8 [-127, 127] per out-channel | half to even | q = x / scale |
| ncnn | s8 [-127, 127], no zero point | s8 [-127, 127] per out-channel; depthwise/grouped: per group | half away from zero | q = x · s, s = 127 / threshold |
| tensorrt | s8 [-128, 127], zero point 0 | s8 [-127, 127] per out-channel | half to even | q = x / scale |

ncnn: ``q = clamp(round(x·s), -127, 127)`` with ``round`` half away from zero and ``s`` a multiplier
(EXPORT_FORMATS.md §2.2); its grouped convs take one weight scale per group (§2.1). ONNX
``QuantizeLinear`` rounds half to even and divides. Weights are kept in [-127, 127] everywhere
(a symmetric weight grid; -128 would overflow u8·s8 pair sums in VNNI kernels).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from edgecompress.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Contract:
    name: str
    act_scheme: str  # affine | symmetric
    act_qmin: int
    act_qmax: int
    w_qmin: int
    w_qmax: int
    rounding: str  # half_even | half_away
    convention: str  # divide (q = x/scale) | multiply (q = x*s)
    grouped_weights: str  # per_channel | per_group

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_AFFINE = dict(act_scheme="affine", act_qmin=0, act_qmax=255, w_qmin=-127, w_qmax=127, rounding="half_even",
               convention="divide", grouped_weights="per_channel")
CONTRACTS = {
    "onnx": Contract("onnx", **_AFFINE),
    "torch": Contract("torch", **_AFFINE),
    "ncnn": Contract("ncnn", "symmetric", -127, 127, -127, 127, "half_away", "multiply", "per_group"),
    "tensorrt": Contract("tensorrt", "symmetric", -128, 127, -127, 127, "half_even", "divide", "per_channel"),
    # generic schemes when no backend is named
    "affine": Contract("affine", **_AFFINE),
    "symmetric": Contract("symmetric", "symmetric", -127, 127, -127, 127, "half_even", "divide", "per_channel"),
}
SYMMETRIC_ONLY = {"ncnn", "tensorrt"}


def resolve_contract(target: str | None, scheme: str | None) -> Contract:
    """The contract for a backend, honouring a requested scheme where the backend runs it. Asking a
    symmetric-only backend for affine warns and uses its symmetric contract (never wrong files)."""
    if target is None:
        return CONTRACTS[scheme or "affine"]
    if target not in CONTRACTS:
        raise ConfigError(f"no int8 contract for target {target!r}; known: {sorted(CONTRACTS)}")
    c = CONTRACTS[target]
    if scheme == "affine" and target in SYMMETRIC_ONLY:
        warnings.warn(f"{target} runs symmetric int8 only (no zero points); using its symmetric contract instead "
                      "of the requested affine scheme", UserWarning, stacklevel=3)
    elif scheme == "symmetric" and c.act_scheme == "affine":
        c = dataclasses.replace(c, act_scheme="symmetric", act_qmin=-127, act_qmax=127)
    return c


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class _FakeQuant(torch.autograd.Function):
    """Quantize-dequantize with the contract's exact arithmetic; straight-through gradient inside
    the clipping range (zero outside), as in QAT with STE."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, rounding, convention):
        xf = x.float()
        if convention == "multiply":  # scale here is the multiplier s
            v = xf * scale
        else:
            v = xf / scale
        r = round_half_away(v) if rounding == "half_away" else torch.round(v)  # torch.round: half to even
        q = (r + zero_point).clamp(qmin, qmax)
        ctx.save_for_backward(((r + zero_point) >= qmin) & ((r + zero_point) <= qmax))
        out = (q - zero_point) / scale if convention == "multiply" else (q - zero_point) * scale
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask, None, None, None, None, None, None


def fake_quant(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, contract: Contract) -> torch.Tensor:
    """``scale``/``zero_point`` broadcastable to x (per-channel: shape [C, 1, ...])."""
    return _FakeQuant.apply(x, scale, zero_point, qmin, qmax, contract.rounding, contract.convention)


def quantize_codes(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, contract: Contract) -> torch.Tensor:
    """The integer codes the backend stores (float tensor holding integers)."""
    v = x.float() * scale if contract.convention == "multiply" else x.float() / scale  # a new tensor: in place below
    if contract.rounding == "half_away":
        sign = torch.sign(v)
        v.abs_().add_(0.5).floor_().mul_(sign)
    else:
        v.round_()  # half to even
    if not (isinstance(zero_point, (int, float)) and zero_point == 0):
        v.add_(zero_point)
    return v.clamp_(qmin, qmax)
