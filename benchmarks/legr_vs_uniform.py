"""LeGR learned global ranking vs uniform ℓ2 pruning at the same MACs budget, shipped ResNet-20 on
CIFAR-10. Both get the same short distillation fine-tune; accuracy on the full test split.

The LeGR search scores each candidate on 1024 random *training* images without augmentation (never
the test split), after re-estimating BN statistics on 8 augmented training batches and ``--tau``
SGD steps on further training batches.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/legr_vs_uniform.py --ratio 0.4 --iterations 48 --steps 300
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgecompress.analysis import count_macs, count_params
from edgecompress.data import cifar10_loaders, cifar10_train_slice
from edgecompress.distill import DistillConfig, distill_
from edgecompress.models import load_pretrained
from edgecompress.prune import LegrConfig, PruneConfig, adaptive_bn_fitness, prune_
from edgecompress.utils import evaluate, seed_everything


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--ratio", type=float, default=0.4, help="uniform ℓ2 ratio that sets the MACs budget")
    ap.add_argument("--iterations", type=int, default=48)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="KD fine-tuning steps for both")
    ap.add_argument("--tau", type=int, default=50, help="SGD steps each LeGR candidate is fine-tuned before scoring")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/legr")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = cifar10_loaders(a.data, batch_size=128)
    val = cifar10_train_slice(a.data, 1024, seed=1, batch_size=256)
    base = load_pretrained("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    macs0 = count_macs(base, (x,))
    results = {}
    for name in ("uniform_l2", "legr"):
        t0 = time.time()
        m = copy.deepcopy(base)
        if name == "uniform_l2":
            rep = prune_(m, PruneConfig(method="l2", ratio=a.ratio), (x,))
        else:
            cfg = PruneConfig(method="legr", ratio=a.ratio,
                              legr=LegrConfig(iterations=a.iterations, population=a.population,
                                             sample=min(4, a.population)))
            rep = prune_(m, cfg, (x,), fitness=adaptive_bn_fitness(train, val, finetune_steps=a.tau))
        t_prune = time.time() - t0
        before = evaluate(m, test)
        distill_(m, base, train, None, DistillConfig(epochs=1, max_steps=a.steps, lr=a.lr, progress=False),
                 log=lambda s: None)
        after = evaluate(m, test)
        plan = rep["plan"]
        ratios = {k: round(1 - len(v) / plan["channels"][k], 4) for k, v in plan["kept"].items()}
        results[name] = {"top1_before_finetune": before, "top1": after, "macs": count_macs(m, (x,)),
                         "macs_frac": count_macs(m, (x,)) / macs0, "params": count_params(m),
                         "group_ratios": ratios, "prune_seconds": round(t_prune, 1),
                         "legr": {k: v for k, v in (rep["legr"] or {}).items() if k != "groups"} or None}
        print(name, json.dumps({k: v for k, v in results[name].items() if k not in ("group_ratios", "legr")}),
              flush=True)
    summary = {"ratio": a.ratio, "tau": a.tau, "iterations": a.iterations, "population": a.population, "kd_steps": a.steps,
               "lr": a.lr, "test_images": sum(len(y) for _, y in test), "threads": torch.get_num_threads(),
               "results": results}
    (out / f"resnet20_legr_vs_uniform_tau{a.tau}.json").write_text(json.dumps(summary, indent=1))
    u, lg = results["uniform_l2"], results["legr"]
    print(f"uniform l2: {u['top1']:.4f} at {u['macs_frac']:.3f} MACs; legr: {lg['top1']:.4f} at {lg['macs_frac']:.3f}")


if __name__ == "__main__":
    main()
