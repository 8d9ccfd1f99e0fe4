#!/usr/bin/env bash
# The shared trainer on a lent GPU machine, which has jax / flax / optax / orbax but no TensorFlow
# (issue "One trainer for every paper", TF-free core). Run through the device tool from the repo root,
# with the wheels of grain, array_record, tensorflow-datasets, clu, ml-collections, tensorboardX and
# their missing dependencies carried in .whl/ (see the device tool's README for the download command):
#
#   bash benchmarks/gpu_trainer_check.sh      (carry: .whl)
#
# It builds synthetic_expressions without TensorFlow, trains + evaluates the main job
# (experiments/convnext_synthetic.py) and the action-unit job (experiments/au_synthetic.py), and copies
# their metrics.json to $OUT. Measured 2026-11-28 on an H200 (jax 0.11.2, flax 0.12.10, no TensorFlow):
# main job 91.85% validation / 90.6% test in 134 s (90 s training, 19.4 steps/s at batch 64, input-bound);
# action units: test mean CC 0.729, MAE 0.059, presence mAP 0.743 in 142 s. Wheels needed beyond the
# image: grain, array_record, tensorflow-datasets, tensorflow-metadata, clu, ml_collections, tensorboardX,
# dm-tree, immutabledict, promise, simple-parsing, docstring_parser, termcolor, toml,
# googleapis-common-protos, portpicker, importlib_resources (versions: constraints.txt).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TFDS_DATA_DIR=/tmp/tfds TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c "import tensorflow" 2>/dev/null && echo "TensorFlow is importable" || echo "TensorFlow: not installed"
python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run() {  # name, config
  local t0=$SECONDS
  timeout 300 python3 -m fer_jax.main --config="$2" --workdir=/tmp/runs/"$1" > "$OUT/$1.log" 2>&1
  local rc=$?
  echo "== $1: rc $rc, $((SECONDS - t0)) s (dataset build + compile + train + evaluations)"
  grep -E "step [0-9]+/[0-9]+ \|" "$OUT/$1.log" | tail -2 | cut -c1-220
  grep -E "^FINAL|Error|error:" "$OUT/$1.log" | tail -4 | cut -c1-300
  cp /tmp/runs/"$1"/metrics.json "$OUT/$1_metrics.json" 2>/dev/null
  python3 -c "import tensorflow" 2>/dev/null && echo "TensorFlow appeared!" || true
}
run convnext_synthetic experiments/convnext_synthetic.py
run au_synthetic experiments/au_synthetic.py
