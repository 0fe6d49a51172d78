"""Does distillation from the unpruned model help the pruned one? The shipped ResNet-20 is pruned
with FPGM to 50% of its MACs, then fine-tuned twice with the same epochs, learning rate, seed and
data order: once with Hinton KD from the unpruned model (α·CE + β·T²·KL, defaults α=0.1, β=0.9,
T=4), once with cross-entropy on the labels only. Top-1 on the 10,000 test images, plus each
student's functional similarity to the teacher.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/kd_vs_ce.py --mode kd --epochs 8 --threads 1 &
    EDGECOMPRESS_CIFAR10=... python benchmarks/kd_vs_ce.py --mode ce --epochs 8 --threads 1
    python benchmarks/kd_vs_ce.py --summarize

(the two modes may run side by side; ``--summarize`` joins their results).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgecompress.analysis import count_macs, count_params
from edgecompress.analysis.similarity import functional_similarity
from edgecompress.data import cifar10_loaders
from edgecompress.distill import DistillConfig, TrainConfig, fit
from edgecompress.models import load_pretrained
from edgecompress.prune import PruneConfig, prune_
from edgecompress.utils import predict, top1


def run(a) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = cifar10_loaders(a.data, batch_size=128, seed=a.seed)
    teacher = load_pretrained("resnet20").eval()
    x = (torch.randn(1, 3, 32, 32),)
    student = copy.deepcopy(teacher)
    rep = prune_(student, PruneConfig(method="fpgm", macs_target=0.5), x)
    t_logits, labels = predict(teacher, test)
    s0_logits, _ = predict(student, test)
    common = dict(epochs=a.epochs, lr=a.lr, weight_decay=5e-4, schedule="cosine", seed=a.seed, progress=False)
    t0 = time.time()
    if a.mode == "kd":
        cfg = DistillConfig(**common, temperature=a.temperature, alpha=a.alpha, beta=a.beta)
        hist = fit(student, train, test, cfg, teacher=teacher, checkpoint_dir=Path(a.ckpt) / "kd", resume=True)
    else:
        cfg = TrainConfig(**common)
        hist = fit(student, train, test, cfg, checkpoint_dir=Path(a.ckpt) / "ce", resume=True)
    s_logits, _ = predict(student, test)
    sim = functional_similarity({"teacher": t_logits, "student": s_logits}, reference="teacher")
    res = {"mode": a.mode, "config": cfg.to_dict(), "teacher_top1": top1(t_logits, labels),
           "pruned_top1_before_finetune": top1(s0_logits, labels), "top1": top1(s_logits, labels),
           "macs": count_macs(student, x), "macs_teacher": count_macs(teacher, x),
           "params": count_params(student), "params_teacher": count_params(teacher),
           "macs_removed_conv_linear": 1 - rep["macs_after"] / rep["macs_before"],
           "similarity_to_teacher": sim["pairs"]["teacher|student"], "history": hist,
           "wall_seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
           "test_images": len(labels)}
    (out / f"{a.mode}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "history"}))


def summarize(a) -> None:
    out = Path(a.out)
    kd, ce = (json.loads((out / f"{m}.json").read_text()) for m in ("kd", "ce"))
    lines = ["| fine-tune | epochs | top-1 | Δ vs CE | agreement with teacher | KL(teacher ‖ student) |",
             "|---|---|---|---|---|---|"]
    for r in (ce, kd):
        s = r["similarity_to_teacher"]
        lines.append(f"| {'KD (α=%g, β=%g, T=%g)' % (r['config']['alpha'], r['config']['beta'], r['config']['temperature']) if r['mode'] == 'kd' else 'CE only'} "
                     f"| {r['config']['epochs']} | {100 * r['top1']:.2f}% | {100 * (r['top1'] - ce['top1']):+.2f} pt "
                     f"| {100 * s['agreement']:.2f}% | {s['kl_mean']:.4f} |")
    head = (f"Teacher (unpruned ResNet-20) {100 * kd['teacher_top1']:.2f}%; FPGM to {kd['macs'] / kd['macs_teacher']:.1%} of "
            f"its MACs ({kd['params']:,} of {kd['params_teacher']:,} params), {100 * kd['pruned_top1_before_finetune']:.2f}% "
            f"before fine-tuning; {kd['test_images']} test images.")
    text = head + "\n\n" + "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["kd", "ce"])
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--data", default=None)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/kd_vs_ce")
    ap.add_argument("--ckpt", default="runs/kd_vs_ce", help="checkpoints (resumable)")
    a = ap.parse_args()
    if a.summarize:
        summarize(a)
    elif a.mode:
        run(a)
    else:
        ap.error("pass --mode kd|ce or --summarize")


if __name__ == "__main__":
    main()
