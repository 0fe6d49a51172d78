"""Pruning sweep on the shipped ResNet-20 (CIFAR-10): prune at 0-90% in 10% steps, fine-tune each by
distillation from the unpruned model for a fixed step budget, record accuracy vs remaining
params/MACs, find the breakpoint, and write CSV + plot + JSON.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/prune_sweep.py --kind structured --steps 200 --out benchmarks/results/prune_sweep
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgecompress.analysis import count_macs, count_params
from edgecompress.analysis.sweep import SweepPoint, find_breakpoint, performance_efficiency, plot, size_efficacy, write_csv
from edgecompress.data import cifar10_loaders
from edgecompress.distill import DistillConfig, distill_
from edgecompress.models import load_pretrained
from edgecompress.prune import PruneConfig, prune_
from edgecompress.prune.unstructured import MagnitudePruner, SparsityConfig, sparsity_report
from edgecompress.utils import evaluate, seed_everything


def test_images(loader) -> int:
    return sum(len(y) for _, y in loader)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--kind", choices=["structured", "unstructured"], default="structured")
    ap.add_argument("--method", default="fpgm", help="structured criterion (fpgm, l1, l2, random)")
    ap.add_argument("--ratios", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--steps", type=int, default=200, help="KD fine-tuning steps (batch 128) per ratio")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/prune_sweep")
    ap.add_argument("--replot", default=None, metavar="JSON", help="redraw the plot of a saved sweep, and exit")
    a = ap.parse_args()
    if a.replot:
        saved = json.loads(Path(a.replot).read_text())
        pts = [SweepPoint(r["ratio"], r["top1"], r["params"], r["macs"], r["top1_before_finetune"]) for r in saved["points"]]
        kind = saved["kind"]
        plot(pts, Path(a.replot).with_suffix(".png"), title=f"ResNet-20 CIFAR-10, {kind} "
             f"{saved['method'] if kind == 'structured' else 'global magnitude'}, {saved['steps']} KD steps per point")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = cifar10_loaders(a.data, batch_size=128, test_subset=a.test_subset)
    base = load_pretrained("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    p0, m0 = count_params(base), count_macs(base, (x,))
    points, rows, t_all = [], [], time.time()
    for r in [float(s) for s in a.ratios.split(",")]:
        t0 = time.time()
        m = copy.deepcopy(base)
        if a.kind == "structured":
            prune_(m, PruneConfig(method=a.method, ratio=r), (x,))
            pruner = None
        else:
            pruner = MagnitudePruner(m, SparsityConfig(sparsity=r, scope="global"))
            pruner.set_sparsity(r)
        before = evaluate(m, test)
        if r > 0 and a.steps > 0:
            distill_(m, base, train, None, DistillConfig(epochs=1, max_steps=a.steps, lr=a.lr, progress=False),
                     log=lambda s: None)
        if pruner is not None:
            pruner.finalize_()
        acc = evaluate(m, test)
        if a.kind == "unstructured":
            rep = sparsity_report(m)
            params = count_params(m) - rep["numel"] + rep["nonzero"]
        else:
            params = count_params(m)
        pt = SweepPoint(r, acc, params, count_macs(m, (x,)), before)
        points.append(pt)
        rows.append({"ratio": r, "top1": acc, "top1_before_finetune": before, "params": params,
                     "params_frac": params / p0, "macs": pt.macs, "macs_frac": pt.macs / m0,
                     "performance_efficiency": performance_efficiency(acc, params),
                     "size_efficacy": size_efficacy(acc, params), "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    bp = find_breakpoint(points)
    name = f"resnet20_{a.kind}_{a.method if a.kind == 'structured' else 'magnitude'}"
    write_csv(points, out / f"{name}.csv")
    plot(points, out / f"{name}.png", title=f"ResNet-20 CIFAR-10, {a.kind} "
         f"{a.method if a.kind == 'structured' else 'global magnitude'}, {a.steps} KD steps per point")
    summary = {"kind": a.kind, "method": a.method, "steps": a.steps, "lr": a.lr, "test_images": test_images(test), "breakpoint_ratio": bp.ratio if bp else None,
               "breakpoint_rule": "first ratio where (a_prev - a)/a_0 > (p_prev - p)/p_0",
               "points": rows, "wall_seconds": round(time.time() - t_all, 1),
               "threads": torch.get_num_threads()}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    print(f"breakpoint: {bp.ratio if bp else None}; wrote {out / name}.csv/.png/.json")


if __name__ == "__main__":
    main()
