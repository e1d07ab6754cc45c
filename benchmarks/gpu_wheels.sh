#!/usr/bin/env bash
# Downloads the Python 3.12 wheels that the GPU host's image lacks for gpu_train.py's Keras runs
# (keras, namex, optree; its PyTorch, JAX, numpy, h5py, rich, ml-dtypes, absl-py are there) into
# .whl/ (git-ignored), for the device tool to carry. Run here, in the repository root:
#     bash benchmarks/gpu_wheels.sh
# then see BENCHMARKS.md ("GPU training") for the device command that installs and uses them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,6p' "$0"; exit 0
fi
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
ls -l .whl
