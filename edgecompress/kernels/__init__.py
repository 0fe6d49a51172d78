"""int8 and sparse convolutions from ``cpp_kernels/`` (AMX / AVX-512 VNNI / AVX2 / portable C++, CUDA
when a GPU is present) as ``torch.ops.edgecompress`` ops, the modules built on them, and the converter
that turns a quantized / sparsified model into one that runs them (``compress(..., target="torch")``).

>>> from edgecompress.kernels import ops, convert_to_kernels
>>> ops.load()                                    # doctest: +SKIP
'amx'
>>> fast = convert_to_kernels(qmodel)             # doctest: +SKIP

Nothing is compiled at import; the first op call builds (or reuses) the cached library.
"""

from edgecompress.kernels import ops
from edgecompress.kernels.convert import convert_to_kernels
from edgecompress.kernels.modules import Int8Conv2d, Int8Linear, SparseConv2d

__all__ = ["ops", "convert_to_kernels", "Int8Conv2d", "Int8Linear", "SparseConv2d"]
