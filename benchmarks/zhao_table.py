"""Zhao et al. 2022's table on CIFAR-10 ResNet-20: the baseline, FPGM to 50% of its MACs, FPGM +
knowledge distillation from the baseline, and FPGM + KD + int8, each exported and re-run in ncnn
and onnxruntime: top-1 measured in the runtime on the 10,000 test images, MACs, params, artifact
bytes, and batch-1 latency from ``edgecompress bench`` (all artifacts interleaved in one run).

    python benchmarks/zhao_table.py --data $EDGECOMPRESS_CIFAR10                 # quick tier (8 KD epochs)
    python benchmarks/zhao_table.py --data ... --epochs 30 --lr 0.03 --round-to 8  # the README row, ~45 min
    python benchmarks/zhao_table.py --data ... --epochs 60 --model resnet56      # full tier (GPU)
    python benchmarks/zhao_table.py --data ... --epochs 30 --lr 0.03 --macs-target 1 \
        --drop-blocks layer1.1,layer1.2,layer2.1,layer2.2,layer3.2 --out benchmarks/results/zhao/blocks
        # depth instead of filters: 5 of 9 residual blocks removed (ncnn's cost per layer, not per MAC,
        # sets ResNet-20's batch-1 latency on x86: benchmarks/ncnn_latency_floor.py)

Budget, quick tier on the 2-core CPU: 8 KD epochs (~10 min with bf16 autocast), exports and
calibration (~1 min), top-1 of 8 artifacts on 10k images and 300 timed runs each (~6 min).
The KD run is checkpointed per epoch under ``--ckpt``, keyed by the teacher's weights and the
schedule, so an interrupted run resumes and a new baseline never reuses an old student.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.bench import bench
from edgecompress.distill import DistillConfig, fit
from edgecompress.export import get_exporter
from edgecompress.prune import PruneConfig, prune_
from edgecompress.prune.blocks import apply_dropped_blocks, drop_blocks
from edgecompress.prune.graph import layer_macs
from edgecompress.quantize import QuantConfig, quantize_
from edgecompress.utils import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ckpt_key import ckpt_key  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20", help="a zoo model with shipped CIFAR-10 weights")
    ap.add_argument("--macs-target", type=float, default=0.5,
                    help="keep this fraction of the MACs (FPGM, global; 1: no filter pruning)")
    ap.add_argument("--drop-blocks", default="",
                    help="remove residual blocks before FPGM: a count (chosen greedily by output KL on 8 training "
                         "batches) or comma-separated block names, e.g. layer1.1,layer2.2")
    ap.add_argument("--round-to", type=int, default=1,
                    help="keep a multiple of this many channels per layer (ncnn packs x86 channels by 8); 1: no rounding")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="threads for the latency rows")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--train-subset", type=int, default=None, help="(smoke runs) random subset of training images")
    ap.add_argument("--test-subset", type=int, default=None, help="(smoke runs) random subset of test images")
    ap.add_argument("--ckpt", default="runs/zhao")
    ap.add_argument("--work", default="runs/zhao_artifacts", help="where the exported artifacts are written")
    ap.add_argument("--out", default="benchmarks/results/zhao")
    ap.add_argument("--phase", choices=["all", "bench"], default="all",
                    help="bench: only time the artifacts already exported into --work (a fresh process)")
    a = ap.parse_args(argv)
    if not 0 < a.macs_target <= 1:
        ap.error(f"--macs-target {a.macs_target}: pass a fraction in (0, 1] (1: no filter pruning)")
    if a.macs_target == 1 and not a.drop_blocks.strip():
        ap.error("nothing to prune: pass --macs-target below 1 (FPGM) and/or --drop-blocks")
    if a.phase == "bench":
        return bench_phase(a)
    t0 = time.time()
    art = Path(a.work)
    train, test = ec.cifar10_loaders(a.data, batch_size=128, seed=a.seed, train_subset=a.train_subset,
                                     test_subset=a.test_subset)
    teacher = ec.load_pretrained(a.model).eval()
    x = (torch.zeros(1, 3, 32, 32),)
    pruned = copy.deepcopy(teacher)
    spec = a.drop_blocks.strip()
    if spec.isdigit():
        blocks = drop_blocks(pruned, int(spec), train)
    else:
        blocks = {"dropped": [b.strip() for b in spec.split(",") if b.strip()]}
        apply_dropped_blocks(pruned, blocks["dropped"])
    macs_teacher = sum(layer_macs(teacher, x).values())  # conv/linear MACs, as prune_ reports them
    if a.macs_target < 1:
        prep = prune_(pruned, PruneConfig(method="fpgm", macs_target=a.macs_target, round_to=a.round_to), x)
    else:
        prep = {"plan": None}
    prep["blocks_dropped"] = blocks["dropped"]
    prep["macs_before"], prep["macs_after"] = macs_teacher, sum(layer_macs(pruned, x).values())
    pruned.eval()
    cfg = DistillConfig(epochs=a.epochs, lr=a.lr, weight_decay=5e-4, schedule="cosine", seed=a.seed,
                        temperature=a.temperature, alpha=a.alpha, beta=a.beta, progress=False)
    student = copy.deepcopy(pruned)
    key_parts = (teacher, cfg.to_json(), prep["plan"]) + ((blocks["dropped"],) if blocks["dropped"] else ())
    ckpt = Path(a.ckpt) / f"{a.model}-{ckpt_key(*key_parts)}"
    hist = fit(student, train, test, cfg, teacher=teacher, checkpoint_dir=ckpt, resume=True)
    student.eval()
    calib, _ = ec.cifar10_loaders(a.data, batch_size=64, train_subset=512, test_subset=100, seed=a.seed)
    q = {}
    for contract in ("ncnn", "onnx"):
        q[contract] = copy.deepcopy(student)
        quantize_(q[contract], QuantConfig(calib_batches=8), calib, target=contract, progress=False)
    label = " + ".join(([f"{len(blocks['dropped'])} blocks dropped"] if blocks["dropped"] else [])
                       + (["FPGM"] if a.macs_target < 1 else []))
    stages = [("baseline", teacher, ("ncnn", "onnx")), (label, pruned, ("ncnn", "onnx")),
              (f"{label} + KD", student, ("ncnn", "onnx")), (f"{label} + KD + int8", None, ("ncnn-int8", "onnx-int8"))]
    folders = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model, exporters in stages:
            d = art / name.replace(" + ", "_").replace(" ", "_").lower()
            d.parent.mkdir(parents=True, exist_ok=True)
            for e in exporters:
                m = q[e.split("-")[0]] if model is None else model
                get_exporter(e).export(m, x, d)
            folders[name] = d
    torch_top1 = {"baseline": evaluate(teacher, test), label: evaluate(pruned, test),
                  f"{label} + KD": evaluate(student, test), f"{label} + KD + int8": evaluate(q["ncnn"], test)}
    stage = {"torch_top1": torch_top1, "folders": {k: str(v) for k, v in folders.items()}, "kd_history": hist,
             "blocks": blocks,
             "macs_kept_conv_linear": prep["macs_after"] / prep["macs_before"], "train_seconds": round(time.time() - t0, 1)}
    (art / "stage.json").write_text(json.dumps(stage, indent=1, default=str))
    # Time the artifacts in a fresh process, as `edgecompress bench` would, not in the one that has
    # just trained with torch's OpenMP threads (the first in-process run gave p90s of 30-230 ms;
    # re-run alone with `--phase bench`).
    cmd = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]), "--phase", "bench"]
    return subprocess.run(cmd).returncode


def bench_phase(a) -> int:
    art = Path(a.work)
    stage = json.loads((art / "stage.json").read_text())
    folders = {k: Path(v) for k, v in stage["folders"].items()}
    _, test = ec.cifar10_loaders(a.data, batch_size=128, seed=a.seed, train_subset=a.train_subset,
                                 test_subset=a.test_subset)
    out = Path(a.out)
    table = bench(list(folders.values()), threads=(a.threads,), warmup=30, iters=a.iters, top1_data=test,
                  memory=False, log=print)
    table.save(out, stem=f"{a.model}_bench")
    rows = []
    base_ncnn = None
    for name, d in folders.items():
        rs = [r for r in table.rows if r["artifact"].startswith(d.name + "/")]
        nc = next(r for r in rs if r["runtime"] == "ncnn")
        ort = next(r for r in rs if r["runtime"] == "onnxruntime")
        base_ncnn = base_ncnn or nc
        rows.append({"stage": name, "top1_torch": stage["torch_top1"][name], "top1_ncnn": nc["top1"],
                     "top1_onnxruntime": ort["top1"], "macs": nc["macs"], "params": nc["params"],
                     "ncnn_bytes": nc["size_bytes"], "onnx_bytes": ort["size_bytes"], "ncnn_ms": nc["ms_median"],
                     "ncnn_p90": nc["ms_p90"], "ort_ms": ort["ms_median"], "ort_p90": ort["ms_p90"],
                     "ncnn_speedup": base_ncnn["ms_median"] / nc["ms_median"],
                     "ncnn_size_ratio": base_ncnn["size_bytes"] / nc["size_bytes"]})
    head = ("| stage | top-1 (ncnn) | top-1 (onnxruntime) | MACs | params | ncnn bytes | ncnn ms p50/p90 | "
            "ORT ms p50/p90 | ncnn speed-up | ncnn size ratio |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['top1_ncnn']:.2%} | {r['top1_onnxruntime']:.2%} | {r['macs']:,} | "
                     f"{r['params']:,} | {r['ncnn_bytes']:,} | {r['ncnn_ms']:.3f} / {r['ncnn_p90']:.3f} | "
                     f"{r['ort_ms']:.3f} / {r['ort_p90']:.3f} | {r['ncnn_speedup']:.2f}x | {r['ncnn_size_ratio']:.2f}x |")
    dropped = stage.get("blocks", {}).get("dropped", [])
    pruning = (f"residual blocks removed: {', '.join(dropped)}; " if dropped else "") + (
        f"FPGM to {a.macs_target:.0%} of the MACs (channels a multiple of {a.round_to}); " if a.macs_target < 1 else "")
    note = (f"\n{a.model}, CIFAR-10 test ({len(test.images)} images); {pruning}"
            f"{stage['macs_kept_conv_linear']:.1%} of conv/linear MACs kept; KD {a.epochs} epochs "
            f"(T={a.temperature:g}, α={a.alpha:g}, β={a.beta:g}, lr {a.lr:g} cosine); int8: symmetric (ncnn) / affine "
            f"(onnxruntime) PTQ on 512 training images; latency batch 1, {a.threads} threads, {a.iters} runs, "
            f"interleaved (`edgecompress bench`, fresh process); top-1 measured in each runtime.\n")
    (out / f"{a.model}_table1.md").write_text("\n".join(lines) + "\n" + note)
    res = {"model": a.model, "rows": rows, "torch_top1": stage["torch_top1"], "kd_history": stage["kd_history"],
           "args": vars(a)}
    (out / f"{a.model}_table1.json").write_text(json.dumps(res, indent=1, default=str))
    print("\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
