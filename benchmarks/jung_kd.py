"""Jung's two questions on the shipped ResNet-20 pruned with FPGM (CIFAR-10):

1. ``--part temperature``: KD from the unpruned model at T in {4, 10, 20} (same student, epochs,
   learning rate, seed and data order; α=0.1, β=0.9), top-1 and agreement with the teacher;
2. ``--part schedule``: one-shot vs iterative pruning to the same final ratio with the same total
   fine-tuning budget: one-shot prunes once then distils ``--epochs`` epochs; iterative prunes in
   ``--steps`` rounds, distilling ``--epochs / --steps`` epochs after each.

    python benchmarks/jung_kd.py --data $EDGECOMPRESS_CIFAR10 --part temperature   # quick tier ~20 min
    python benchmarks/jung_kd.py --data ... --part schedule                          # quick tier ~15 min
    python benchmarks/jung_kd.py --summarize

Budget: quick tier 4 KD epochs per run on the 2-core CPU (bf16 autocast); full tier ``--epochs 40``
on a GPU. Every run is checkpointed per epoch under ``--ckpt`` and resumes.
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
from edgecompress.analysis import count_macs
from edgecompress.analysis.similarity import functional_similarity
from edgecompress.distill import DistillConfig, fit
from edgecompress.prune import PruneConfig, prune_
from edgecompress.utils import predict, top1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ckpt_key import ckpt_key  # noqa: E402 - shared with the other benchmark scripts


def _result(name: str, student, teacher_logits, labels, test, x, hist, extra=None) -> dict:
    s_logits, _ = predict(student.eval(), test)
    sim = functional_similarity({"teacher": teacher_logits, "student": s_logits}, reference="teacher")
    return {"run": name, "top1": top1(s_logits, labels), "macs": count_macs(student, (x,)),
            "agreement_with_teacher": sim["pairs"]["teacher|student"]["agreement"],
            "kl_teacher_student": sim["pairs"]["teacher|student"]["kl_mean"], "history": hist, **(extra or {})}


def run(a) -> list[dict]:
    train, test = ec.cifar10_loaders(a.data, batch_size=128, seed=a.seed, train_subset=a.train_subset,
                                     test_subset=a.test_subset)
    teacher = ec.load_pretrained(a.model).eval()
    x = torch.zeros(1, 3, 32, 32)
    t_logits, labels = predict(teacher, test)
    common = dict(lr=a.lr, weight_decay=5e-4, schedule="cosine", seed=a.seed, alpha=0.1, beta=0.9, progress=False)
    ckpt = Path(a.ckpt)
    results = []
    if a.part == "temperature":
        for T in a.temperatures:
            s = copy.deepcopy(teacher)
            prune_(s, PruneConfig(method="fpgm", ratio=a.ratio), (x,))
            cfg = DistillConfig(epochs=a.epochs, temperature=T, **common)
            d = ckpt / f"T{T:g}-{ckpt_key(teacher, cfg.to_json(), a.ratio, a.train_subset)}"
            hist = fit(s, train, test, cfg, teacher=teacher, checkpoint_dir=d, resume=True)
            results.append(_result(f"KD T={T:g}", s, t_logits, labels, test, x, hist, {"temperature": T}))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "history"}), flush=True)
    else:
        s = copy.deepcopy(teacher)
        prune_(s, PruneConfig(method="fpgm", ratio=a.ratio), (x,))
        cfg = DistillConfig(epochs=a.epochs, temperature=4.0, **common)
        hist = fit(s, train, test, cfg, teacher=teacher, resume=True,
                   checkpoint_dir=ckpt / f"oneshot-{ckpt_key(teacher, cfg.to_json(), a.ratio, a.train_subset)}")
        results.append(_result("one-shot", s, t_logits, labels, test, x, hist, {"steps": 1}))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "history"}), flush=True)
        per_step = max(1, a.epochs // a.steps)
        s = copy.deepcopy(teacher)
        hists = []
        step_cfg = DistillConfig(epochs=per_step, temperature=4.0, **common)

        def finetune(model, step):  # distil after every pruning round; each round has its own checkpoint
            d = ckpt / f"iter{a.steps}-step{step}-{ckpt_key(teacher, step_cfg.to_json(), a.ratio, a.train_subset)}"
            hists.append(fit(model, train, test, step_cfg, teacher=teacher, checkpoint_dir=d, resume=True))

        prune_(s, PruneConfig(method="fpgm", ratio=a.ratio, schedule="iterative", steps=a.steps), (x,),
               finetune=finetune)
        results.append(_result(f"iterative ({a.steps} steps)", s, t_logits, labels, test, x, hists,
                               {"steps": a.steps, "epochs_per_step": per_step}))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "history"}), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    smoke = "_smoke" if a.train_subset or a.test_subset else ""
    meta = {"teacher_top1": top1(t_logits, labels), "teacher_macs": count_macs(teacher, (x,)), "args": vars(a),
            "test_images": len(labels)}
    (out / f"{a.part}{smoke}.json").write_text(json.dumps({**meta, "runs": results}, indent=1, default=str))
    return results


def summarize(a) -> str:
    out = Path(a.out)
    lines = []
    for part in ("temperature", "schedule"):
        p = out / f"{part}.json"
        if not p.exists():
            continue
        r = json.loads(p.read_text())
        lines += [f"\n{'KD temperature' if part == 'temperature' else 'One-shot vs iterative pruning'} "
                  f"(teacher {r['teacher_top1']:.2%}, FPGM ratio {r['args']['ratio']}, {r['args']['epochs']} KD epochs "
                  f"in total, {r['test_images']} test images)\n",
                  "| run | top-1 | MACs (of teacher) | agreement with teacher | KL(teacher ‖ student) |",
                  "|---|---|---|---|---|"]
        for x in r["runs"]:
            lines.append(f"| {x['run']} | {x['top1']:.2%} | {x['macs'] / r['teacher_macs']:.1%} | "
                         f"{x['agreement_with_teacher']:.2%} | {x['kl_teacher_student']:.4f} |")
    text = "\n".join(lines).strip() + "\n"
    (out / "summary.md").write_text(text)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["part", "run", "top1", "macs", "teacher_macs", "agreement_with_teacher", "kl_teacher_student"])
        for part in ("temperature", "schedule"):
            p = out / f"{part}.json"
            if p.exists():
                r = json.loads(p.read_text())
                for x in r["runs"]:
                    w.writerow([part, x["run"], x["top1"], x["macs"], r["teacher_macs"], x["agreement_with_teacher"],
                                x["kl_teacher_student"]])
    _plot(out)
    return text


def _plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = out / "schedule.json"
    if p.exists():  # one-shot vs iterative: top-1 and agreement with the teacher, side by side
        r = json.loads(p.read_text())
        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = [x["run"] for x in r["runs"]]
        xs = range(len(names))
        ax.bar([i - 0.2 for i in xs], [x["top1"] for x in r["runs"]], 0.4, label="top-1")
        ax.bar([i + 0.2 for i in xs], [x["agreement_with_teacher"] for x in r["runs"]], 0.4, label="agreement with teacher")
        ax.axhline(r["teacher_top1"], ls="--", c="gray", label="teacher top-1")
        ax.set_xticks(list(xs), names)
        lo = min(min(x["top1"], x["agreement_with_teacher"]) for x in r["runs"])
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(out / "schedule.png", dpi=120)
        plt.close(fig)
    p = out / "temperature.json"
    if not p.exists():
        return
    r = json.loads(p.read_text())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ts = [x["temperature"] for x in r["runs"]]
    ax.plot(ts, [x["top1"] for x in r["runs"]], "o-", label="student top-1")
    ax.axhline(r["teacher_top1"], ls="--", c="gray", label="teacher")
    ax.set_xlabel("KD temperature T")
    ax.set_ylabel("top-1")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "temperature.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["temperature", "schedule"])
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="rounds of the iterative schedule")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[4.0, 10.0, 20.0])
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=None, help="(smoke runs)")
    ap.add_argument("--test-subset", type=int, default=None, help="(smoke runs)")
    ap.add_argument("--ckpt", default="runs/jung")
    ap.add_argument("--out", default="benchmarks/results/jung")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.summarize:
        print(summarize(a))
    elif a.part:
        run(a)
        print(f"{time.time() - t0:.0f} s")
    else:
        ap.error("pass --part temperature|schedule, or --summarize")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
