"""Pruning sweeps: accuracy against remaining parameters/MACs, the breakpoint, efficiency metrics
and the accuracy-vs-params plot.

Breakpoint rule (stated, so it can be argued with): walking from 0% pruning upwards, the breakpoint
is the first ratio at which the *relative* accuracy lost since the previous ratio exceeds the
*relative* parameters removed in that step, ``(a_{i-1} - a_i)/a_0 > (p_{i-1} - p_i)/p_0``: from there
on accuracy falls faster than the model shrinks.

Efficiency metrics:
- Performance Efficiency (Malihi & Heidemann): ``PE = (w1·accuracy)/(w2·params)``; with accuracy
  in [0, 1] and params in millions (weights default 1).
- Accuracy/size efficacy (Khan & Mandal): top-1 (%) per megabyte of weights, size = non-zero
  parameters × 4 bytes (fp32; zeros of unstructured pruning cost nothing in a sparse format).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass
class SweepPoint:
    ratio: float
    top1: float
    params: int  # parameters of the pruned model (structured) or non-zeros (unstructured)
    macs: int
    top1_before_finetune: float | None = None

    @property
    def size_mb(self) -> float:
        return self.params * 4 / 1e6


def performance_efficiency(top1: float, params: int, w1: float = 1.0, w2: float = 1.0) -> float:
    return (w1 * top1) / (w2 * params / 1e6)


def size_efficacy(top1: float, params: int) -> float:
    return 100 * top1 / (params * 4 / 1e6)


def find_breakpoint(points: list[SweepPoint]) -> SweepPoint | None:
    pts = sorted(points, key=lambda p: p.ratio)
    if len(pts) < 2:
        return None
    a0, p0 = pts[0].top1, pts[0].params
    for prev, cur in zip(pts, pts[1:]):
        acc_loss = (prev.top1 - cur.top1) / max(a0, 1e-12)
        size_loss = (prev.params - cur.params) / max(p0, 1)
        if acc_loss > size_loss:
            return cur
    return None


def write_csv(points: list[SweepPoint], path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ratio", "top1", "top1_before_finetune", "params", "macs", "size_mb",
                    "performance_efficiency", "size_efficacy"])
        for p in sorted(points, key=lambda p: p.ratio):
            w.writerow([f"{p.ratio:.2f}", f"{p.top1:.4f}",
                        "" if p.top1_before_finetune is None else f"{p.top1_before_finetune:.4f}",
                        p.params, p.macs, f"{p.size_mb:.4f}", f"{performance_efficiency(p.top1, p.params):.4f}",
                        f"{size_efficacy(p.top1, p.params):.2f}"])
    os.replace(tmp, path)
    return path


def plot(points: list[SweepPoint], path: str | os.PathLike, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(points, key=lambda p: p.ratio)
    p0 = pts[0].params
    fig, (ax, axb) = plt.subplots(1, 2, figsize=(10, 4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    x = [100 * p.params / p0 for p in pts]
    ax.plot(x, [100 * p.top1 for p in pts], "o-", label="after fine-tuning")
    if all(p.top1_before_finetune is not None for p in pts):
        ax.plot(x, [100 * p.top1_before_finetune for p in pts], "x--", alpha=0.6, label="before fine-tuning")
    for p, xi in zip(pts, x):
        ax.annotate(f"{p.ratio:.0%}", (xi, 100 * p.top1), textcoords="offset points", xytext=(0, 6),
                    fontsize=7, ha="center")
    bp = find_breakpoint(pts)
    if bp is not None:
        ax.axvline(100 * bp.params / p0, color="red", ls=":", label=f"breakpoint: {bp.ratio:.0%} pruned")
    ax.set_xlabel("remaining parameters (% of original)")
    ax.set_ylabel("top-1 (%)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    # Performance Efficiency (Malihi & Heidemann): top-1 per million parameters, one bar per ratio
    axb.bar([f"{p.ratio:.0%}" for p in pts], [performance_efficiency(p.top1, p.params) for p in pts],
            color=["red" if bp is not None and p is bp else "tab:blue" for p in pts])
    axb.set_xlabel("pruned")
    axb.set_ylabel("performance efficiency (top-1 / M params)")
    axb.tick_params(axis="x", labelsize=7)
    axb.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
