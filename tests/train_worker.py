"""Trains a small batch-norm-free CNN (optionally pruned first) the same way in one process, under
``torchrun``, or until killed; used by tests/test_ddp_resume.py. Writes final weights to --out."""

import argparse
import os
import signal

import torch
import torch.nn as nn


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2),
                         nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--prune", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--kill-at-step", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from edgecompress.distill import TrainConfig, fit
    from edgecompress.prune import PruneConfig, prune_
    from edgecompress.testing import synthetic_loaders

    train, val = synthetic_loaders(n_train=512, n_val=100, batch_size=32, seed=0)
    m = model()
    if a.prune:
        prune_(m, PruneConfig(method="fpgm", ratio=a.prune), (torch.randn(1, 3, 32, 32),))
    rank = int(os.environ.get("RANK", "0"))
    ckpt = a.ckpt.replace("{rank}", str(rank)) if a.ckpt else None

    def on_step(step):
        if a.kill_at_step is not None and step == a.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no exception handlers

    cfg = TrainConfig(epochs=a.epochs, lr=0.1, weight_decay=5e-4, warmup_epochs=0.5, progress=False, bf16=False)
    hist = fit(m, train, val, cfg, checkpoint_dir=ckpt, resume=a.resume, on_step=on_step, log=lambda s: None)
    if rank == 0:
        torch.save({"state": m.state_dict(), "history": hist}, a.out)


if __name__ == "__main__":
    main()
