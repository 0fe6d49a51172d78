"""``edgecompress bench`` on a ResNet-20 artifact set: the shipped baseline as a torch.export
program, ONNX fp32 / int8 and ncnn fp32 / int8, timed at 1 and 2 threads, interleaved, twice, to
show how well two runs of the same artifact agree against the spread each reports.

    python benchmarks/bench_runtimes.py --data $EDGECOMPRESS_CIFAR10 --out benchmarks/results/bench

Budget: about 5 minutes on 2 CPU cores (export + calibration 1 min, top-1 on 2,000 images, two
timing rounds of 300 interleaved runs of 10 runners).
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.bench import bench
from edgecompress.export import get_exporter
from edgecompress.quantize import QuantConfig, quantize_


def export_set(model_name: str, data, folder: Path) -> Path:
    """Float torch/ONNX/ncnn and int8 ONNX/ncnn artifacts of the shipped model in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    train, _ = ec.cifar10_loaders(data, batch_size=64, train_subset=512, test_subset=100)
    model = ec.load_pretrained(model_name).eval()
    x = (torch.zeros(1, 3, 32, 32),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch", "onnx", "ncnn"):
            get_exporter(name).export(model, x, folder)
        for name, contract in (("ncnn-int8", "ncnn"), ("onnx-int8", "onnx")):
            q = copy.deepcopy(model)
            quantize_(q, QuantConfig(calib_batches=8), train, target=contract, progress=False)
            get_exporter(name).export(q, x, folder)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--set", default="runs/bench_set", help="where the artifact set is written")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--top1", type=int, default=2000, help="test images for each artifact's top-1")
    ap.add_argument("--out", default="benchmarks/results/bench")
    args = ap.parse_args(argv)
    folder = export_set(args.model, args.data, Path(args.set))
    _, test = ec.cifar10_loaders(args.data, batch_size=100, test_subset=args.top1, seed=0)
    threads = tuple(int(t) for t in args.threads.split(","))
    out = Path(args.out)
    tables = []
    for i in range(2):
        t = bench([folder], threads=threads, warmup=30, iters=args.iters, top1_data=test if i == 0 else None,
                  memory=i == 0, log=print)
        tables.append(t)
    first, second = tables
    for r, r2 in zip(first.rows, second.rows):
        r2["top1"], r2["peak_mem_mb"] = r["top1"], r["peak_mem_mb"]
    files = first.save(out, stem=args.model)
    second.save(out, stem=f"{args.model}_repeat")
    lines = ["| artifact | threads | median run 1 | median run 2 | difference | p10-p90 spread (run 1) | within |",
             "|---|---|---|---|---|---|---|"]
    within = []
    for a, b in zip(first.rows, second.rows):
        diff, spread = abs(a["ms_median"] - b["ms_median"]), a["ms_p90"] - a["ms_p10"]
        within.append(diff <= spread)
        lines.append(f"| {a['artifact']} | {a['threads']} | {a['ms_median']:.3f} | {b['ms_median']:.3f} | {diff:.3f} | "
                     f"{spread:.3f} | {'yes' if diff <= spread else 'NO'} |")
    (out / f"{args.model}_repeatability.md").write_text("\n".join(lines) + "\n")
    print(first.to_markdown())
    print("\n".join(lines))
    print(json.dumps({"rows": len(first.rows), "repeat_within_spread": f"{sum(within)}/{len(within)}",
                      "files": [str(p) for p in files.values()]}))
    return 0 if all(within) else 1


if __name__ == "__main__":
    raise SystemExit(main())
