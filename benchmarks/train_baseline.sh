#!/usr/bin/env bash
# Trains the shipped ResNet-20 CIFAR-10 baseline on this 2-core CPU (bf16 autocast, ~90 s/epoch)
# and copies its weights + log into the package. Needs EDGECOMPRESS_CIFAR10 (or --data).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/resnet20_baseline}
edgecompress train --model resnet20 --epochs 50 --batch-size 128 --lr 0.1 --weight-decay 5e-4 \
  --warmup-epochs 1 --schedule cosine --seed 0 --out "$out" "$@" 2>&1 | tee "$out.log"
cp "$out/resnet20.safetensors" edgecompress/weights/resnet20_cifar10.safetensors
mkdir -p benchmarks/results/baseline
cp "$out/history.json" "$out/summary.json" "$out/command.txt" "$out/train_config.json" benchmarks/results/baseline/
grep -v '^\s*$' "$out.log" | grep '^{' > benchmarks/results/baseline/train_log.jsonl
