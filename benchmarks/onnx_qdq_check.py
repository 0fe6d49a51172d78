"""ONNX int8 QDQ export of the shipped ResNet-20 (quantized under the onnx contract, 8 calibration
batches of 64 training images): onnxruntime vs the PyTorch simulation on the first 2,000 CIFAR-10
test images, and which ops onnxruntime's optimiser turns the graph into.

    python benchmarks/onnx_qdq_check.py --data $EDGECOMPRESS_CIFAR10
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import edgecompress as ec
from edgecompress.export.onnx import ort_session
from edgecompress.export.onnx_qdq import export_onnx_qdq
from edgecompress.quantize import QuantConfig, quantize_


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args(argv)
    train, test = ec.cifar10_loaders(args.data, batch_size=64, eval_batch_size=500, train_subset=512,
                                     test_subset=args.images)
    q = copy.deepcopy(ec.load_pretrained("resnet20"))
    quantize_(q, QuantConfig(calib_batches=8), train, target="onnx", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx_qdq(q, (torch.randn(1, 3, 32, 32),), Path(tmp) / "r20.int8.onnx")
        sess = ort_session(path, 2)
        agree = n = correct = 0
        max_diff = 0.0
        with torch.no_grad():
            for x, y in test:
                a, b = q(x).numpy(), sess.run(None, {"input": x.numpy()})[0]
                agree += int((a.argmax(1) == b.argmax(1)).sum())
                correct += int((b.argmax(1) == y.numpy()).sum())
                max_diff = max(max_diff, float(np.abs(a - b).max()))
                n += len(y)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(node.op_type for node in onnx.load(so.optimized_model_filepath).graph.node)
    print(json.dumps({"images": n, "top1_agreement_with_simulation": agree / n, "onnxruntime_top1": correct / n,
                      "max_abs_logit_diff": max_diff, "optimized_ops": dict(ops)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
