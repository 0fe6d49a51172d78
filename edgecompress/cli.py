"""The ``edgecompress`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _cmd_train(a: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from edgecompress.data import cifar10_loaders
    from edgecompress.distill import TrainConfig, fit
    from edgecompress.models import create_model

    torch.set_num_threads(a.threads) if a.threads else None
    train, test = cifar10_loaders(a.data, batch_size=a.batch_size, train_subset=a.train_subset,
                                  test_subset=a.test_subset, seed=a.seed)
    model = create_model(a.model)
    cfg = TrainConfig(epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs,
                      schedule=a.schedule, seed=a.seed, bf16=None if a.bf16 == "auto" else a.bf16 == "on")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text("edgecompress " + " ".join(sys.argv[1:]) + "\n")
    (out / "train_config.json").write_text(cfg.to_json())
    t0 = time.time()
    hist = fit(model, train, test, cfg, checkpoint_dir=out, resume=a.resume)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{a.model}.safetensors"))
    summary = {"model": a.model, "final_test_top1": hist[-1].get("val_top1"), "epochs": a.epochs,
               "test_images": test.num_samples, "wall_seconds": round(time.time() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecompress", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a zoo model on CIFAR-10 from scratch")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--data", default=None, help="CIFAR-10 archive/folder (default: $EDGECOMPRESS_CIFAR10)")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "multistep"])
    t.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    t.add_argument("--train-subset", type=int, default=None)
    t.add_argument("--test-subset", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--out", default="runs/train")
    t.set_defaults(fn=_cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
