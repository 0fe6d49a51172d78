"""Peer comparison: Torch-Pruning's own FPGM (``tp.pruner.MetaPruner`` + ``FPGMImportance``) against
edgecompress's FPGM, same model (the shipped ResNet-20), same per-layer ratio, and then the same
fine-tune (Hinton KD from the unpruned model, same epochs, learning rate, seed and data order).
Top-1 on the CIFAR-10 test images before and after fine-tuning, MACs and params of each.

    python benchmarks/peer_torch_pruning.py --data $EDGECOMPRESS_CIFAR10            # quick tier
    python benchmarks/peer_torch_pruning.py --data ... --epochs 60                   # full tier (GPU)

Budget, quick tier on the 2-core CPU: 2 x 8 KD epochs, about 20 minutes with bf16 autocast.
Each fine-tune is checkpointed per epoch under ``--ckpt`` (keyed by teacher weights, pruner and
schedule), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.analysis import count_macs, count_params
from edgecompress.distill import DistillConfig, fit
from edgecompress.prune import PruneConfig, prune_
from edgecompress.utils import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ckpt_key import ckpt_key  # noqa: E402 - shared with the other benchmark scripts


def torch_pruning_fpgm(model: torch.nn.Module, ratio: float, x: torch.Tensor) -> torch.nn.Module:
    """Torch-Pruning's FPGM as its README shows it: MetaPruner, per-layer ratio, classifier kept."""
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.FPGMImportance(), pruning_ratio=ratio,
                                  ignored_layers=ignored)
    pruner.step()
    return model


def _plot(rows: list[dict], base_top1: float, path: Path, a) -> None:
    """Top-1 on the test images after each KD epoch, one line per pruner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows:
        ep = [0] + [h["epoch"] for h in r["history"]]
        ax.plot(ep, [r["top1_pruned"]] + [h["val_top1"] for h in r["history"]], "o-", ms=3, label=r["pruner"])
    ax.axhline(base_top1, ls="--", c="gray", label="unpruned")
    lo = min([base_top1] + [r["top1_pruned"] for r in rows] + [h["val_top1"] for r in rows for h in r["history"]])
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.set_xlabel("KD epoch")
    ax.set_ylabel("top-1")
    ax.set_title(f"{a.model}: FPGM ratio {a.ratio}, then the same KD fine-tune")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per layer group")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=None, help="(smoke runs)")
    ap.add_argument("--test-subset", type=int, default=None, help="(smoke runs)")
    ap.add_argument("--ckpt", default="runs/peer_torch_pruning")
    ap.add_argument("--out", default="benchmarks/results/peers")
    a = ap.parse_args(argv)
    t0 = time.time()
    train, test = ec.cifar10_loaders(a.data, batch_size=128, seed=a.seed, train_subset=a.train_subset,
                                     test_subset=a.test_subset)
    teacher = ec.load_pretrained(a.model).eval()
    x = torch.zeros(1, 3, 32, 32)
    students = {"edgecompress FPGM": copy.deepcopy(teacher), "Torch-Pruning FPGM": copy.deepcopy(teacher)}
    prune_(students["edgecompress FPGM"], PruneConfig(method="fpgm", ratio=a.ratio), (x,))
    torch_pruning_fpgm(students["Torch-Pruning FPGM"], a.ratio, x)
    cfg = DistillConfig(epochs=a.epochs, lr=a.lr, weight_decay=5e-4, schedule="cosine", seed=a.seed, temperature=4.0,
                        alpha=0.1, beta=0.9, progress=False)
    rows = []
    base = {"top1": evaluate(teacher, test), "macs": count_macs(teacher, (x,)), "params": count_params(teacher)}
    for name, s in students.items():
        s.eval()
        before = evaluate(s, test)
        ckpt = Path(a.ckpt) / f"{name.split()[0].lower()}-{ckpt_key(teacher, cfg.to_json(), a.ratio, a.train_subset)}"
        hist = fit(s, train, test, cfg, teacher=teacher, checkpoint_dir=ckpt, resume=True)
        s.eval()
        rows.append({"pruner": name, "macs": count_macs(s, (x,)), "params": count_params(s), "top1_pruned": before,
                     "top1": evaluate(s, test), "history": hist})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| pruner | MACs (of baseline) | params | top-1 after pruning | top-1 after KD |", "|---|---|---|---|---|",
             f"| baseline (unpruned) | {base['macs']:,} (100%) | {base['params']:,} | {base['top1']:.2%} | |"]
    for r in rows:
        lines.append(f"| {r['pruner']} | {r['macs']:,} ({r['macs'] / base['macs']:.1%}) | {r['params']:,} | "
                     f"{r['top1_pruned']:.2%} | {r['top1']:.2%} |")
    note = (f"\n{a.model}, ratio {a.ratio} per layer group (classifier kept), KD {a.epochs} epochs from the unpruned "
            f"model (T=4, α=0.1, β=0.9, lr {a.lr:g} cosine, seed {a.seed}), identical for both; "
            f"{len(test.images)} CIFAR-10 test images.\n")
    stem = f"torch_pruning_{a.model}" + ("_smoke" if a.train_subset or a.test_subset else "")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n" + note)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pruner", "macs", "params", "top1_pruned", "top1"])
        w.writerow(["baseline (unpruned)", base["macs"], base["params"], base["top1"], base["top1"]])
        for r in rows:
            w.writerow([r["pruner"], r["macs"], r["params"], r["top1_pruned"], r["top1"]])
    _plot(rows, base["top1"], out / f"{stem}.png", a)
    (out / f"{stem}.json").write_text(json.dumps({"baseline": base, "rows": rows, "args": vars(a),
                                                  "wall_seconds": round(time.time() - t0, 1)}, indent=1))
    print("\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
