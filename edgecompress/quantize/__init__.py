"""Int8 quantization simulated in PyTorch under each backend's exact integer contract."""

from edgecompress.quantize.calibrate import METHODS, Observer
from edgecompress.quantize.contracts import CONTRACTS, Contract, fake_quant, quantize_codes, resolve_contract
from edgecompress.quantize.fold import fold_bn_
from edgecompress.quantize.fp16 import simulate_fp16_
from edgecompress.quantize.ptq import (
    FakeQuantAct,
    FakeQuantConv2d,
    FakeQuantLinear,
    QuantConfig,
    act_points,
    quant_layers,
    quantize_,
    sensitivity,
    set_quant_enabled_,
    weight_qparams,
)
from edgecompress.quantize.qat import qat_

__all__ = ["qat_", "simulate_fp16_", "QuantConfig", "quantize_", "sensitivity", "quant_layers", "weight_qparams", "fold_bn_",
           "FakeQuantConv2d", "FakeQuantLinear", "FakeQuantAct", "act_points", "set_quant_enabled_", "CONTRACTS", "Contract", "resolve_contract", "fake_quant",
           "quantize_codes", "METHODS", "Observer"]
