"""Which PyTorch model does an fp16 artifact reproduce? The ncnn-fp16 and onnx-fp16 exports of the
shipped ResNet-20, re-run in their runtimes on CIFAR-10 test images, against five references: fp32;
fp16-rounded weights (the exporters' ``validate`` reference); the same after BN folding (what pnnx
rounds); each plus fp16 rounding of every layer's output (fp16 storage); and torch running the
model in half. Answers whether a PyTorch fp16 simulation would predict the device's numbers.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/fp16_reference.py --images 1000 --out benchmarks/results/exporters/fp16_reference.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
from edgecompress.export import ExportConfig, get_exporter
from edgecompress.quantize import fold_bn_


@torch.no_grad()
def _rounded(model, x, fold: bool, storage: bool, weights_only: bool = False) -> torch.Tensor:
    m = copy.deepcopy(model).eval()
    if fold:
        fold_bn_(m)
    tensors = ([mod.weight for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
               if weights_only else [*m.parameters(), *m.buffers()])
    for t in tensors:
        if t.is_floating_point():
            t.copy_(t.half().float())
    if storage:  # every leaf module's output (and the input) stored in fp16, arithmetic in fp32
        for mod in m.modules():
            if not list(mod.children()):
                mod.register_forward_hook(lambda _m, _i, o: o.half().float())
        m.register_forward_pre_hook(lambda _m, i: (i[0].half().float(),))
    return m(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    _, test = ec.cifar10_loaders(a.data, batch_size=64, eval_batch_size=250, test_subset=a.images)
    x = torch.cat([b for b, _ in test])
    model = ec.load_pretrained(a.model)
    with torch.no_grad():
        refs = {"fp32": model(x),
                "fp16 weights": _rounded(model, x, False, False),
                "fp16 weights, BN folded first": _rounded(model, x, True, False),
                "fp16 conv/linear weights only, BN folded first (fp32 biases)": _rounded(model, x, True, False, True),
                "fp16 weights + fp16 storage": _rounded(model, x, False, True),
                "fp16 weights (BN folded) + fp16 storage": _rounded(model, x, True, True),
                "torch in half": copy.deepcopy(model).half()(x.half()).float()}
    report = {"model": a.model, "images": len(x), "threads": a.threads, "artifacts": {}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("ncnn-fp16", "onnx-fp16"):
            exp = get_exporter(name, ExportConfig(threads=a.threads))
            run = exp.load(exp.export(model, (x[:1],), Path(tmp) / name))
            got = torch.cat([torch.from_numpy(np.asarray(run(np.ascontiguousarray(x[s:s + 50].numpy()))))
                             for s in range(0, len(x), 50)]).float()
            rows = {}
            for ref_name, r in refs.items():
                d = (got - r).abs()
                rows[ref_name] = {"max_abs_diff": d.max().item(), "mean_abs_diff": d.mean().item(),
                                  "top1_agreement": (got.argmax(1) == r.argmax(1)).float().mean().item()}
                print(f"{name:10s} vs {ref_name:62s} max {d.max():.4f}  mean {d.mean():.5f}  "
                      f"agreement {rows[ref_name]['top1_agreement']:.4f}", flush=True)
            report["artifacts"][name] = rows
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
