"""edgecompress: compress a trained PyTorch classifier for edge runtimes, with proof.

>>> import edgecompress as ec
>>> res = ec.compress(model, target="ncnn", train_data=train, val_data=val)   # doctest: +SKIP

Importing this package is light: onnxruntime, pnnx, ncnn, TensorRT and CUDA are touched only when
a stage that needs them runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "compress": "edgecompress.api",
    "CompressResult": "edgecompress.api",
    "BenchConfig": "edgecompress.api",
    "PruneConfig": "edgecompress.prune",
    "prune_": "edgecompress.prune",
    "DistillConfig": "edgecompress.distill",
    "TrainConfig": "edgecompress.distill",
    "distill_": "edgecompress.distill",
    "fit": "edgecompress.distill",
    "QuantConfig": "edgecompress.quantize",
    "quantize_": "edgecompress.quantize",
    "ExportConfig": "edgecompress.export",
    "list_targets": "edgecompress.targets",
    "get_target": "edgecompress.targets",
    "create_model": "edgecompress.models",
    "list_models": "edgecompress.models",
    "load_pretrained": "edgecompress.models",
    "cifar10_loaders": "edgecompress.data",
    "errors": None,
    "prune": None,
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod = _LAZY[name]
        value = importlib.import_module(f"edgecompress.{name}") if mod is None else getattr(importlib.import_module(mod), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")


def __dir__():
    return __all__
