"""Block (depth) pruning: which blocks are removable, the greedy choice, rebuilding, bad input."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgecompress as ec
from edgecompress.errors import ConfigError, DataError
from edgecompress.prune.blocks import apply_dropped_blocks, drop_blocks, removable_blocks
from edgecompress.prune.graph import layer_macs

X = (torch.zeros(1, 3, 32, 32),)


def test_removable_blocks_are_the_identity_shortcut_ones():
    m = ec.create_model("resnet20")
    assert removable_blocks(m) == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    from torchvision.models import resnet18

    r18 = removable_blocks(resnet18())
    assert r18 == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]  # x.0 of layers 2-4 downsample


def _kl(a: nn.Module, b: nn.Module, xs) -> float:
    with torch.no_grad():
        return sum(F.kl_div(F.log_softmax(b(x), 1), F.log_softmax(a(x), 1), log_target=True, reduction="batchmean").item()
                   for x in xs) / len(xs)


def test_greedy_drops_the_block_that_moves_outputs_least_and_rebuilds():
    torch.manual_seed(0)
    m = ec.load_pretrained("resnet20").eval()
    xs = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    singles = {}
    for name in removable_blocks(m):
        t = apply_dropped_blocks(copy.deepcopy(m), [name])
        singles[name] = _kl(m, t, xs)
    pruned = copy.deepcopy(m)
    r = drop_blocks(pruned, 3, [(x, None) for x in xs], batches=2)
    assert r["dropped"][0] == min(singles, key=singles.get)
    assert r["kl"][0] == pytest.approx(singles[r["dropped"][0]], rel=1e-5)
    assert len(set(r["dropped"])) == 3 and all(isinstance(pruned.get_submodule(n), nn.Identity) for n in r["dropped"])
    assert r["kl"][-1] == pytest.approx(_kl(m, pruned, xs), rel=1e-5)
    before, after = sum(layer_macs(m, X).values()), sum(layer_macs(pruned, X).values())
    assert after < before
    # fresh model code + the names: the same architecture, the weights load strictly
    fresh = apply_dropped_blocks(ec.create_model("resnet20"), r["dropped"])
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    fresh.eval()
    torch.testing.assert_close(fresh(xs[0]), pruned(xs[0]))


def test_drop_blocks_bad_input_names_the_fix():
    m = ec.create_model("resnet20")
    data = [(torch.randn(4, 3, 32, 32), None)]
    with pytest.raises(ConfigError, match=r"pass an int in \[0, 7\]"):
        drop_blocks(m, 8, data)
    with pytest.raises(ConfigError, match="not removable"):
        drop_blocks(m, 1, data, candidates=["layer2.0"])  # has a projection shortcut
    with pytest.raises(ConfigError, match="removable"):
        apply_dropped_blocks(m, ["layer1.1", "fc"])  # one good name, one bad: nothing is replaced
    with pytest.raises(DataError, match="no batches"):
        drop_blocks(m, 1, [])
    assert len(removable_blocks(m)) == 7  # nothing was changed by the failed calls


def test_dropping_one_block_of_the_trained_resnet20_keeps_most_predictions(cifar10_path):
    train, test = ec.cifar10_loaders(cifar10_path, batch_size=128, train_subset=1024, test_subset=1000, seed=0)
    base = ec.load_pretrained("resnet20").eval()
    m = copy.deepcopy(base)
    r = drop_blocks(m, 1, train, batches=4)
    agree = n = 0
    with torch.no_grad():
        for x, _ in test:
            agree += (base(x).argmax(1) == m(x).argmax(1)).sum().item()
            n += len(x)
    assert agree / n >= 0.8, (r, agree / n)  # Veit et al.: one block of a residual net is cheap to lose
