"""End to end on the kernels: compress the shipped ResNet-20 for ``target="torch"`` (FPGM pruning,
KD fine-tuning, int8 under the torch contract), then on the full CIFAR-10 test split compare the
kernel model with the quantization simulation (top-1 agreement, logits) and time it against the
float models in torch (interleaved, same threads; float timed with denormals flushed and as is).

    python benchmarks/kernels_e2e.py --data $EDGECOMPRESS_CIFAR10 --epochs 2 --out benchmarks/results/kernels
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.utils import predict

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the sibling bench_kernels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--epochs", type=int, default=2, help="distillation epochs after pruning")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--ratio", type=float, default=0.3, help="FPGM pruning ratio")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/kernels")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    train, test = ec.cifar10_loaders(args.data, batch_size=128, eval_batch_size=500, train_subset=args.train_subset)
    model = ec.load_pretrained("resnet20")
    t0 = time.time()
    res = ec.compress(model, target="torch", train_data=train, val_data=test,
                      prune=ec.PruneConfig(method="fpgm", ratio=args.ratio),
                      distill=ec.DistillConfig(epochs=args.epochs) if args.epochs else False,
                      bench=False, progress=False)
    wall = time.time() - t0
    kern, qmodel, student = res.kernel_model, res.quantized_model, res.model
    sim_logits, labels = predict(qmodel, test)
    k_logits, _ = predict(kern, test)
    f_logits, _ = predict(student, test)
    o_logits, _ = predict(model.eval(), test)
    acc = lambda z: (z.argmax(1) == labels).float().mean().item()  # noqa: E731
    out = {
        "command": "python benchmarks/kernels_e2e.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "isa": res.report["int8_kernels"]["backend"], "threads": args.threads, "test_images": len(labels),
        "compress_wall_s": round(wall, 1), "prune_ratio": args.ratio, "distill_epochs": args.epochs,
        "top1": {"original_float": acc(o_logits), "compressed_float": acc(f_logits),
                 "int8_simulation": acc(sim_logits), "int8_kernels": acc(k_logits)},
        "kernels_vs_simulation": {"top1_agreement": (k_logits.argmax(1) == sim_logits.argmax(1)).float().mean().item(),
                                  "max_abs_logit_diff": (k_logits - sim_logits).abs().max().item(),
                                  "mean_abs_logit_diff": (k_logits - sim_logits).abs().mean().item()},
        "macs": {"original": res.report["before"]["macs"], "compressed": res.report["after"]["macs"]},
        "fusion": res.report["int8_kernels"]["fusion"],
        "latency_ms": {},
    }
    from bench_kernels import interleaved

    torch.set_num_threads(args.threads)
    x_all = next(iter(test))[0]
    for batch in (1, 64):
        x = x_all[:batch].contiguous()
        with torch.no_grad():
            fns = {"original_float": lambda: model(x), "compressed_float": lambda: student(x),
                   "int8_kernels": lambda: kern(x)}
            out["latency_ms"][f"batch{batch}"] = {k: v for k, v in interleaved(fns, args.iters).items()}
            torch.set_flush_denormal(True)
            flushed = interleaved({"original_float_ftz": lambda: model(x), "compressed_float_ftz": lambda: student(x),
                                   "int8_kernels_ftz": lambda: kern(x)}, args.iters)
            torch.set_flush_denormal(False)
            out["latency_ms"][f"batch{batch}"].update(flushed)
        lat = out["latency_ms"][f"batch{batch}"]
        best_float = min(lat[k]["median_ms"] for k in ("compressed_float", "compressed_float_ftz"))
        best_int8 = min(lat[k]["median_ms"] for k in ("int8_kernels", "int8_kernels_ftz"))
        lat["speedup_int8_vs_best_compressed_float"] = best_float / best_int8
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "kernels_e2e.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("top1", "kernels_vs_simulation", "isa")}, indent=1))
    for b, lat in out["latency_ms"].items():
        print(b, {k: (round(v["median_ms"], 3) if isinstance(v, dict) else round(v, 2)) for k, v in lat.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
