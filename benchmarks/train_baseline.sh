#!/usr/bin/env bash
# Trains the shipped ResNet-20 CIFAR-10 baseline on this 2-core CPU (bf16 autocast, ~80-95 s/epoch)
# and copies its weights + logs into the package. Needs EDGECOMPRESS_CIFAR10 (or pass --data).
# Stage 1: 50 epochs, SGD Nesterov, lr 0.1 cosine, wd 5e-4 (reached 87.66%).
# Stage 2: a warm restart from stage 1, 15 epochs, lr 0.015 cosine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/resnet20_baseline}
res=benchmarks/results/baseline
mkdir -p "$res"
edgecompress train --model resnet20 --epochs 50 --batch-size 128 --lr 0.1 --weight-decay 5e-4 \
  --warmup-epochs 1 --schedule cosine --seed 0 --out "$out" "$@"
edgecompress train --model resnet20 --epochs 15 --batch-size 128 --lr 0.015 --weight-decay 5e-4 \
  --warmup-epochs 0 --schedule cosine --seed 1 --init "$out/resnet20.safetensors" --out "$out-restart" "$@"
cp "$out-restart/resnet20.safetensors" edgecompress/weights/resnet20_cifar10.safetensors
for stage in "$out" "$out-restart"; do
  name=$(basename "$stage")
  for f in history.json summary.json command.txt train_config.json; do cp "$stage/$f" "$res/$name.$f"; done
done
