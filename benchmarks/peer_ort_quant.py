"""Peer comparison: onnxruntime's own static quantization (``quantize_static``, QDQ, per-channel s8
weights, u8 activations, each of its calibration methods) against edgecompress's ONNX int8 (our
affine scales, ``target="onnx-int8"``), same model, same 512 calibration images, same 10,000 test
images; top-1 and latency measured in onnxruntime by ``edgecompress bench``.

    python benchmarks/peer_ort_quant.py --data $EDGECOMPRESS_CIFAR10

Budget on the 2-core CPU: about 6 minutes (entropy and percentile calibration histogram every
activation of the 512 images; top-1 of 5 models on 10k images; 300 timed runs each).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
from edgecompress.bench import bench
from edgecompress.export import get_exporter
from edgecompress.export.base import INPUT_NAME
from edgecompress.quantize import QuantConfig, quantize_


class _Reader:
    """onnxruntime's CalibrationDataReader over our calibration batches (one image per call, as
    onnxruntime's own examples feed it)."""

    def __init__(self, images: np.ndarray):
        self.images, self.i = images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {INPUT_NAME: self.images[self.i - 1: self.i]}

    def rewind(self):
        self.i = 0


def main(argv=None) -> int:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--calib", type=int, default=512, help="calibration images (random training images)")
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/peers")
    ap.add_argument("--work", default="runs/peer_ort_quant", help="where the ONNX models are written")
    a = ap.parse_args(argv)
    t0 = time.time()
    out = Path(a.out)
    folder = Path(a.work)
    folder.mkdir(parents=True, exist_ok=True)
    calib, test = ec.cifar10_loaders(a.data, batch_size=64, train_subset=a.calib, test_subset=a.test_subset, seed=0)
    model = ec.load_pretrained(a.model).eval()
    x = (torch.zeros(1, 3, 32, 32),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = get_exporter("onnx").export(model, x, folder)["onnx"]
        q = copy.deepcopy(model)
        qrep = quantize_(q, QuantConfig(), calib, target="onnx", progress=False)
        ours = get_exporter("onnx-int8").export(q, x, folder)["onnx"]
    images = np.concatenate([xb.numpy() for xb, _ in calib]).astype(np.float32)
    pre = folder / "model.pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    timings = {}
    peers = {}
    for method in ("MinMax", "Entropy", "Percentile"):
        dst = folder / f"ort_static_{method.lower()}.onnx"
        t = time.time()
        quantize_static(str(pre), str(dst), _Reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
        timings[method] = round(time.time() - t, 1)
        peers[method] = dst
    pre.unlink()
    table = bench([fp32, ours, *peers.values()], threads=tuple(int(t) for t in a.threads.split(",")), warmup=30,
                  iters=a.iters, top1_data=test, memory=False, log=print)
    table.save(out, stem="ort_quant")
    names = {fp32.name: "float (fp32 ONNX)", ours.name: f"edgecompress onnx-int8 ({qrep.get('calibration', 'default')} calibration)"}
    names.update({p.name: f"onnxruntime quantize_static, {m}" for m, p in peers.items()})
    lines = ["| model | top-1 | threads | median ms | p90 ms | bytes |", "|---|---|---|---|---|---|"]
    for r in table.rows:
        lines.append(f"| {names[Path(r['artifact']).name]} | {r['top1']:.2%} | {r['threads']} | {r['ms_median']:.3f} | "
                     f"{r['ms_p90']:.3f} | {r['size_bytes']:,} |")
    note = (f"\n{a.model}, {len(test.images)} CIFAR-10 test images, top-1 in onnxruntime; {len(images)} calibration "
            f"images for every method; quantize_static: QDQ, per-channel s8 weights, u8 activations, after "
            f"quant_pre_process; calibration seconds {timings}.\n")
    (out / "ort_quant.md").write_text("\n".join(lines) + "\n" + note)
    (out / "ort_quant.json").write_text(json.dumps({"rows": table.rows, "names": names, "calibration_seconds": timings,
                                                    "wall_seconds": round(time.time() - t0, 1)}, indent=1))
    print("\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
