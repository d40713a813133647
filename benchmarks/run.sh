#!/usr/bin/env bash
# One command per benchmark, from a fresh checkout:
#   bash benchmarks/run.sh throughput      # speed  -> benchmarks/results/throughput_cpu.json
#   bash benchmarks/run.sh side_by_side --baseline_tree=DIR
#                                          # against PyTorch + lightly and another checkout (~25 min)
#                                          #        -> benchmarks/results/side_by_side.json
#   bash benchmarks/run.sh fashion_mnist   # learning (about 1.5 h on 2 cores with bfloat16 units: 35-50
#                                          #   min of pretraining and evaluation, then the supervised
#                                          #   baseline as long; about three times as long in float32)
#                                          #        -> benchmarks/results/fashion_mnist/
#   bash benchmarks/run.sh semi_supervised # fine-tuning on 1% / 10% of the labels, from the encoder
#                                          #   fashion_mnist left in /tmp/simclr_fashion_mnist (~40 min)
#                                          #        -> benchmarks/results/semi_supervised/
#   bash benchmarks/run.sh distillation    # 1% of the labels: teachers fine-tuned from the same encoder,
#                                          #   distilled into the same network and into ResNet-18 x0.25 (~70 min)
#                                          #        -> benchmarks/results/distillation/
#   bash benchmarks/run.sh gradient_cache  # memory and speed of --contrastive_chunk_size (~15 min)
#                                          #        -> benchmarks/results/gradient_cache.json
#   bash benchmarks/run.sh findings --study=augmentations   # the paper's studies (~29, 11, 14 min
#                                          #   for augmentations, projection_head, batch_size)
#                                          #        -> benchmarks/results/findings/
#   bash benchmarks/run.sh small_folder    # pretraining on 1,800 images at 16 px against random
#                                          #   weights, 3 settings x 3 seeds -> benchmarks/results/small_folder/
#   bash benchmarks/run.sh original_import --original_code=PATH/simclr/tf2
#                                          # --mode=import against the original code (~13 min)
#                                          #        -> benchmarks/results/original_import.json
# Extra arguments go to the script (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: bash benchmarks/run.sh throughput|side_by_side|fashion_mnist|semi_supervised|distillation|gradient_cache|findings|small_folder|original_import [flags]}"
shift

if { [ "$name" = fashion_mnist ] || [ "$name" = semi_supervised ] || [ "$name" = findings ] \
      || [ "$name" = distillation ] \
      || [ "$name" = small_folder ]; } \
    && [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

python3 -m venv .venv
.venv/bin/pip install -q -r benchmarks/requirements.txt
case "$name" in
  throughput)
    exec .venv/bin/python -m benchmarks.throughput \
      --output=benchmarks/results/throughput_cpu.json "$@" ;;
  fashion_mnist)
    exec .venv/bin/python -m benchmarks.fashion_mnist \
      --output=benchmarks/results/fashion_mnist "$@" ;;
  semi_supervised)
    exec .venv/bin/python -m benchmarks.semi_supervised \
      --output=benchmarks/results/semi_supervised "$@" ;;
  distillation)
    exec .venv/bin/python -m benchmarks.distillation \
      --output=benchmarks/results/distillation "$@" ;;
  gradient_cache)
    exec .venv/bin/python -m benchmarks.gradient_cache --timed_steps=3 \
      --output=benchmarks/results/gradient_cache.json "$@" ;;
  findings)
    exec .venv/bin/python -m benchmarks.findings \
      --output=benchmarks/results/findings "$@" ;;
  small_folder)
    exec .venv/bin/python -m benchmarks.small_folder \
      --output=benchmarks/results/small_folder "$@" ;;
  side_by_side)
    python3 -m venv .venv-torch
    .venv-torch/bin/pip install -q -r benchmarks/requirements-torch.txt
    exec .venv/bin/python -m benchmarks.side_by_side \
      --torch_python=.venv-torch/bin/python \
      --output=benchmarks/results/side_by_side.json "$@" ;;
  original_import)
    exec .venv/bin/python -m benchmarks.original_import \
      --output=benchmarks/results/original_import.json "$@" ;;
  *) echo "unknown benchmark: $name (throughput, side_by_side, fashion_mnist," \
       "semi_supervised, distillation, gradient_cache, findings or original_import)" >&2
     exit 2 ;;
esac
