"""Mason-Williams' question on CIFAR-10 ResNet-20: are compressed models still functionally the
model they came from, or as different as a network trained independently? Softmax outputs of the
base model, its int8 simulations (ncnn and onnx contracts), the FPGM-pruned model before and after
KD, the pruned + KD + int8 model, and independently trained ResNet-20s, on the test images:
pairwise top-1 agreement, KL and JS, and a PCA landscape.

    python benchmarks/similarity_landscape.py --data $EDGECOMPRESS_CIFAR10 \
        --epochs 30 --lr 0.03 --round-to 8 --independent "NAME=weights.safetensors"

The pruned + KD student is the one ``benchmarks/zhao_table.py`` trains (same settings; its
checkpoint is found by the same key, so run that first, or this script trains it). Budget without
training: ~3 minutes on the 2-core CPU (inference of ~8 models on 10,000 images).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress.analysis.similarity import functional_similarity, plot_landscape
from edgecompress.distill import DistillConfig, fit
from edgecompress.models import create_model
from edgecompress.prune import PruneConfig, prune_
from edgecompress.quantize import QuantConfig, quantize_
from edgecompress.utils import predict, top1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ckpt_key import ckpt_key  # noqa: E402 - the KD student's checkpoint key, as zhao_table.py computes it


def _load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, weights_only=True, map_location="cpu")
    return state.get("model", state) if isinstance(state, dict) and "model" in state else state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--independent", action="append", default=[],
                    help="NAME=WEIGHTS of an independently trained model of the same architecture (repeatable)")
    ap.add_argument("--epochs", type=int, default=8, help="KD epochs of the student (as zhao_table.py)")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--round-to", type=int, default=1, help="as zhao_table.py's --round-to")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--ckpt", default="runs/zhao")
    ap.add_argument("--out", default="benchmarks/results/similarity")
    a = ap.parse_args(argv)
    t0 = time.time()
    train, test = ec.cifar10_loaders(a.data, batch_size=128, seed=a.seed, test_subset=a.test_subset)
    calib, _ = ec.cifar10_loaders(a.data, batch_size=64, train_subset=512, test_subset=100, seed=a.seed)
    base = ec.load_pretrained(a.model).eval()
    x = (torch.zeros(1, 3, 32, 32),)
    models, kinds = {"base": base}, {"base": "base"}

    def int8(m, contract):
        q = copy.deepcopy(m)
        quantize_(q, QuantConfig(calib_batches=8), calib, target=contract, progress=False)
        return q

    models["base int8 (ncnn)"] = int8(base, "ncnn")
    models["base int8 (onnx)"] = int8(base, "onnx")
    pruned = copy.deepcopy(base)
    prep = prune_(pruned, PruneConfig(method="fpgm", macs_target=0.5, round_to=a.round_to), x)
    models["FPGM 50%, no fine-tune"] = pruned.eval()
    cfg = DistillConfig(epochs=a.epochs, lr=a.lr, weight_decay=5e-4, schedule="cosine", seed=a.seed, temperature=4.0,
                        alpha=0.1, beta=0.9, progress=False)
    student = copy.deepcopy(pruned)
    fit(student, train, test, cfg, teacher=base, resume=True,
        checkpoint_dir=Path(a.ckpt) / f"{a.model}-{ckpt_key(base, cfg.to_json(), prep['plan'])}")
    models[f"FPGM 50% + KD {a.epochs} ep"] = student.eval()
    models[f"FPGM 50% + KD + int8 (ncnn)"] = int8(student, "ncnn")
    for k in models:
        kinds.setdefault(k, "compressed")
    for spec in a.independent:
        name, _, path = spec.partition("=")
        m = create_model(a.model)
        m.load_state_dict(_load_state(path))
        models[name] = m.eval()
        kinds[name] = "independent"
    logits, labels = {}, None
    for k, m in models.items():
        logits[k], labels = predict(m, test)
    sim = functional_similarity(logits, reference="base")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_landscape(sim.pop("probs"), out / f"{a.model}_landscape.png", kinds=kinds,
                   title=f"{a.model}: functional landscape (PCA of softmax outputs, {len(labels)} test images)")
    accs = {k: top1(v, labels) for k, v in logits.items()}
    lines = ["| model | kind | top-1 | agreement with base | KL(base ‖ model) | JS |", "|---|---|---|---|---|---|"]
    for k in logits:
        p = sim["pairs"].get(f"base|{k}")
        lines.append(f"| {k} | {kinds[k]} | {accs[k]:.2%} | " + (
            f"{p['agreement']:.2%} | {p['kl_mean']:.4f} | {p['js_mean']:.4f} |" if p else "100% | 0 | 0 |"))
    note = f"\n{len(labels)} CIFAR-10 test images; every pair in {a.model}_similarity.json.\n"
    (out / f"{a.model}_similarity.md").write_text("\n".join(lines) + "\n" + note)
    (out / f"{a.model}_similarity.json").write_text(json.dumps({"top1": accs, "kinds": kinds, **sim,
                                                                 "wall_seconds": round(time.time() - t0, 1)}, indent=1))
    print("\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
