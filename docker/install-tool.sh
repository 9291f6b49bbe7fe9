#!/bin/sh
# Install one slidemill tool into the image's virtual environment (/opt/slidemill).
#   install-tool.sh TOOL FLAVOUR WHEELS_DIR
# TOOL: tile | train | infer | postprocess | merge_annotations | to_qupath; FLAVOUR: cpu | gpu.
# Versions come from /opt/slidemill/constraints.txt (the set the test suite passed with).
set -eu

tool=$1
flavour=$2
wheels=$3
dist="slidemill-$(echo "$tool" | tr _ -)"
constraints=/opt/slidemill/constraints.txt
pip_install() {
    /opt/slidemill/bin/pip install --no-cache-dir --constraint "$constraints" "$@"
}

case "$flavour" in
    cpu | gpu) ;;
    *) echo "install-tool.sh: FLAVOUR must be cpu or gpu, not '$flavour'" >&2; exit 2 ;;
esac
wheel_prefix="$(echo "$dist" | tr - _)-"
if ! ls "$wheels/$wheel_prefix"*.whl > /dev/null 2>&1; then
    echo "install-tool.sh: no wheel of $dist in $wheels (is '$tool' a folder of tools/?)" >&2
    exit 2
fi

if [ "$tool" = train ]; then
    # torch first, from the index of the flavour's build (CPU-only wheels, or CUDA ones), so that
    # the tool's own "torch" requirement is already met and PyPI's default build is never pulled.
    : "${TORCH_INDEX_URL:?set TORCH_INDEX_URL (https://download.pytorch.org/whl/cpu or .../cu128)}"
    pip_install --index-url "$TORCH_INDEX_URL" torch torchvision
fi

spec=$dist
if [ "$tool" = infer ] && [ "$flavour" = gpu ]; then
    spec="${dist}[fp16]"  # --fp16 converts the graph with onnx, on CUDA only
fi
pip_install --find-links "$wheels" "$spec"

if [ "$tool" = infer ] && [ "$flavour" = gpu ]; then
    # onnxruntime-gpu provides the same "onnxruntime" module with the CUDA execution provider.
    /opt/slidemill/bin/pip uninstall --yes onnxruntime
    pip_install onnxruntime-gpu
    /opt/slidemill/bin/python -c "import onnxruntime as ort, sys; \
p = ort.get_available_providers(); print('onnxruntime providers:', p); \
sys.exit(0 if 'CUDAExecutionProvider' in p else 'onnxruntime-gpu lacks the CUDA provider')"
fi

if [ "$tool" = train ] && [ "$flavour" = gpu ]; then
    /opt/slidemill/bin/python -c "import torch, sys; print('torch', torch.__version__, 'CUDA', torch.version.cuda); \
sys.exit(0 if torch.version.cuda else 'torch was installed without CUDA; check TORCH_INDEX_URL')"
fi

if [ "$tool" != train ]; then
    # Small images: only train needs torch.
    /opt/slidemill/bin/python -c "import importlib.util, sys; \
sys.exit('torch must not be in the $dist image' if importlib.util.find_spec('torch') else 0)"
fi
