"""Distillation on real CIFAR-10 slices (needs EDGECOMPRESS_CIFAR10): a teacher -> assistant ->
student chain built by pruning the shipped ResNet-20 twice as hard at each stage."""

import copy

import pytest
import torch

import edgecompress as ec
from edgecompress.data import cifar10_loaders
from edgecompress.distill import DistillConfig, teacher_assistant_chain
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
