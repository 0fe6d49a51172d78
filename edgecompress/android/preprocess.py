"""NumPy reference of the Android demo's preprocessing and scoring.

The app (``android_demo/app/src/main/cpp/core/ec_core.cpp``) turns a photo into the model's input
in two steps, and this module does the same in NumPy, operation for operation in float32, so that
the C++ core can be tested against it (``tests/test_android_native.py``):

1. **Resize** the 8-bit image to the model's ``width x height`` bilinearly with half-pixel centres:
   ``src = (dst + 0.5) * in / out - 0.5``, clamped to ``[0, in - 1]``, no antialiasing (the
   coordinate mapping of OpenCV ``INTER_LINEAR`` and ``torch.nn.functional.interpolate(...,
   mode="bilinear", align_corners=False)``). Interpolated values stay float; equal sizes copy the
   pixels exactly.
2. **Normalise** each model channel: ``(v - mean[c]*scale) / (std[c]*scale)`` in float32, with
   ``mean[c]*scale`` and ``std[c]*scale`` float32 products, giving planar CHW float32.

With the defaults (CIFAR-10 mean/std, scale 255, 32x32 RGB) a 32x32 image gives exactly the tensor
the project's CIFAR-10 loader (:class:`edgecompress.data.cifar10.ArrayLoader`) feeds the model.

Pixels come as uint8 ``HxWx3`` (RGB) or ``HxWx4`` (RGBA, e.g. an ``ARGB_8888`` Bitmap's memory), or
as Android ``int`` pixels ``HxW`` of ``0xAARRGGBB`` (``Bitmap.getPixels``); a leading batch axis is
allowed everywhere.

>>> import numpy as np
>>> x = preprocess(np.full((32, 32, 3), 128, np.uint8))
>>> x.shape, x.dtype
((3, 32, 32), dtype('float32'))
>>> preprocess(np.zeros((2, 45, 57, 4), np.uint8), {"width": 16, "height": 16}).shape
(2, 3, 16, 16)
>>> top_k(np.array([0.1, 0.7, 0.7, 0.2]), 3)
array([1, 2, 3])
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from edgecompress.errors import ConfigError

COLORS = ("RGB", "BGR")


@dataclass(frozen=True)
class InputSpec:
    """The ``"input"`` section of the app's ``model.json`` (the parts preprocessing uses)."""

    width: int = 32
    height: int = 32
    color: str = "RGB"
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    scale: float = 255.0

    def __post_init__(self):
        for k in ("width", "height"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"input {k} must be an integer >= 1, got {v!r}")
        if self.color not in COLORS:
            raise ConfigError(f"input color {self.color!r}; choose one of {', '.join(COLORS)}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (one per channel), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(m) for m in self.mean):
            raise ConfigError(f"mean must be finite, got {self.mean}")
        if not all(s > 0 and math.isfinite(s) for s in self.std) or not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"std and scale must be positive, got std={self.std} scale={self.scale}")

    @classmethod
    def from_model_json(cls, cfg: dict | str | os.PathLike | None) -> InputSpec:
        """From a model.json (its path, the whole dict, or just its ``"input"`` dict); missing keys
        take the CIFAR-10 defaults; ``None`` gives the defaults."""
        if cfg is None:
            return cls()
        if isinstance(cfg, (str, os.PathLike)):
            cfg = json.loads(Path(cfg).read_text())
        d = cfg.get("input", cfg)
        keys = ("width", "height", "color", "mean", "std", "scale")
        return cls(**{k: d[k] for k in keys if k in d})


def unpack_argb(pixels: np.ndarray) -> np.ndarray:
    """Android ``int`` pixels ``0xAARRGGBB`` (any integer dtype, shape ``(..., H, W)``) as uint8
    ``(..., H, W, 4)`` in R, G, B, A order."""
    p = np.asarray(pixels).astype(np.int64) & 0xFFFFFFFF
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF, (p >> 24) & 0xFF], axis=-1).astype(np.uint8)


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w) of half-pixel-centre sampling; w is the float32 weight of i1."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``(..., H, W, C)`` to ``(..., height, width, C)`` float32 (half-pixel
    centres, edge-clamped, no antialiasing; equal sizes return the values unchanged)."""
    p = np.asarray(img).astype(np.float32)
    y0, y1, wy = _axis(p.shape[-3], height)
    x0, x1, wx = _axis(p.shape[-2], width)
    wx = wx[:, None]
    rows0, rows1 = p[..., y0, :, :], p[..., y1, :, :]
    top = rows0[..., x0, :] + (rows0[..., x1, :] - rows0[..., x0, :]) * wx
    bottom = rows1[..., x0, :] + (rows1[..., x1, :] - rows1[..., x0, :]) * wx
    return top + (bottom - top) * wy[:, None, None]


def preprocess(pixels: np.ndarray, cfg: InputSpec | dict | str | os.PathLike | None = None) -> np.ndarray:
    """The model input of an image: float32 ``(3, height, width)``, or ``(N, 3, height, width)`` for
    a batch. ``pixels``: uint8 ``(..., H, W, 3|4)`` or integer ``(..., H, W)`` ARGB ints.
    ``cfg``: an :class:`InputSpec`, a model.json (path or dict) or its ``"input"`` dict, or None
    for the CIFAR-10 defaults."""
    spec = cfg if isinstance(cfg, InputSpec) else InputSpec.from_model_json(cfg)
    a = np.asarray(pixels)
    if a.dtype == np.uint8:
        if a.ndim not in (3, 4) or a.shape[-1] not in (3, 4):
            raise ConfigError(f"uint8 pixels must be (H, W, 3|4) or (N, H, W, 3|4), got shape {a.shape}")
    elif np.issubdtype(a.dtype, np.integer):
        if a.ndim not in (2, 3):
            raise ConfigError(f"ARGB int pixels must be (H, W) or (N, H, W), got shape {a.shape}")
        a = unpack_argb(a)
    else:
        raise ConfigError(f"pixels must be uint8 (H, W, C) or integer ARGB (H, W), got dtype {a.dtype}")
    if a.shape[-3] < 1 or a.shape[-2] < 1:
        raise ConfigError(f"the image is empty: shape {a.shape}")
    rgb = a[..., :3] if spec.color == "RGB" else a[..., 2::-1]
    v = resize_bilinear(rgb, spec.height, spec.width)
    mean = np.asarray(spec.mean, np.float32) * np.float32(spec.scale)
    std = np.asarray(spec.std, np.float32) * np.float32(spec.scale)
    out = (v - mean) / std
    return np.ascontiguousarray(np.moveaxis(out, -1, -3), dtype=np.float32)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores along the last axis, descending, ties to the lower index
    and NaN last (``numpy.argsort(-x, kind="stable")``), as the app's ``ec::top_k``."""
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k}")
    s = np.asarray(scores)
    return np.argsort(-s, axis=-1, kind="stable")[..., :k]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax along the last axis in float64, returned as float32 (as the app's ``ec::softmax``)."""
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
