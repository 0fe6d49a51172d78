"""Int8 quantization simulated in PyTorch under a backend's exact contract (see ``contracts``).

Every Conv2d / Linear gets fake-quantized weights (s8, per output channel; per group for ncnn's
grouped convs) and a fake-quantized input, which is where ncnn, TensorRT and onnxruntime's QDQ
kernels quantize (after the producer's fused activation). BatchNorm is folded into the convs first.

>>> qmodel = copy.deepcopy(model)
>>> rep = quantize_(qmodel, QuantConfig(calibration="entropy"), calib_loader, target="ncnn")  # doctest: +SKIP
>>> rep["spec"]["layers"]["layer1.0.conv1"]["act"]["scale"]                                  # doctest: +SKIP

``rep["spec"]`` is the quantized model's metadata, plain JSON: the contract, and per layer its
activation scale/zero point/range, weight scales, and whether (and why) it stays float. Exporters
read it; none recomputes scales.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import fnmatch
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import ConfigError, DataError
from edgecompress.quantize.calibrate import METHODS, Observer, range_to_qparams
from edgecompress.quantize.contracts import Contract, fake_quant, quantize_codes, resolve_contract
from edgecompress.quantize.fold import fold_bn_
from edgecompress.utils import sqnr_db

W_QMIN, W_QMAX = -127, 127
_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


@dataclasses.dataclass
class QuantConfig(Config):
    """scheme: affine | symmetric | None (the target's). calibration: minmax | percentile | entropy |
    mse, overridable per layer with ``layer_calibration={"fc": "minmax"}`` (fnmatch patterns).
    ``skip_layers`` stay float; ``fallback_layers=k`` also keeps the k layers whose own
    quantization hurts the output most (sensitivity analysis) in float. Calibration ranges are
    recomputed on ``stability_splits`` disjoint subsets of the batches; a layer whose threshold
    spreads by more than ``stability_tol`` is flagged. ``residual_points`` also quantizes the tensors
    around residual adds (``graph``), so onnxruntime runs QLinearConv/QLinearAdd end to end; None: on
    for the ``onnx`` contract, off elsewhere (ncnn and our kernels add in float)."""

    scheme: str | None = None
    calibration: str = "percentile"
    layer_calibration: dict[str, str] | None = None
    percentile: float = 99.99
    calib_batches: int = 8
    per_channel: bool = True
    skip_layers: tuple[str, ...] = ()
    fallback_layers: int = 0
    stability_splits: int = 4
    stability_tol: float = 0.10
    seed: int = 0
    residual_points: bool | None = None


    def validate(self) -> None:
        n = type(self).__name__
        if self.scheme is not None:
            check_choice(n, "scheme", self.scheme, {"affine", "symmetric"})
        check_choice(n, "calibration", self.calibration, set(METHODS))
        for pat, m in (self.layer_calibration or {}).items():
            check_choice(f"{n}.layer_calibration[{pat!r}]", "method", m, set(METHODS))
        check_range(n, "percentile", self.percentile, 50.0, 100.0)
        check_range(n, "calib_batches", self.calib_batches, 1, 100_000)
        check_range(n, "fallback_layers", self.fallback_layers, 0, 100_000)
        check_range(n, "stability_splits", self.stability_splits, 0, 1000)
        check_range(n, "stability_tol", self.stability_tol, 0.0, 100.0)
        self.skip_layers = tuple(self.skip_layers)
        if self.residual_points not in (None, True, False):
            raise ConfigError(f"{n}.residual_points must be True, False or None (the contract's default), "
                              f"got {self.residual_points!r}")

    def method_for(self, layer: str) -> str:
        for pat, m in (self.layer_calibration or {}).items():
            if fnmatch.fnmatchcase(layer, pat):
                return m
        return self.calibration


def weight_qparams(w: torch.Tensor, contract: Contract, per_channel: bool, groups: int = 1) -> tuple[torch.Tensor, str]:
    """Per-output-channel weight scales (contract convention) and their granularity."""
    absmax = w.detach().abs().flatten(1).amax(1).float()
    granularity = "per_channel"
    if not per_channel:
        absmax, granularity = absmax.max().expand(w.shape[0]).clone(), "per_tensor"
    elif groups > 1 and contract.grouped_weights == "per_group" and w.shape[0] // groups > 1:
        absmax = absmax.view(groups, -1).amax(1).repeat_interleave(w.shape[0] // groups)
        granularity = "per_group"
    absmax = absmax.clamp_min(1e-12)
    if contract.convention == "multiply":
        return (torch.tensor(float(W_QMAX)) / absmax).float(), granularity
    return (absmax / W_QMAX).float(), granularity


class _ActQuant:
    """Activation fake quantization (scale, zero point, calibrated range); ``observer`` set while
    calibrating, ``ema`` while QAT tracks the range."""

    def _setup_act(self, contract: Contract) -> None:
        self.contract = contract
        self.observer: Observer | None = None
        self.enabled = True
        self.ema: float | None = None  # QAT: EMA momentum of the activation range while training
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.register_buffer("act_zero_point", torch.tensor(0))
        self.register_buffer("act_range", torch.tensor([0.0, 0.0]))

    @property
    def act_qrange(self) -> tuple[int, int]:
        return self.contract.act_qmin, self.contract.act_qmax

    @property
    def input_point(self):
        """The tensor-level point (``graph``) this layer's input comes from, whose parameters it uses."""
        return self.__dict__.get("_input_point")

    def _observing(self) -> bool:
        p = self.input_point
        return self.observer is not None or (p is not None and p.observer is not None)

    def _sync_input(self) -> None:
        p = self.input_point
        if p is not None and p.observer is None:
            with torch.no_grad():
                self.act_scale.copy_(p.act_scale)
                self.act_zero_point.copy_(p.act_zero_point)
                self.act_range.copy_(p.act_range)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            return x
        if not self.enabled or self._observing():
            return x
        self._sync_input()
        if self.training and self.ema is not None and self.input_point is None:
            self._update_range(x)
        return fake_quant(x, self.act_scale, self.act_zero_point, *self.act_qrange, self.contract)

    @torch.no_grad()
    def _update_range(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        self.act_range.mul_(self.ema).add_((1 - self.ema) * torch.stack([lo, hi]))
        scale, zp = range_to_qparams(self.act_range[0].item(), self.act_range[1].item(), self.contract)
        self.act_scale.fill_(scale)
        self.act_zero_point.fill_(zp)


class FakeQuantAct(_ActQuant, nn.Module):
    """A quantization point on a tensor (``graph``: around residual adds). After ``emit_qdq()`` it
    emits QuantizeLinear/DequantizeLinear through the ONNX exporter instead of simulating them."""

    def __init__(self, contract: Contract, name: str = ""):
        super().__init__()
        self.point_name = name
        self.export_qparams: tuple[float, int] | None = None
        self._setup_act(contract)

    def emit_qdq(self) -> None:
        """Export mode: the scale and zero point as Python constants (torch.export cannot read buffers).
        Called before the export starts: the ONNX exporter's op registry only sees the quantized
        ops registered by then."""
        import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers quantized_decomposed ops

        self.export_qparams = (float(self.act_scale), int(self.act_zero_point))

    def forward(self, x):
        if self.export_qparams is not None and self.enabled:
            qmin, qmax = self.act_qrange
            dt = torch.uint8 if qmin >= 0 else torch.int8
            scale, zp = self.export_qparams
            qd = torch.ops.quantized_decomposed
            return qd.dequantize_per_tensor(qd.quantize_per_tensor(x, scale, zp, qmin, qmax, dt), scale, zp, qmin, qmax, dt)
        return self.quant_input(x)

    def extra_repr(self) -> str:
        return f"{self.point_name!r}, contract={self.contract.name}"


class _QuantMixin(_ActQuant):
    """Input + weight fake quantization for a conv/linear."""

    def _setup(self, src: nn.Module, contract: Contract, per_channel: bool) -> None:
        self.load_state_dict(src.state_dict())
        self.train(src.training)  # a new module starts in training mode; keep the model's mode
        self._setup_act(contract)
        self.dynamic_weights = False  # QAT: weight scales follow the weights while training
        w_scale, self.w_granularity = weight_qparams(src.weight, contract, per_channel, getattr(src, "groups", 1))
        self.register_buffer("w_scale", w_scale)

    def tie_input(self, point: FakeQuantAct) -> None:
        """Read the input's quantization parameters from ``point`` (kept out of the module tree)."""
        self.__dict__["_input_point"] = point

    def refresh_weight_scales(self) -> None:
        self.w_scale.copy_(weight_qparams(self.weight, self.contract, self.w_granularity != "per_tensor",
                                          getattr(self, "groups", 1))[0])

    def _exact_ok(self) -> bool:
        """Inference without autograd: compute as the int8 runtime does (see ``_exact``)."""
        return self.enabled and not self._observing() and not self.training and not torch.is_grad_enabled()

    def _exact(self, x: torch.Tensor, op, k_per_out: int) -> torch.Tensor:
        """The runtime's arithmetic: exact integer accumulation of activation codes (minus zero point)
        times weight codes, then one float32 rescale ``acc * (1 / (s_in · s_w))`` (ncnn's multipliers)
        or ``acc * (s_in · s_w)`` (ONNX/TensorRT scales) plus the bias, rounded once (a fused
        multiply-add). Matches ncnn's int8 convolution bit for bit, where dequantizing to float and
        convolving in float32 rounds differently and flips codes at rounding boundaries downstream.

        The integer sums are done in float32 chunks over input channels small enough that every
        partial sum is below 2**24 (exact), summed in float64."""
        c = self.contract
        self._sync_input()
        xq = quantize_codes(x, self.act_scale, self.act_zero_point, *self.act_qrange, c)
        if int(self.act_zero_point) != 0:
            xq.sub_(self.act_zero_point)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        wq = quantize_codes(self.weight.detach(), self.w_scale.view(shape), 0, W_QMIN, W_QMAX, c)
        x_max = max(abs(self.act_qrange[0] - int(self.act_zero_point)), abs(self.act_qrange[1] - int(self.act_zero_point)))
        per_chunk = max(1, (2 ** 24 // (x_max * W_QMAX)) // max(1, k_per_out // wq.shape[1]))
        acc = op(xq, wq, 0, per_chunk)
        s_in = self.act_scale.float()
        s_w = self.w_scale.float()
        view = (1, -1) + (1,) * (acc.dim() - 2)
        rcp = _ncnn_depthwise_rcp(self, s_in, s_w)
        if rcp is not None:  # ncnn's x86 depthwise kernel: RCPPS, then a multiply and an add, each rounded
            y = acc.float() * rcp.view(view)
            if self.bias is not None:
                y = y + self.bias.detach().float().view(view)
            return y
        scale = 1.0 / (s_in * s_w) if c.convention == "multiply" else s_in * s_w
        scale = torch.where(s_w == 0, torch.zeros_like(scale), scale)
        y = acc.mul_(scale.double().view(view))  # acc is the op's own float64 result
        if self.bias is not None:
            y.add_(self.bias.detach().double().view(view))
        return y.float()

    def quant_weight(self) -> torch.Tensor:
        if not self.enabled:
            return self.weight
        scale = self.w_scale
        if self.training and self.dynamic_weights:
            scale = weight_qparams(self.weight, self.contract, self.w_granularity != "per_tensor",
                                   getattr(self, "groups", 1))[0]
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return fake_quant(self.weight, scale.view(shape), 0, W_QMIN, W_QMAX, self.contract)


_RCP_STATE: dict = {"warned": False}


def _ncnn_depthwise_rcp(layer, s_in: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor | None:
    """The rescale ncnn's x86 int8 ConvolutionDepthWise uses on channels packed by 8: RCPPS of
    ``s_in * s_w`` (12-bit, CPU-specific low bits), zero where the weight scale is 0; the sum times
    it and the bias added are rounded separately (no FMA). Measured bit-exact against the ncnn wheel
    here (it was 1.5-2.4e-4 of the output range off with an exact reciprocal). None elsewhere."""
    if not (layer.contract.name == "ncnn" and isinstance(layer, nn.Conv2d) and layer.groups > 1
            and layer.groups == layer.in_channels == layer.out_channels and layer.out_channels % 8 == 0):
        return None
    from edgecompress.kernels import ops

    try:
        rcp = ops.approx_reciprocal((s_in * s_w).float().contiguous())
    except RuntimeError as e:
        if not _RCP_STATE["warned"]:
            warnings.warn(f"ncnn depthwise rescale simulated with an exact reciprocal ({e}); ncnn's x86 kernel uses "
                          "RCPPS, so outputs may differ by ~2e-4 of their range", UserWarning, stacklevel=4)
            _RCP_STATE["warned"] = True
        return None
    return torch.where(s_w == 0, torch.zeros_like(rcp), rcp)


class FakeQuantConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, contract: Contract, per_channel: bool = True) -> "FakeQuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        q._setup(conv, contract, per_channel)
        return q

    def forward(self, x):
        if self._exact_ok():
            return self._exact(x, self._int_conv, self.weight[0].numel())
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)

    def _int_conv(self, xq: torch.Tensor, wq: torch.Tensor, _, per_chunk: int) -> torch.Tensor:
        cin_g = wq.shape[1]  # input channels per group
        if self.groups > 1 and cin_g > per_chunk:
            return self._conv_forward(xq.double(), wq.double(), None).double()
        if self.groups > 1 or cin_g <= per_chunk:
            return self._conv_forward(xq, wq, None).double()
        acc = None
        for i in range(0, cin_g, per_chunk):
            part = self._conv_forward(xq[:, i:i + per_chunk], wq[:, i:i + per_chunk], None).double()
            acc = part if acc is None else acc + part
        return acc


class FakeQuantLinear(_QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, lin: nn.Linear, contract: Contract, per_channel: bool = True) -> "FakeQuantLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None)
        q._setup(lin, contract, per_channel)
        return q

    def forward(self, x):
        if self._exact_ok():
            return self._exact(x, self._int_linear, self.weight.shape[1])
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)

    @staticmethod
    def _int_linear(xq: torch.Tensor, wq: torch.Tensor, _, per_chunk: int) -> torch.Tensor:
        acc = None
        for i in range(0, wq.shape[1], per_chunk):
            part = F.linear(xq[..., i:i + per_chunk], wq[:, i:i + per_chunk]).double()
            acc = part if acc is None else acc + part
        return acc


def quant_layers(model: nn.Module) -> dict[str, _QuantMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _QuantMixin)}


def act_points(model: nn.Module) -> dict[str, FakeQuantAct]:
    """The tensor-level quantization points (``graph``), by point name."""
    return {m.point_name: m for m in model.modules() if isinstance(m, FakeQuantAct)}


def set_quant_enabled_(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every fake quantization of ``model`` (layers and points) on or off: off gives the float
    model the quantizer started from (BN folded)."""
    for m in model.modules():
        if isinstance(m, _ActQuant):
            m.enabled = enabled
    return model


def _swap(model: nn.Module, cfg: QuantConfig, contract: Contract) -> tuple[dict, dict]:
    swapped, floats = {}, {}
    for name, mod in list(model.named_modules()):
        if name in cfg.skip_layers:
            floats[name] = "skip_layers"
            continue
        if type(mod) is nn.Conv2d:
            swapped[name] = FakeQuantConv2d.from_float(mod, contract, cfg.per_channel)
        elif type(mod) is nn.Linear:
            swapped[name] = FakeQuantLinear.from_float(mod, contract, cfg.per_channel)
        elif isinstance(mod, _UNSUPPORTED) or (type(mod) not in (nn.Conv2d, nn.Linear)
                                                and isinstance(mod, (nn.Conv2d, nn.Linear))):
            floats[name] = f"{type(mod).__name__} is not quantized by edgecompress; kept float"
            warnings.warn(f"layer {name!r} ({type(mod).__name__}) cannot be quantized; it stays float",
                          UserWarning, stacklevel=3)
    for name, q in swapped.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, q)
    return swapped, floats


def _calibrate(model: nn.Module, layers: dict, cfg: QuantConfig, calib_data, progress: bool) -> int:
    for i, (name, q) in enumerate(layers.items()):
        q.observer = Observer(cfg.method_for(name), cfg.percentile, seed=cfg.seed + i)
    seen = 0
    try:
        with torch.no_grad():
            it = tqdm(calib_data, total=cfg.calib_batches, desc="calibrate", disable=not progress, leave=False)
            for x, _ in it:
                if seen >= cfg.calib_batches:
                    break
                if not torch.is_tensor(x) or x.numel() == 0:
                    raise DataError("a calibration batch is empty; pass batches of at least one image")
                if x.is_floating_point() and not torch.isfinite(x).all():
                    raise DataError("the calibration data contains NaN/Inf; clean it (or use the training loader)")
                model(x)
                seen += 1
    except BaseException:
        for q in layers.values():
            q.observer = None
        raise
    if seen == 0:
        for q in layers.values():
            q.observer = None
        raise DataError("no calibration batches: pass non-empty train_data (or calib data) to quantize")
    return seen


def _finalize(layers: dict, cfg: QuantConfig) -> dict:
    stats = {}
    for name, q in layers.items():
        obs = q.observer
        symmetric = q.contract.act_scheme == "symmetric"
        lo, hi = obs.compute_range(q.contract, symmetric)
        scale, zp = range_to_qparams(lo, hi, q.contract, symmetric)
        q.act_scale.fill_(scale)
        q.act_zero_point.fill_(zp)
        q.act_range.copy_(torch.tensor([lo, hi]))
        spread = obs.stability(q.contract, symmetric, cfg.stability_splits)
        stats[name] = {"range": [lo, hi], "method": obs.method, "stability": spread,
                       "unstable": spread is not None and spread > cfg.stability_tol, "batches": obs.batches}
        q.observer = None
    return stats


@torch.no_grad()
def sensitivity(model: nn.Module, batches: list, metric: str = "sqnr", labels: bool = False) -> dict[str, float]:
    """Quantize one layer at a time (all others float, tensor points too) on an already calibrated
    model; per layer the output SQNR (dB, higher = less sensitive) or, with ``metric="top1"``, the
    top-1 drop vs float."""
    layers = quant_layers(model)
    points = list(act_points(model).values())
    prev = {n: q.enabled for n, q in layers.items()}
    prev_points = [p.enabled for p in points]
    try:
        for q in [*layers.values(), *points]:
            q.enabled = False
        ref = [model(x) for x, _ in batches]
        ref_acc = (sum((r.argmax(1) == y).sum().item() for r, (_, y) in zip(ref, batches))
                   / sum(len(y) for _, y in batches)) if metric == "top1" else None
        out = {}
        for name, q in layers.items():
            q.enabled = True
            ys = [model(x) for x, _ in batches]
            if metric == "top1":
                acc = sum((o.argmax(1) == y).sum().item() for o, (_, y) in zip(ys, batches)) / sum(len(y) for _, y in batches)
                out[name] = ref_acc - acc
            else:
                out[name] = sqnr_db(torch.cat(ref), torch.cat(ys))
            q.enabled = False
    finally:
        for n, q in layers.items():
            q.enabled = prev[n]
        for p, e in zip(points, prev_points):
            p.enabled = e
    return out


def _residual_points(model: nn.Module, cfg: QuantConfig, contract: Contract, calib_data) -> tuple[dict, str]:
    """The ``graph`` pass when the config (or the contract's default) asks for it; (points, note)."""
    from edgecompress.quantize.graph import insert_residual_points_

    wanted = cfg.residual_points if cfg.residual_points is not None else contract.name == "onnx"
    if not wanted:
        return {}, f"off (residual_points={cfg.residual_points}, contract {contract.name!r})"
    example = next((x for x, _ in calib_data), None)
    if not torch.is_tensor(example) or example.numel() == 0:
        return {}, "no example batch to trace the model with"
    points, reason = insert_residual_points_(model, contract, example[:2], (_ActQuant,), FakeQuantAct)
    if reason is not None:
        if reason != "no residual add in the model":
            warnings.warn(f"inputs of convs/linears quantized only: {reason}; onnxruntime will run the residual "
                          "adds (and the convs that feed them) in float", UserWarning, stacklevel=3)
        return {}, reason
    return points, f"{len(points)} tensors around residual adds quantized (QLinearAdd in onnxruntime)"


def quantize_(model: nn.Module, cfg: QuantConfig, calib_data, *, target: str | None = None,
              scheme: str | None = None, progress: bool = True) -> dict:
    """Fold BN, swap Conv2d/Linear for fake-quant versions under ``target``'s contract (or a generic
    ``scheme``), calibrate on ``cfg.calib_batches`` batches of ``calib_data``, apply the float
    fallback. In place; returns the report, whose ``spec`` is the exporters' metadata."""
    contract = resolve_contract(target, cfg.scheme or scheme)
    model.eval()
    if isinstance(calib_data, collections.abc.Iterator):  # one-shot: keep the batches we read
        calib_data = [b for _, b in zip(range(max(cfg.calib_batches, 2)), calib_data)]
    folded = fold_bn_(model)
    layers, floats = _swap(model, cfg, contract)
    if not layers:
        raise ConfigError("no Conv2d/Linear layer to quantize (all skipped or unsupported); check skip_layers")
    points, graph_note = _residual_points(model, cfg, contract, calib_data)
    tied = {n: q.input_point.point_name for n, q in layers.items() if q.input_point is not None}
    observed = {**{n: q for n, q in layers.items() if n not in tied}, **points}
    seen = _calibrate(model, observed, cfg, calib_data, progress)
    stats = _finalize(observed, cfg)
    for n, q in layers.items():
        if n in tied:
            q._sync_input()
            stats[n] = {**stats[tied[n]], "input_point": tied[n]}
    sens = None
    if cfg.fallback_layers:
        batches = []
        for x, y in calib_data:
            batches.append((x, y))
            if len(batches) >= min(2, cfg.calib_batches):
                break
        sens = sensitivity(model, batches)
        for name in sorted(sens, key=sens.get)[: cfg.fallback_layers]:
            layers[name].enabled = False
            floats[name] = f"sensitivity fallback (output SQNR {sens[name]:.1f} dB when quantized alone)"
    spec_layers = {}
    for name, q in layers.items():
        st = stats[name]
        spec_layers[name] = {
            "type": "conv" if isinstance(q, nn.Conv2d) else "linear",
            "float": not q.enabled,
            "act": {"scale": q.act_scale.item(), "zero_point": int(q.act_zero_point.item()),
                    "qmin": contract.act_qmin, "qmax": contract.act_qmax, "range": st["range"],
                    "method": st["method"], "stability": st["stability"], "unstable": st["unstable"]},
            "weight": {"scales": q.w_scale.tolist(), "axis": 0, "granularity": q.w_granularity,
                       "qmin": W_QMIN, "qmax": W_QMAX, "groups": getattr(q, "groups", 1)},
        }
        if not q.enabled:
            spec_layers[name]["reason"] = floats[name]
        if name in tied:
            spec_layers[name]["act"]["input_point"] = tied[name]
    spec_tensors = {name: {"scale": p.act_scale.item(), "zero_point": int(p.act_zero_point.item()),
                           "qmin": contract.act_qmin, "qmax": contract.act_qmax, "range": stats[name]["range"],
                           "method": stats[name]["method"], "stability": stats[name]["stability"],
                           "unstable": stats[name]["unstable"]} for name, p in points.items()}
    # a tied layer reads its point's range: the point is listed, not the same tensor twice
    unstable = [n for n, s in stats.items() if s["unstable"] and "input_point" not in s]
    if unstable:
        warnings.warn(f"calibration ranges vary by more than {cfg.stability_tol:.0%} across calibration subsets "
                      f"for {unstable}; the accuracy may change from one calibration set to the next: use more "
                      "calibration batches, or percentile calibration (averaged per batch, the most stable here)",
                      UserWarning, stacklevel=2)
    spec = {"format": "edgecompress.quant.spec/1", "contract": contract.to_dict(),
            "scale_convention": "q = x * scale (ncnn multiplier)" if contract.convention == "multiply"
            else "q = x / scale + zero_point", "layers": spec_layers, "tensors": spec_tensors,
            "residual_points": {"applied": bool(points), "note": graph_note},
            "float_layers": {n: r for n, r in floats.items()}}
    w_sqnr = {}
    for name, q in layers.items():
        w_sqnr[name] = sqnr_db(q.weight.detach(), q.quant_weight().detach()) if q.enabled else None
    return {
        "scheme": contract.act_scheme, "contract": contract.name, "calibration": cfg.calibration,
        "calib_batches": seen, "bn_folded": folded, "unstable_layers": unstable, "sensitivity": sens,
        "residual_points": {"count": len(points), "note": graph_note},
        "float_layers": spec["float_layers"], "spec": spec,
        "layers": {n: {"act_scale": s["act"]["scale"], "act_zero_point": s["act"]["zero_point"],
                       "act_range": s["act"]["range"], "stability": s["act"]["stability"],
                       "w_scale_min": min(s["weight"]["scales"]), "w_scale_max": max(s["weight"]["scales"]),
                       "weight_sqnr_db": w_sqnr[n], "float": s["float"]}
                   for n, s in spec_layers.items()},
    }

