"""PTQ of the shipped ResNet-20 on CIFAR-10: every calibration method x {affine (onnx contract),
symmetric (ncnn contract)}, per-channel int8 weights, <= 1024 calibration images drawn from the
training split, top-1 on the full test split; plus per-layer weight SQNR and unstable layers.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/ptq_table.py --calib-images 1024 --out benchmarks/results/ptq
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgecompress.data import cifar10_loaders, cifar10_train_slice
from edgecompress.models import load_pretrained
from edgecompress.quantize import METHODS, QuantConfig, quantize_
from edgecompress.utils import predict, top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/ptq")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    _, test = cifar10_loaders(a.data, batch_size=a.batch, test_subset=a.test_subset)
    calib = cifar10_train_slice(a.data, a.calib_images, seed=0, batch_size=a.batch)
    base = load_pretrained("resnet20").eval()
    f_logits, labels = predict(base, test)
    rows = {"float": {"top1": top1(f_logits, labels)}}
    print(json.dumps(rows), flush=True)
    for target in ("onnx", "ncnn"):
        for method in METHODS:
            t0 = time.time()
            q = copy.deepcopy(base)
            cfg = QuantConfig(calibration=method, calib_batches=len(calib))
            rep = quantize_(q, cfg, calib, target=target, progress=False)
            logits, _ = predict(q, test)
            key = f"{rep['scheme']}/{target}/{method}"
            rows[key] = {"top1": top1(logits, labels), "agreement_with_float": float((logits.argmax(1) == f_logits.argmax(1)).float().mean()),
                         "unstable_layers": rep["unstable_layers"],
                         "min_weight_sqnr_db": min(v["weight_sqnr_db"] for v in rep["layers"].values()),
                         "seconds": round(time.time() - t0, 1)}
            print(key, json.dumps(rows[key]), flush=True)
            if method == "entropy":
                (out / f"spec_{target}_{method}.json").write_text(json.dumps(rep["spec"], indent=1))
    summary = {"model": "resnet20 (shipped)", "calib_images": a.calib_images, "test_images": len(labels),
               "threads": torch.get_num_threads(), "rows": rows}
    (out / "resnet20_ptq.json").write_text(json.dumps(summary, indent=1))
    lines = ["| scheme (contract) | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for target, scheme in (("onnx", "affine"), ("ncnn", "symmetric")):
        cells = [f"{100 * rows[f'{scheme}/{target}/{m}']['top1']:.2f}%" for m in METHODS]
        lines.append(f"| {scheme} ({target}) | " + " | ".join(cells) + " |")
    lines.append(f"\nfloat: {100 * rows['float']['top1']:.2f}% ({len(labels)} test images, {a.calib_images} calibration images)")
    (out / "resnet20_ptq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
