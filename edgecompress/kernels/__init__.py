"""int8 and sparse convolutions from ``cpp_kernels/`` (AVX-512 VNNI / AVX2 / portable C++, CUDA when a
GPU is present) as ``torch.ops.edgecompress`` ops, the modules built on them, and the converter that
turns a quantized / sparsified model into one that runs them (``compress(..., target="torch")``).

>>> from edgecompress.kernels import ops, convert_to_kernels
>>> ops.load()                                    # doctest: +SKIP
'avx512_vnni'
>>> fast = convert_to_kernels(qmodel)             # doctest: +SKIP

Nothing is compiled at import; the first op call builds (or reuses) the cached library.
"""

from edgecompress.kernels import ops

__all__ = ["ops"]
