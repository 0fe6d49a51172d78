"""DDP under torchrun equals one process on the same global batch; only rank 0 writes; a run killed
mid-epoch and resumed reaches the uninterrupted run's weights."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = str(Path(__file__).with_name("train_worker.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, *, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGECOMPRESS_DIST_BACKEND": "gloo"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", WORKER, *args]
    else:
        env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        cmd = [sys.executable, WORKER, *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("prune", [0.0, 0.25])
def test_ddp_two_gloo_ranks_equal_single_process(tmp_path, prune):
    _run(["--out", str(tmp_path / "single.pt"), "--prune", str(prune)])
    _run(["--out", str(tmp_path / "ddp.pt"), "--prune", str(prune), "--ckpt", str(tmp_path / "ckpt_rank{rank}")],
         nproc=2)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert single["history"][-1]["loss"] < 0.85 * single["history"][0]["loss"]  # it did learn
    if prune:
        assert single["state"]["0.weight"].shape[0] == 12  # 16 filters, 25% removed, re-wrapped after pruning
    # equal up to float32 re-association (the mean of two half-batch means vs one mean), which 64
    # SGD steps amplify to ~1e-4 of the weights' scale
    scale = max(v.abs().max().item() for v in single["state"].values())
    assert _max_diff(single["state"], ddp["state"]) < 1e-3 * scale
    # metrics reduced over ranks: the same loss and validation accuracy as one process
    for hs, hd in zip(single["history"], ddp["history"]):
        assert hd["loss"] == pytest.approx(hs["loss"], rel=1e-4)
        assert hd["val_top1"] == pytest.approx(hs["val_top1"], abs=0.011)
    # only rank 0 wrote its checkpoint directory
    assert (tmp_path / "ckpt_rank0" / "last.pt").exists()
    assert not (tmp_path / "ckpt_rank1").exists()


def test_killed_mid_epoch_then_resumed_reaches_uninterrupted_weights(tmp_path):
    _run(["--out", str(tmp_path / "full.pt"), "--epochs", "3"])
    # 512 images / batch 32 = 16 steps per epoch: step 24 is in the middle of the second epoch
    p = _run(["--out", str(tmp_path / "never.pt"), "--epochs", "3", "--ckpt", str(tmp_path / "ck"),
              "--kill-at-step", "24"], check=False)
    assert p.returncode == -9 and not (tmp_path / "never.pt").exists()
    state = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert state["epoch"] == 0  # only the first epoch was completed
    _run(["--out", str(tmp_path / "resumed.pt"), "--epochs", "3", "--ckpt", str(tmp_path / "ck"), "--resume"])
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    assert _max_diff(full["state"], resumed["state"]) == 0.0
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]


def test_sharded_torch_dataloader_covers_the_global_batches():
    from edgecompress.distill.dist import shard_loader
    from edgecompress.errors import DataError

    ds = torch.utils.data.TensorDataset(torch.arange(40).float().unsqueeze(1), torch.arange(40))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    sharded = [shard_loader(loader, r, 2, train=True, seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        torch.manual_seed(epoch + 100)  # the ranks' random states differ: the order must not
        for s in sharded:
            s.sampler.set_epoch(epoch)
        shards = [list(s) for s in sharded]
        assert all(len(b[1]) == 4 for s in shards for b in s)  # global batch 8 = 2 ranks x 4
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        single = [set(perm[i:i + 8]) for i in range(0, 40, 8)]  # one process, same permutation
        assert [set(a[1].tolist()) | set(b[1].tolist()) for a, b in zip(*shards)] == single
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(7, 1), torch.arange(7)), batch_size=4)
    got = sorted(i for r in (0, 1) for _, y in shard_loader(val, r, 2, train=False) for i in y.tolist())
    assert got == list(range(7))  # evaluation shards are exact: no padding, no repeats
    with pytest.raises(DataError, match="divisible"):
        shard_loader(torch.utils.data.DataLoader(ds, batch_size=7), 0, 2, train=True)
