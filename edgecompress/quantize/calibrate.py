"""Activation range calibration: minmax, percentile, entropy (KL) and MSE, plus a stability check.

An observer keeps, per calibration batch, the batch's min/max, its exact percentiles and a seeded
random sample of its values (``sample_per_batch``). Ranges are computed at the end from those, and
can be recomputed on subsets of the batches to measure how
stable it is (``stability``: relative spread of the threshold across ``stability_splits`` disjoint
subsets; a spread above ``stability_tol`` is flagged in the report).

- ``minmax``: the extreme values seen.
- ``percentile``: the p-th percentile of |x| (symmetric) or the (100-p, p) percentiles (affine),
  computed on each whole batch and averaged over batches.
- ``entropy``: TensorRT/ncnn2table KL search: a 2048-bin histogram of the non-zero |x|; for each candidate
  threshold (bins 128..2048) fold the tail into the last bin, quantize the distribution to 128
  levels, and keep the threshold whose quantized distribution is closest (KL) to the reference.
- ``mse``: the clipping threshold (a fraction of the range, searched on a grid) that minimises the
  mean squared quantization error of the sampled values under the contract's own rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgecompress.errors import DataError

METHODS = ("minmax", "percentile", "entropy", "mse")


HIST_BINS = 2048


def _kl_threshold_hist(hist: np.ndarray, absmax: float, levels: int = 128) -> float:
    """KL threshold search on a histogram of the non-zero |x| over [0, absmax] (exact zeros, e.g.
    from ReLU, are left out, as ncnn2table and TensorRT do)."""
    bins = len(hist)
    if hist.sum() == 0:
        return absmax
    width = absmax / bins
    best_t, best_kl = absmax, math.inf
    for i in range(levels, bins + 1):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()
        total = ref.sum()
        if total == 0:
            continue
        # merge the i bins into `levels` chunks, then spread each chunk's mass over its non-empty bins
        chunk = (np.arange(i) * levels) // i
        nz = hist[:i] != 0
        sums = np.bincount(chunk, weights=hist[:i], minlength=levels)
        counts = np.bincount(chunk, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, sums[chunk] / np.maximum(counts[chunk], 1), 0.0)
        qs = q.sum()
        if qs == 0:
            continue
        p = ref / total
        q = q / qs
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, (i + 0.5) * width
    return float(min(best_t, absmax))


def _mse_range(values: torch.Tensor, lo: float, hi: float, contract, symmetric: bool, grid: int = 80):
    from edgecompress.quantize.contracts import quantize_codes

    best, best_err = (lo, hi), math.inf
    for k in range(grid):
        a = 1.0 - 0.9 * k / grid  # clip at 100% .. 10% of the range
        clo, chi = lo * a, hi * a
        scale, zp = range_to_qparams(clo, chi, contract, symmetric)
        qmin, qmax = (contract.act_qmin, contract.act_qmax) if symmetric == (contract.act_scheme == "symmetric") \
            else ((-127, 127) if symmetric else (0, 255))
        q = quantize_codes(values, scale, zp, qmin, qmax, contract)
        deq = q / scale if contract.convention == "multiply" else (q - zp) * scale
        err = float(((deq - values) ** 2).mean())
        if err < best_err:
            best_err, best = err, (clo, chi)
    return best


def range_to_qparams(lo: float, hi: float, contract, symmetric: bool | None = None) -> tuple[float, int]:
    """(scale in the contract's convention, zero point) for the range [lo, hi] (widened to hold 0)."""
    symmetric = contract.act_scheme == "symmetric" if symmetric is None else symmetric
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        t = max(abs(lo), abs(hi), 1e-8)
        qmax = 127  # [-127, 127] carries the symmetric range for ncnn and TensorRT alike
        if contract.convention == "multiply":
            return float(np.float32(qmax) / np.float32(t)), 0
        return float(np.float32(t) / np.float32(qmax)), 0
    span = contract.act_qmax - contract.act_qmin
    scale = max((hi - lo) / span, 1e-8)
    zp = int(min(contract.act_qmax, max(contract.act_qmin, round(contract.act_qmin - lo / scale))))
    return float(np.float32(scale)), zp


class Observer:
    """Collects statistics of the tensors entering one quantized layer."""

    def __init__(self, method: str = "percentile", percentile: float = 99.99, sample_per_batch: int = 32768,
                 seed: int = 0):
        self.method, self.percentile, self.sample_per_batch = method, percentile, sample_per_batch
        self.gen = torch.Generator().manual_seed(seed)
        self.pcts: list[tuple[float, float, float]] = []
        self.hists: list[tuple[np.ndarray, float]] = []
        self.mins: list[float] = []
        self.maxs: list[float] = []
        self.samples: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        xf = x.detach().float().flatten()
        if xf.numel() == 0:
            return
        if not torch.isfinite(xf).all():
            raise DataError("calibration produced NaN/Inf activations; check the calibration data (no NaN/Inf "
                            "pixels, the same normalisation as training)")
        self.mins.append(xf.min().item())
        self.maxs.append(xf.max().item())
        if self.method == "percentile":  # exact per-batch percentiles (averaged over batches later)
            k = self.percentile / 100
            big = xf if xf.numel() <= 2**24 else xf[torch.randint(0, xf.numel(), (2**24,), generator=self.gen)]
            qs = torch.quantile(big, torch.tensor([1 - k, k]))
            self.pcts.append((qs[0].item(), qs[1].item(), torch.quantile(big.abs(), k).item()))
        if self.method == "entropy":  # full-tensor histogram of the non-zero |x| on this batch's range
            a = xf.abs()
            a = a[a != 0]
            amax = max(a.max().item(), 1e-12) if a.numel() else 1e-12
            self.hists.append((torch.histc(a, bins=HIST_BINS, min=0.0, max=amax).double().numpy(), amax))
        n = min(self.sample_per_batch, xf.numel())
        idx = torch.randint(0, xf.numel(), (n,), generator=self.gen)
        self.samples.append(xf[idx])

    @property
    def batches(self) -> int:
        return len(self.mins)

    def compute_range(self, contract, symmetric: bool, subset: slice | list[int] | None = None) -> tuple[float, float]:
        ids = range(self.batches) if subset is None else (subset if isinstance(subset, list) else range(self.batches)[subset])
        ids = list(ids)
        if not ids:
            raise DataError("a quantized layer saw no calibration data; pass calibration batches that reach every layer")
        lo, hi = min(self.mins[i] for i in ids), max(self.maxs[i] for i in ids)
        vals = torch.cat([self.samples[i] for i in ids])
        if self.method == "minmax":
            pass
        elif self.method == "percentile":
            p = np.array([self.pcts[i] for i in ids]).mean(0)
            if symmetric:
                lo, hi = max(lo, -p[2]), min(hi, p[2])
            else:
                lo, hi = p[0], p[1]
        elif self.method == "entropy":
            absmax = max(max(self.hists[i][1] for i in ids), 1e-8)
            hist = np.zeros(HIST_BINS)
            for i in ids:  # re-bin every batch histogram onto the common [0, absmax] grid by bin centres
                h, amax = self.hists[i]
                centres = (np.arange(HIST_BINS) + 0.5) * (amax / HIST_BINS)
                np.add.at(hist, np.minimum((centres / absmax * HIST_BINS).astype(int), HIST_BINS - 1), h)
            t = _kl_threshold_hist(hist, absmax)
            lo, hi = max(lo, -t), min(hi, t)
        elif self.method == "mse":
            lo, hi = _mse_range(vals, lo, hi, contract, symmetric)
        return float(lo), float(hi)

    def stability(self, contract, symmetric: bool, splits: int) -> float | None:
        """Relative spread (max - min) / median of the threshold over disjoint batch subsets."""
        if self.batches < splits or splits < 2:
            return None
        ts = []
        for s in range(splits):
            lo, hi = self.compute_range(contract, symmetric, list(range(s, self.batches, splits)))
            ts.append(max(abs(lo), abs(hi)) if symmetric else hi - lo)
        med = float(np.median(ts))
        return float((max(ts) - min(ts)) / med) if med > 0 else 0.0
