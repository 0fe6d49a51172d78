"""Teacher-assistant chain vs direct distillation on CIFAR-10: the shipped ResNet-20 (teacher), an
assistant pruned with FPGM at ``--assistant-ratio`` and a student pruned at ``--student-ratio``
(both from the teacher). Chain: teacher -> assistant -> student; direct: teacher -> student, same
steps. Each stage's top-1 on the test images before and after its distillation.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/ta_chain.py --train-subset 10000 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgecompress.data import cifar10_loaders
from edgecompress.distill import DistillConfig, teacher_assistant_chain
from edgecompress.models import load_pretrained
from edgecompress.prune import PruneConfig, prune_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--assistant-ratio", type=float, default=0.3)
    ap.add_argument("--student-ratio", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/ta_chain")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, _ = cifar10_loaders(a.data, batch_size=128, train_subset=a.train_subset, seed=0)
    _, test = cifar10_loaders(a.data, eval_batch_size=500, test_subset=a.test_subset, seed=0)
    teacher = load_pretrained("resnet20").eval()
    x = (torch.randn(1, 3, 32, 32),)
    assistant, student = copy.deepcopy(teacher), copy.deepcopy(teacher)
    prune_(assistant, PruneConfig(method="fpgm", ratio=a.assistant_ratio), x)
    prune_(student, PruneConfig(method="fpgm", ratio=a.student_ratio), x)
    direct = copy.deepcopy(student)
    cfg = DistillConfig(epochs=a.epochs, lr=a.lr, progress=False)
    t0 = time.time()
    chain = teacher_assistant_chain(teacher, [assistant, student], train, test, cfg, log=lambda s: None)
    only = teacher_assistant_chain(teacher, [direct], train, test, cfg, names=["student (direct)"], log=lambda s: None)
    res = {"config": vars(a), "distill": cfg.to_dict(), "chain": chain, "direct": only[1:],
           "wall_seconds": round(time.time() - t0, 1)}
    (out / "ta_chain.json").write_text(json.dumps(res, indent=1))
    for s in chain + only[1:]:
        print(f"{s['stage']:>18}  params {s['params']:>7,}  top-1 {s.get('top1_before', float('nan')):.4f} -> {s['top1']:.4f}")


if __name__ == "__main__":
    main()
