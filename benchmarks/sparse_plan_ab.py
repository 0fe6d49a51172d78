"""Sparse conv plans, A/B in one process: for each ResNet-50 1x1/3x3 layer at batch 1, the CPU plan with
input channels in L1-sized blocks (``block_channels=0``) and the one-block plan (``block_channels=C``),
timed call by call against torch's dense fp32 conv. ``--order shuffled`` draws a new order every round;
``--order fixed`` always runs blocked, one-block, dense (the order effect on the ratios).

    python benchmarks/sparse_plan_ab.py --sparsities 0.5,0.7,0.9 --order shuffled
    python benchmarks/sparse_plan_ab.py --sparsities 0.9 --order fixed

Budget: ~40 s per sparsity on the 2-core CPU. Writes ``results/kernels/sparse_plan_ab_<order>.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from edgecompress.kernels import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import conv_shapes  # noqa: E402 - the same ResNet-50 layer list


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", default="0.9")
    ap.add_argument("--order", choices=["shuffled", "fixed"], default="shuffled")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/kernels")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.threads < 1:
        ap.error("--rounds and --threads must be >= 1")
    torch.set_num_threads(a.threads)
    if not ops.compiled():
        ap.error(f"the compiled kernels are needed (fallback reason: {ops.fallback_reason()})")
    from torchvision.models import resnet50

    E = torch.ops.edgecompress
    shapes = [s for s in conv_shapes(resnet50(), torch.randn(1, 3, 224, 224)) if s["k"] in (1, 3) and s["g"] == 1]
    rng = random.Random(0)
    rows = []
    for sp in (float(v) for v in a.sparsities.split(",")):
        for sh in shapes:
            c, oc, k, s, p, h = (sh[x] for x in ("c", "oc", "k", "s", "p", "h"))
            torch.manual_seed(0)
            conv = nn.Conv2d(c, oc, k, s, p).eval()
            with torch.no_grad():
                w = conv.weight
                w.mul_(w.abs() > w.abs().flatten().kthvalue(int(sp * w.numel())).values)
            rp, ci, v = ops.sparse_pack(conv.weight)
            x = torch.randn(1, c, h, h)
            geo = ([k, k], [s, s], [p, p], [1, 1])
            plans = {"blocked": E.sparse_plan(rp, ci, c, h, h, *geo), "one_block": E.sparse_plan(rp, ci, c, h, h, *geo, c)}
            fns = {n: (lambda pl=pl: E.sparse_conv2d_planned(x, pl, rp, v, conv.bias, *geo, 0)) for n, pl in plans.items()}
            fns["dense"] = lambda: conv(x)
            times = {n: [] for n in fns}
            with torch.no_grad():
                for f in fns.values():
                    f()
                    f()
                for _ in range(a.rounds):
                    order = list(fns)
                    if a.order == "shuffled":
                        rng.shuffle(order)
                    for n in order:
                        t0 = time.perf_counter()
                        fns[n]()
                        times[n].append(time.perf_counter() - t0)
            med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            rows.append({"shape": sh, "sparsity": sp, "ms": med, "blocks_differ": plans["blocked"].numel() != plans["one_block"].numel(),
                         "speedup_blocked": med["dense"] / med["blocked"], "speedup_one_block": med["dense"] / med["one_block"],
                         "one_block_vs_blocked": med["blocked"] / med["one_block"]})
            r = rows[-1]
            print(f"{sp:.0%} c{c} oc{oc} k{k} s{s} {h}: blocked x{r['speedup_blocked']:.2f} one block "
                  f"x{r['speedup_one_block']:.2f} (one/blocked {r['one_block_vs_blocked']:.2f})", flush=True)
    summary = {}
    for sp in sorted({r["sparsity"] for r in rows}):
        rs = [r for r in rows if r["sparsity"] == sp]
        k1 = [r["one_block_vs_blocked"] for r in rs if r["shape"]["k"] == 1 and r["blocks_differ"]]
        summary[f"{sp:.0%}"] = {
            "median_speedup_blocked": statistics.median(r["speedup_blocked"] for r in rs),
            "median_speedup_one_block": statistics.median(r["speedup_one_block"] for r in rs),
            "median_speedup_best_of_two": statistics.median(max(r["speedup_blocked"], r["speedup_one_block"]) for r in rs),
            "one_block_vs_blocked_1x1": {"min": min(k1), "median": statistics.median(k1), "max": max(k1)} if k1 else None}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sparse_plan_ab_{a.order}.json").write_text(json.dumps(
        {"order": a.order, "rounds": a.rounds, "threads": a.threads, "summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
