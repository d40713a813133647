#!/usr/bin/env bash
# One command per benchmark, from a fresh checkout:
#   bash benchmarks/run.sh throughput      # speed  -> benchmarks/results/throughput_cpu.json
#   bash benchmarks/run.sh fashion_mnist   # learning (about 2 h on 2 cores: 1 h of pretraining and
#                                          #   evaluation, then the supervised baseline as long)
#                                          #        -> benchmarks/results/fashion_mnist/
# Extra arguments go to the script (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: bash benchmarks/run.sh throughput|fashion_mnist [flags]}"
shift

if [ "$name" = fashion_mnist ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
    && command -v apt-get >/dev/null; then
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
  *) echo "unknown benchmark: $name (throughput or fashion_mnist)" >&2; exit 2 ;;
esac
