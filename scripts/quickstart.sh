#!/usr/bin/env bash
# The README's main job: set up .venv and pretrain on Fashion-MNIST on a CPU,
# then print linear-probe (every label, 1% and 10% of them) and kNN accuracy
# next to the baselines (raw pixels, and the same encoder with random
# weights); a second run reads the baselines back from data/baselines/. The
# preset (simclr_tf/settings/recipes.py) is the hour's recipe at a quarter of
# its width for three epochs, on smaller views. Extra arguments go to run.py.
set -euo pipefail
cd "$(dirname "$0")/.."

# Offline data: Debian's dataset-fashion-mnist (else TFDS downloads it).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist \
    || echo "Could not install dataset-fashion-mnist; TFDS will try to download."
fi

python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
exec .venv/bin/python run.py --mode=train_then_eval \
  --preset=fashion_mnist_quickstart --random_baseline \
  --model_dir=models/quickstart "$@"
