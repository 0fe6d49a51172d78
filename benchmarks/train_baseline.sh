#!/usr/bin/env bash
# Trains the shipped ResNet-20 CIFAR-10 baseline on this 2-core CPU (bf16 autocast, ~80-95 s/epoch,
# ~2.5-3 h; resumable with --resume) and copies its weights + logs into the package. Needs EDGECOMPRESS_CIFAR10 (or --data).
# 100 epochs, SGD Nesterov, lr 0.1 cosine with 1 warm-up epoch, weight decay 5e-4, batch 128.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/resnet20_baseline100}
res=benchmarks/results/baseline
mkdir -p "$res"
edgecompress train --model resnet20 --epochs 100 --batch-size 128 --lr 0.1 --weight-decay 5e-4 \
  --warmup-epochs 1 --schedule cosine --seed 0 --out "$out" "$@"
cp "$out/resnet20.safetensors" edgecompress/weights/resnet20_cifar10.safetensors
name=$(basename "$out")
for f in history.json summary.json command.txt train_config.json; do cp "$out/$f" "$res/$name.$f"; done
