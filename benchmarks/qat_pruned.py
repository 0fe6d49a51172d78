"""QAT + KD on the pruned ResNet-20 (issue 5, acceptance 5). The student is the FPGM 50%-MACs
ResNet-20 fine-tuned with KD by ``benchmarks/kd_vs_ce.py --mode kd`` (its checkpoint); it is
quantized under the target's contract (PTQ, percentile calibration on 1024 training images), then
trained quantization-aware with KD from the unpruned model for ``--steps`` steps. Top-1 of float,
PTQ int8 and QAT int8 (simulated) on the 10,000 test images.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/qat_pruned.py --student runs/kd_vs_ce/kd/last.pt --target ncnn --steps 390
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgecompress.data import cifar10_loaders, cifar10_train_slice
from edgecompress.distill import DistillConfig
from edgecompress.models import load_pretrained
from edgecompress.prune import PruneConfig, prune_
from edgecompress.quantize import QuantConfig, qat_, quantize_
from edgecompress.utils import predict, top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="checkpoint of the KD fine-tuned pruned model (last.pt/best.pt)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--target", default="ncnn")
    ap.add_argument("--steps", type=int, default=390, help="QAT steps of batch 128 (390 = one epoch)")
    ap.add_argument("--lr", type=float, default=1e-4, help="BN is folded: keep it small (see qat.py)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/qat_pruned")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = cifar10_loaders(a.data, batch_size=128)
    calib = cifar10_train_slice(a.data, 1024, seed=0, batch_size=128)
    teacher = load_pretrained("resnet20").eval()
    student = copy.deepcopy(teacher)
    prune_(student, PruneConfig(method="fpgm", macs_target=0.5), (torch.randn(1, 3, 32, 32),))  # as kd_vs_ce.py
    state = torch.load(a.student, weights_only=True, map_location="cpu")
    student.load_state_dict(state.get("model", state))
    student.eval()
    res = {"target": a.target, "student": a.student, "teacher_top1": top1(*predict(teacher, test))}
    res["float_top1"] = top1(*predict(student, test))
    q = copy.deepcopy(student)
    rep = quantize_(q, QuantConfig(calibration="percentile", calib_batches=8), calib, target=a.target, progress=False)
    res["contract"] = rep.get("contract")
    res["ptq_top1"] = top1(*predict(q, test))
    t0 = time.time()
    cfg = DistillConfig(epochs=1, max_steps=a.steps, lr=a.lr, weight_decay=0.0, progress=False)
    hist = qat_(q, teacher, train, None, cfg, log=lambda s: None)
    res["qat_seconds"] = round(time.time() - t0, 1)
    res["qat_top1"] = top1(*predict(q, test))
    res["qat_config"] = cfg.to_dict()
    res["qat_history"] = hist
    res["gap_ptq_pt"] = round(100 * (res["float_top1"] - res["ptq_top1"]), 2)
    res["gap_qat_pt"] = round(100 * (res["float_top1"] - res["qat_top1"]), 2)
    (out / f"{a.target}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "qat_history"}))


if __name__ == "__main__":
    main()
