"""Int8 post-training quantization, simulated in PyTorch with fake-quant modules."""

from edgecompress.quantize.fold import fold_bn_
from edgecompress.quantize.ptq import FakeQuantConv2d, FakeQuantLinear, QuantConfig, quantize_

__all__ = ["QuantConfig", "quantize_", "fold_bn_", "FakeQuantConv2d", "FakeQuantLinear"]
