"""Exporter acceptance on the shipped ResNet-20 and the CIFAR-10 test split: every artifact re-run
in its own runtime and compared with PyTorch (int8: with our simulation of the backend's
contract, and with float), top-1 on the labels, and batch-1 latency of int8 against fp32 in the
same runtime, interleaved call by call in one process.

    python benchmarks/export_check.py --data $EDGECOMPRESS_CIFAR10 --out benchmarks/results/exporters/resnet20.json
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
from edgecompress.bench import measure_interleaved
from edgecompress.export import ExportConfig, get_exporter
from edgecompress.quantize import QuantConfig, quantize_


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--calibration", default="percentile", help="minmax | percentile | entropy | mse")
    ap.add_argument("--calib-batches", type=int, default=8, help="batches of 64 training images")
    ap.add_argument("--fallback", type=int, default=0, help="keep the k most sensitive layers float")
    ap.add_argument("--only", default=None, help="comma list of artifacts (default: all seven)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = ec.cifar10_loaders(args.data, batch_size=64, eval_batch_size=500, train_subset=64 * args.calib_batches,
                                     test_subset=args.images)
    xs, ys = zip(*test)
    x, y = torch.cat(xs), torch.cat(ys)
    model = ec.load_pretrained(args.model)
    with torch.no_grad():
        flt = torch.cat([model(x[s:s + 500]) for s in range(0, len(x), 500)])
    report = {"model": args.model, "images": len(x), "threads": args.threads,
              "float_top1": (flt.argmax(1) == y).float().mean().item(), "artifacts": {}}
    jobs = [("ncnn", None), ("ncnn-fp16", None), ("ncnn-int8", "ncnn"), ("onnx", None), ("onnx-fp16", None),
            ("onnx-int8", "onnx"), ("onnx-int8-trt", "tensorrt")]
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {n for n, _ in jobs})
        if unknown:
            ap.error(f"--only: unknown artifacts {unknown}; choose from {[n for n, _ in jobs]}")
        jobs = [j for j in jobs if j[0] in wanted]
    qmodels = {}
    for contract in sorted({c for _, c in jobs if c}):
        q = copy.deepcopy(model)
        rep = quantize_(q, QuantConfig(calibration=args.calibration, calib_batches=args.calib_batches,
                                       fallback_layers=args.fallback), train, target=contract, progress=False)
        report.setdefault("quantization", {})[contract] = {
            "calibration": args.calibration, "calib_images": 64 * args.calib_batches,
            "float_layers": rep["float_layers"], "unstable_layers": rep["unstable_layers"]}
        qmodels[contract] = q
    runners = {}
    x1 = np.ascontiguousarray(x[:1].numpy())
    with tempfile.TemporaryDirectory() as tmp:
        for name, contract in jobs:
            exp = get_exporter(name, ExportConfig(threads=args.threads))
            m = qmodels[contract] if contract else model
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                paths = exp.export(m, (x[:1],), Path(tmp) / name)
            res = exp.validate(m, paths, x, batch_size=100, raise_on_fail=False, labels=y)
            run = exp.load(paths)
            entry = res.to_dict()
            entry.update(bytes=sum(p.stat().st_size for p in paths.values()), **exp.notes())
            report["artifacts"][name] = entry
            print(name, json.dumps({k: entry[k] for k in ("top1", "top1_agreement", "max_abs_diff", "sqnr_db")}), flush=True)
            if name in ("ncnn", "ncnn-int8", "onnx", "onnx-int8"):
                runners[name] = (lambda r=run: r(x1))
            if name == "ncnn-int8":  # ncnn's default int8 path (winograd on), for the record
                from edgecompress.export.ncnn import ncnn_net, ncnn_run

                net = ncnn_net(paths["ncnn_param"], paths["ncnn_bin"], args.threads, "fp32")
                runners["ncnn-int8 (winograd on)"] = (lambda n=net: ncnn_run(n, x1))
        # fp32 and int8 of each runtime, interleaved call by call (onnxruntime sessions do not spin)
        stats = measure_interleaved(runners, threads=args.threads, warmup=30, iters=args.iters) if runners else {}
    lat = {k: v.to_dict() for k, v in stats.items()}
    report["latency_batch1"] = lat
    report["speedup_int8_vs_fp32"] = {rt: lat[f32]["ms_median"] / lat[i8]["ms_median"]
                                      for rt, f32, i8 in (("ncnn", "ncnn", "ncnn-int8"), ("onnxruntime", "onnx", "onnx-int8"))
                                      if f32 in lat and i8 in lat}
    print(json.dumps({"latency_ms_median": {k: round(v["ms_median"], 3) for k, v in lat.items()},
                      "speedup": report["speedup_int8_vs_fp32"]}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
