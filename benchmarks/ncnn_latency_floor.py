"""How far can pruning + int8 take ncnn's batch-1 latency on a 32x32 ResNet-20? FPGM to several
MACs targets (channels rounded to ncnn's x86 packing width of 8), each exported as ncnn fp32 and
ncnn int8 (our scales), all timed in one interleaved ``edgecompress bench`` run at 1 and 2 threads.
Latency here depends on the architecture only, so the pruned models are not fine-tuned: their top-1
is not measured (issue 6 acceptance 3 asks for a speed-up the trained Zhao-table model is judged on;
this shows what any model of that size could reach).

    python benchmarks/ncnn_latency_floor.py --data $EDGECOMPRESS_CIFAR10

Budget: ~4 minutes on the 2-core CPU (exports and calibration ~1 min, 300 timed runs of 24 runners).
Writes ``results/latency_floor/resnet20_ncnn.{csv,json,md}``, the latency-vs-MACs plot and a
speed-up table against the unpruned fp32 model at the same thread count.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import warnings
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.bench import bench
from edgecompress.export import get_exporter
from edgecompress.prune import PruneConfig, prune_
from edgecompress.quantize import QuantConfig, quantize_


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--macs-targets", default="1,0.5,0.35,0.25,0.15", help="fractions of the MACs kept (1: unpruned)")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--work", default="runs/latency_floor")
    ap.add_argument("--out", default="benchmarks/results/latency_floor")
    a = ap.parse_args(argv)
    try:
        targets = [float(v) for v in a.macs_targets.split(",")]
        threads = tuple(int(v) for v in a.threads.split(","))
    except ValueError:
        ap.error(f"--macs-targets {a.macs_targets!r} / --threads {a.threads!r}: pass comma lists, e.g. 1,0.5,0.25 and 1,2")
    if not targets or targets[0] != 1 or not all(0 < t <= 1 for t in targets) or min(threads) < 1:
        ap.error("--macs-targets must start with 1 (the unpruned reference) and lie in (0, 1]; --threads must be >= 1")
    calib, _ = ec.cifar10_loaders(a.data, batch_size=64, train_subset=256, test_subset=100, seed=0)
    base = ec.load_pretrained(a.model).eval()
    x = (torch.zeros(1, 3, 32, 32),)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    folders = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in targets:
            m = copy.deepcopy(base)
            if t < 1:
                prune_(m, PruneConfig(method="fpgm", macs_target=t, round_to=a.round_to), x)
            m.eval()
            d = work / f"macs{t:g}"
            if d.exists():
                shutil.rmtree(d)
            get_exporter("ncnn").export(m, x, d)
            q = copy.deepcopy(m)
            quantize_(q, QuantConfig(calib_batches=4), calib, target="ncnn", progress=False)
            get_exporter("ncnn-int8").export(q, x, d)
            folders.append(d)
    table = bench(folders, runtimes=("ncnn",), threads=threads, warmup=30, iters=a.iters, input_shape=(3, 32, 32),
                  memory=False, log=print)
    out = Path(a.out)
    table.save(out, stem=f"{a.model}_ncnn")
    base_ms = {r["threads"]: r["ms_median"] for r in table.rows
               if r["artifact"].startswith(folders[0].name + "/") and r["precision"] == "fp32"}
    lines = ["| MACs kept | MACs | params | precision | threads | ms median | ms p90 | speed-up vs unpruned fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    rows = sorted(table.rows, key=lambda r: (-r["macs"], r["precision"], r["threads"]))
    for r in rows:
        kept = r["macs"] / rows[0]["macs"]
        lines.append(f"| {kept:.1%} | {r['macs']:,} | {r['params']:,} | {r['precision']} | {r['threads']} | "
                     f"{r['ms_median']:.3f} | {r['ms_p90']:.3f} | {base_ms[r['threads']] / r['ms_median']:.2f}x |")
    note = (f"\n{a.model} pruned with FPGM (MACs target, channels a multiple of {a.round_to}), not fine-tuned; "
            f"ncnn fp32 and int8, batch 1, {a.iters} interleaved runs per row (`edgecompress bench`).\n")
    (out / f"{a.model}_ncnn_speedup.md").write_text("\n".join(lines) + "\n" + note)
    (out / f"{a.model}_ncnn_speedup.json").write_text(json.dumps({"rows": rows, "args": vars(a)}, indent=1))
    print("\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
