"""The pipeline on real CIFAR-10 and the shipped ResNet-20 (needs EDGECOMPRESS_CIFAR10)."""

import json
import subprocess
import sys

import pytest
import torch.nn as nn

import edgecompress as ec
from edgecompress.data import cifar10_loaders
from edgecompress.utils import evaluate


@pytest.fixture(scope="module")
def real(cifar10_path):
    train, _ = cifar10_loaders(cifar10_path, batch_size=128, train_subset=4096)
    _, test512 = cifar10_loaders(cifar10_path, eval_batch_size=128, test_subset=512)
    _, test = cifar10_loaders(cifar10_path, eval_batch_size=500)
    return train, test512, test


def test_shipped_baseline_accuracy(real):
    # The shipped checkpoint (100 epochs, benchmarks/results/baseline/resnet20_baseline100.*) scores
    # 88.50%; the foundation issue asks for >= 88%. Guards the checkpoint and the loader.
    acc = evaluate(ec.load_pretrained("resnet20"), real[2])
    assert acc >= 0.88, f"shipped ResNet-20 top-1 {acc:.2%} < 88% on the 10,000 test images"


@pytest.mark.parametrize("target", ["onnx", "ncnn"])
def test_artifacts_match_pytorch_on_512_test_images(real, target, tmp_path):
    train, test512, _ = real
    res = ec.compress(ec.load_pretrained("resnet20"), target, train_data=train, val_data=test512, prune=False,
                      distill=False, quantize=ec.QuantConfig(calib_batches=2), bench=False, progress=False,
                      output_dir=tmp_path)
    for name, v in res.report["artifacts"].items():
        assert v["samples"] == 512
        assert v["max_abs_diff"] <= 1e-4, f"{name}: max abs diff {v['max_abs_diff']:.2e}"
        assert v["top1_agreement"] == 1.0, f"{name}: agreement {v['top1_agreement']:.2%}"
    assert res.report["before"]["top1"] >= 0.85
    assert res.report["int8_simulated"]["agreement_with_float"] >= 0.95


def test_fpgm_half_pruned_resnet20_exports_and_verifies(real, tmp_path):
    train, test512, _ = real
    base = ec.load_pretrained("resnet20")
    convs = {n: m.weight.shape for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    res = ec.compress(base, "ncnn", train_data=train, val_data=test512,
                      prune=ec.PruneConfig(method="fpgm", ratio=0.5),
                      distill=ec.DistillConfig(epochs=1, max_steps=16, lr=0.02, progress=False),
                      quantize=False, bench=ec.BenchConfig(warmup=3, iters=20), progress=False, output_dir=tmp_path)
    r = res.report
    assert r["after"]["macs"] <= 0.6 * r["before"]["macs"], r["after"]["macs"] / r["before"]["macs"]
    for n, m in res.model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] < convs[n][0], f"{n} not physically pruned: {tuple(m.weight.shape)}"
    for name, v in r["artifacts"].items():
        assert v["max_abs_diff"] <= 1e-4 and v["top1_agreement"] == 1.0, (name, v)
    # 16 KD steps recover part of what pruning lost: agreement with the original rises, and top-1
    # is well above chance (measured 27.7% with the 88.50% baseline, 10% is chance)
    pairs = r["similarity"]["pairs"]
    before_ft = pairs["original|pruned, before fine-tuning"]["agreement"]
    after_ft = pairs["original|compressed (float)"]["agreement"]
    assert after_ft > before_ft + 0.05, (before_ft, after_ft)
    assert r["after"]["top1"] > 0.2
    assert json.loads((tmp_path / "report.json").read_text())["target"] == "ncnn"


@pytest.mark.slow
def test_demo_end_to_end(cifar10_path, tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "edgecompress.cli", "demo", "--data", str(cifar10_path), "--out", str(out)],
                       capture_output=True, text=True, timeout=15 * 60)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "report.json").read_text())
    assert r["before"]["val_images"] == 10000
    assert r["after"]["macs"] <= 0.6 * r["before"]["macs"]
    assert {"ncnn", "onnx"} <= set(r["artifacts"]) and all(v["passed"] for v in r["artifacts"].values())
    assert r["wall_seconds"] < 15 * 60
