"""Kernel modules and the converter: a quantized model on the int8 kernels computes what the
quantization simulation computes; sparse layers are chosen only where they are faster; the
``torch`` target exports and re-loads the kernel model."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgecompress as ec
from edgecompress.kernels import ops
from edgecompress.kernels.convert import convert_to_kernels
from edgecompress.kernels.modules import Int8Conv2d, Int8Linear, SparseConv2d
from edgecompress.quantize import QuantConfig, quantize_


class Net(nn.Module):
    """conv-bn-relu, a depthwise conv with relu6, a residual add, a strided 1x1, pooling and a linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.down = nn.Conv2d(16, 24, 1, stride=2)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        y = F.relu6(self.dw(x))
        x = F.relu(self.pw(y) + x)
        x = F.relu(self.down(x))
        return self.fc(x.mean((2, 3)))


def _calib(n=4, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 16, 16, generator=g), torch.zeros(bs, dtype=torch.long)) for _ in range(n)]


def _quantized(model):
    torch.manual_seed(0)
    q = copy.deepcopy(model).eval()
    with torch.no_grad():  # non-trivial BN statistics so folding matters
        q.bn1.running_mean.uniform_(-0.5, 0.5)
        q.bn1.running_var.uniform_(0.5, 2.0)
    quantize_(q, QuantConfig(calib_batches=4, stability_splits=0), _calib(), target="torch", progress=False)
    return q


def test_converted_model_matches_simulation():
    torch.manual_seed(0)
    q = _quantized(Net())
    k = convert_to_kernels(q)
    kinds = {n: type(m) for n, m in k.named_modules()}
    assert all(kinds[n] is Int8Conv2d for n in ("conv1", "dw", "pw", "down")) and kinds["fc"] is Int8Linear
    fusion = k.edgecompress_kernels["fusion"]
    assert fusion["activations_fused"] == 3 and fusion["u8_chains"] == 1  # conv1+relu, dw+relu6, down+relu; dw -> pw in u8
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = q(x), k(x)
    # the kernels sum integers exactly; the simulation sums dequantized floats: only an activation
    # sitting on a rounding boundary can differ by one code, so the logits agree to a few codes
    scale = (a.max() - a.min()).item()
    assert (a - b).abs().max().item() < 0.05 * scale
    assert (a.argmax(1) == b.argmax(1)).float().mean().item() >= 0.95


def test_layer_equals_fake_quant_layer_exactly_on_integer_friendly_input():
    """One Int8Conv2d vs its FakeQuantConv2d on inputs already on the quantization grid: the only
    difference left is float summation order, far below one output code."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    m = nn.Sequential(conv).eval()
    calib = [(torch.rand(8, 8, 10, 10) * 4 - 1, torch.zeros(8)) for _ in range(2)]
    quantize_(m, QuantConfig(calib_batches=2, stability_splits=0), calib, target="torch", progress=False)
    fq = m[0]
    k = Int8Conv2d.from_fake_quant(fq)
    x = torch.rand(4, 8, 10, 10) * 4 - 1
    with torch.no_grad():
        torch.testing.assert_close(k(x), fq(x), rtol=1e-5, atol=1e-5)


def test_non_affine_contract_is_refused():
    m = nn.Sequential(nn.Conv2d(3, 8, 3)).eval()
    quantize_(m, QuantConfig(calib_batches=1, stability_splits=0), _calib(1), target="ncnn", progress=False)
    with pytest.raises(ec.errors.ConfigError, match="target='torch'"):
        convert_to_kernels(m)


def test_sparse_layers_chosen_by_timing_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.95)  # 95% zeros
        model[2].weight.mul_(torch.rand_like(model[2].weight) > 0.3)   # 30% zeros: below min_sparsity
    x = torch.randn(1, 64, 28, 28)
    k = convert_to_kernels(model, example_inputs=(x,), timing_iters=5)
    rec = k.edgecompress_kernels["layers"]
    assert set(rec) == {"0"}  # only the sparse-enough layer is a candidate
    assert {"dense_ms", "sparse_ms", "sparsity"} <= set(rec["0"]) and rec["0"]["sparsity"] > 0.9
    assert rec["0"]["kind"] == ("sparse" if rec["0"]["sparse_ms"] < rec["0"]["dense_ms"] else "dense")
    with torch.no_grad():
        torch.testing.assert_close(k(x), model(x), rtol=1e-4, atol=1e-4)
    forced = convert_to_kernels(model, example_inputs=None)  # untimed: sparse by the threshold alone
    assert isinstance(forced.get_submodule("0"), SparseConv2d) and forced.get_submodule("0").activation == 1
    with torch.no_grad():
        torch.testing.assert_close(forced(x), model(x), rtol=1e-4, atol=1e-4)


def test_compress_torch_target_exports_kernel_model(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    train = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(4)]
    res = ec.compress(model, target="torch", train_data=train, val_data=train, prune=False, distill=False,
                      quantize=QuantConfig(calib_batches=4, stability_splits=0), bench=False, output_dir=tmp_path,
                      progress=False)
    assert res.kernel_model is not None
    rep = res.report["int8_kernels"]
    assert rep["backend"] == ops.backend() and rep["agreement_with_simulation"] >= 0.95
    assert set(rep["layers"].values()) == {"int8"}
    art = res.report["artifacts"]["torch"]
    assert art["passed"] and art["max_abs_diff"] == 0.0  # the re-loaded .pt2 is the kernel model
    prog = torch.export.load(str(tmp_path / "model.pt2"))
    assert any("edgecompress" in str(n.target) for n in prog.graph.nodes)


@pytest.mark.skipif(not os.environ.get("EDGECOMPRESS_CIFAR10"), reason="needs EDGECOMPRESS_CIFAR10")
def test_resnet20_cifar10_kernels_agree_with_simulation():
    """The shipped ResNet-20, quantized under the torch contract, on the int8 kernels vs the
    simulation on 2000 real CIFAR-10 test images (the full 10k run is in benchmarks/kernels_e2e.py)."""
    train, test = ec.cifar10_loaders(batch_size=64, eval_batch_size=500, train_subset=512, test_subset=2000)
    q = ec.load_pretrained("resnet20")
    quantize_(q, QuantConfig(calib_batches=8), train, target="torch", progress=False)
    k = convert_to_kernels(q)
    agree = n = 0
    with torch.no_grad():
        for x, _ in test:
            agree += (q(x).argmax(1) == k(x).argmax(1)).sum().item()
            n += len(x)
    assert n == 2000 and agree / n >= 0.995
