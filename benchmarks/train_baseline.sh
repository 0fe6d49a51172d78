#!/usr/bin/env bash
# Trains a shipped CIFAR-10 baseline on this 2-core CPU (bf16 autocast; resumable with --resume) and
# copies its weights + logs into the package. Needs EDGECOMPRESS_CIFAR10 (or --data).
#   bash benchmarks/train_baseline.sh [--threads 2] [--resume]                # ResNet-20, 100 epochs (~2 h alone)
#   MODEL=mobilenetv2_x0_5 EPOCHS=10 bash benchmarks/train_baseline.sh ...     # MobileNetV2-CIFAR x0.5 (~9 min/epoch)
# SGD Nesterov, lr 0.1 cosine with 1 warm-up epoch, weight decay 5e-4, batch 128, seed 0.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-resnet20}
epochs=${EPOCHS:-100}
default_out=runs/${model}_baseline${epochs}
[ "$model" = resnet20 ] && default_out=runs/resnet20_baseline${epochs}
out=${OUT:-$default_out}
res=benchmarks/results/baseline
mkdir -p "$res"
edgecompress train --model "$model" --epochs "$epochs" --batch-size 128 --lr 0.1 --weight-decay 5e-4 \
  --warmup-epochs 1 --schedule cosine --seed 0 --out "$out" "$@"
cp "$out/$model.safetensors" "edgecompress/weights/${model}_cifar10.safetensors"
name=$(basename "$out")
for f in history.json summary.json command.txt train_config.json; do cp "$out/$f" "$res/$name.$f"; done
