"""Distillation on real CIFAR-10 slices (needs EDGECOMPRESS_CIFAR10): a teacher -> assistant ->
student chain built by pruning the shipped ResNet-20 twice as hard at each stage."""

import copy

import pytest
import torch

import edgecompress as ec
from edgecompress.data import cifar10_loaders
from edgecompress.distill import DistillConfig, teacher_assistant_chain
from edgecompress.models.pretrained import pretrained_path
from edgecompress.prune import PruneConfig, prune_


def test_teacher_assistant_chain_on_cifar10_slices(cifar10_path):
    train, _ = cifar10_loaders(cifar10_path, batch_size=128, train_subset=2048, seed=0)
    _, val = cifar10_loaders(cifar10_path, eval_batch_size=250, test_subset=500, seed=0)
    teacher = ec.load_pretrained("resnet20")
    x = (torch.randn(1, 3, 32, 32),)
    assistant, student = copy.deepcopy(teacher), copy.deepcopy(teacher)
    prune_(assistant, PruneConfig(method="fpgm", ratio=0.3), x)
    prune_(student, PruneConfig(method="fpgm", ratio=0.6), x)
    cfg = DistillConfig(epochs=1, lr=0.02, progress=False)
    stages = teacher_assistant_chain(teacher, [assistant, student], train, val, cfg, log=lambda s: None)
    assert [s["stage"] for s in stages] == ["teacher", "assistant1", "student"]
    assert [s.get("teacher") for s in stages] == [None, "teacher", "assistant1"]
    assert stages[0]["params"] > stages[1]["params"] > stages[2]["params"]
    assert stages[0]["top1"] >= 0.85
    for s in stages[1:]:
        assert s["history"][-1]["steps"] == 16
        assert s["top1"] > s["top1_before"] + 0.05, s  # each stage recovers accuracy it lost to pruning


def test_cli_train_runs_unchanged_under_torchrun(cifar10_path, tmp_path):
    import json
    import os
    import shutil
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("edgecompress") or pytest.skip("the edgecompress script is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGECOMPRESS_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", exe,
           "train", "--model", "resnet20", "--teacher", "pretrained", "--data", str(cifar10_path),
           "--train-subset", "512", "--test-subset", "256", "--epochs", "1", "--batch-size", "64", "--lr", "0.01",
           "--bf16", "off", "--init", str(pretrained_path("resnet20")), "--out", str(tmp_path / "run")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith('{"model"')]
    assert len(summaries) == 1  # only rank 0 reports and writes
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist[0]["steps"] == 8  # 512 images / global batch 64, each rank taking 32 per step
    # started from and distilled by the shipped model: it keeps its accuracy on the 256 test images
    assert summaries[0]["final_test_top1"] >= 0.8 and summaries[0]["test_images"] == 256
    assert (tmp_path / "run" / "resnet20.safetensors").exists()
