"""Sensitivity analysis and float fallback on a model that plain int8 PTQ hurts (MobileNetV2-CIFAR:
depthwise convs and linear bottlenecks). For each contract (ncnn symmetric, onnx affine): plain
PTQ with every calibration method, then the best method with the k most sensitive layers
(output SQNR when quantized alone) kept in float, k in --fallback; top-1 on the test split, which
layers stayed float, and (--export) the ncnn int8 file of the fallback model re-run in ncnn.

    EDGECOMPRESS_CIFAR10=../shared/data/cifar10/cifar10-jpeg.tar.gz \
        python benchmarks/ptq_fallback.py --model mobilenetv2_x0_5 --export --out benchmarks/results/ptq
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from edgecompress.data import cifar10_loaders, cifar10_train_slice
from edgecompress.models import create_model, load_pretrained
from edgecompress.quantize import METHODS, QuantConfig, quantize_
from edgecompress.utils import predict, top1


def _load(model: str, weights: str | None) -> torch.nn.Module:
    if weights is None:
        return load_pretrained(model)
    m = create_model(model)
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        m.load_state_dict(load_file(weights))
    else:
        m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return m.eval()


def _ptq(base, cfg, calib, target, test, f_logits, labels):
    q = copy.deepcopy(base)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unstable-range warnings are in the report
        rep = quantize_(q, cfg, calib, target=target, progress=False)
    logits, _ = predict(q, test)
    row = {"top1": top1(logits, labels),
           "agreement_with_float": float((logits.argmax(1) == f_logits.argmax(1)).float().mean()),
           "float_layers": sorted(rep["float_layers"]),
           "unstable_layers": rep["unstable_layers"], "seconds": round(time.time() - t0, 1)}
    return q, rep, row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="mobilenetv2_x0_5")
    ap.add_argument("--weights", default=None, help="state_dict (.safetensors/.pt); default: the shipped weights")
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--fallback", default="1,2,4,8", help="comma-separated numbers of float layers to try")
    ap.add_argument("--contracts", default="ncnn,onnx")
    ap.add_argument("--methods", default=",".join(METHODS), help="calibration methods tried without fallback")
    ap.add_argument("--export", action="store_true", help="write and re-run the ncnn int8 file of the best fallback")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/ptq")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    _, test = cifar10_loaders(a.data, batch_size=a.batch, eval_batch_size=500, test_subset=a.test_subset)
    calib = cifar10_train_slice(a.data, a.calib_images, seed=0, batch_size=a.batch)
    base = _load(a.model, a.weights)
    f_logits, labels = predict(base, test)
    f_top1 = top1(f_logits, labels)
    ks = [int(k) for k in a.fallback.split(",") if k.strip()]
    report = {"model": a.model, "weights": a.weights or "shipped", "calib_images": a.calib_images,
              "test_images": len(labels), "threads": a.threads, "float_top1": f_top1, "contracts": {}}
    print(f"float top-1 {100 * f_top1:.2f}% on {len(labels)} images", flush=True)
    for target in a.contracts.split(","):
        rows = {}
        methods = a.methods.split(",")
        for method in methods:
            _, rep, rows[f"{method}/k=0"] = _ptq(base, QuantConfig(calibration=method, calib_batches=len(calib)),
                                                 calib, target, test, f_logits, labels)
            print(target, method, "k=0", json.dumps(rows[f"{method}/k=0"]), flush=True)
        best = max(methods, key=lambda m: rows[f"{m}/k=0"]["top1"])
        best_q, best_k = None, 0
        sens = None
        for k in ks:
            cfg = QuantConfig(calibration=best, calib_batches=len(calib), fallback_layers=k)
            q, rep, rows[f"{best}/k={k}"] = _ptq(base, cfg, calib, target, test, f_logits, labels)
            sens = rep["sensitivity"]
            print(target, best, f"k={k}", json.dumps(rows[f"{best}/k={k}"]), flush=True)
            if best_q is None or rows[f"{best}/k={k}"]["top1"] > rows[f"{best}/k={best_k}"]["top1"]:
                best_q, best_k = q, k
        entry = {"best_method": best, "rows": rows,
                 "sensitivity_sqnr_db": dict(sorted(sens.items(), key=lambda kv: kv[1])) if sens else None}
        if a.export and target == "ncnn" and best_q is not None:
            entry["ncnn_int8_export"] = _export(best_q, test, best_k)
            print("ncnn-int8 export", json.dumps(entry["ncnn_int8_export"]), flush=True)
        report["contracts"][target] = entry
    (out / f"{a.model}_fallback.json").write_text(json.dumps(report, indent=1))
    md = _markdown(report)
    (out / f"{a.model}_fallback.md").write_text(md)
    print(md)
    return 0


def _export(q, test, k) -> dict:
    """The fallback model through the ncnn int8 exporter, re-run in ncnn: float layers stay float."""
    from edgecompress.export import ExportConfig, get_exporter

    xs, ys = zip(*test)
    x, y = torch.cat(xs), torch.cat(ys)
    exp = get_exporter("ncnn-int8", ExportConfig(threads=torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = exp.export(q, (x[:1],), Path(tmp) / "m")
        res = exp.validate(q, paths, x, batch_size=100, raise_on_fail=False, labels=y)
    d, notes = res.to_dict(), exp.notes()
    return {"fallback_layers": k, "top1": d["top1"], "top1_agreement_with_simulation": d["top1_agreement"],
            "max_abs_diff": d["max_abs_diff"], "sqnr_db": d["sqnr_db"], "int8_layers": notes["int8_layers"],
            "float_layers_in_file": notes["float_layers"]}


def _markdown(r: dict) -> str:
    lines = [f"{r['model']}: float top-1 {100 * r['float_top1']:.2f}% ({r['test_images']} test images, "
             f"{r['calib_images']} calibration images)", ""]
    for target, e in r["contracts"].items():
        lines += [f"### {target} contract", "", "| calibration | float layers | top-1 | vs float | layers kept float |",
                  "|---|---|---|---|---|"]
        for key, row in e["rows"].items():
            method, k = key.split("/")
            lines.append(f"| {method} | {k[2:]} | {100 * row['top1']:.2f}% | {100 * (row['top1'] - r['float_top1']):+.2f} pt | "
                         f"{', '.join(row['float_layers']) or '-'} |")
        if "ncnn_int8_export" in e:
            x = e["ncnn_int8_export"]
            lines.append(f"\nncnn int8 file of the k={x['fallback_layers']} model, re-run in ncnn: top-1 "
                         f"{100 * x['top1']:.2f}%, agreement with the simulation {100 * x['top1_agreement_with_simulation']:.2f}%, "
                         f"{x['int8_layers']} int8 layers, float in the file: {', '.join(x['float_layers_in_file']) or '-'}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
