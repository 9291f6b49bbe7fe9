#!/usr/bin/env bash
# Print docker/constraints.txt from the project's tested environment (.venv): every installed
# version, less the slidemill packages themselves, the test tools and the CUDA wheels (those come
# with the flavour's torch / onnxruntime build).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# Versions the images install: the set the test suite passed with (pip freeze of .venv, less the"
echo "# slidemill packages, the test tools and the CUDA wheels, which come with the flavour's torch/onnxruntime)."
echo "# Regenerate: docker/freeze-constraints.sh > docker/constraints.txt"
.venv/bin/pip freeze --disable-pip-version-check \
  | grep -v -i -E '^(-e |slidemill|nvidia-|cuda-|triton|pytest|ruff|hadolint|iniconfig|pluggy|hatchling|pathspec|trove-classifiers|hera|jsonschema|referencing|rpds-py)'
echo "onnxruntime-gpu==$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')"
