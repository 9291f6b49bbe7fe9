#!/usr/bin/env bash
# Build every slidemill image from docker/Dockerfile: each tool in the flavours its meta.yml names.
#   docker/build.sh [--flavour cpu|gpu|all] [--tag VERSION] [--registry PREFIX] [--push] [--list] [TOOL...]
# Images are named PREFIX/TOOL:VERSION (cpu) and PREFIX/TOOL:VERSION-gpu, e.g. slidemill/infer:0.1.0-gpu.
# --list prints "TOOL FLAVOUR..." per tool, as read from tools/*/meta.yml, and builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tools and their flavours come from tools/*/meta.yml (schema: slidemill.shared.inventory.ToolMeta,
# whose test checks that this reading agrees with the YAML): `name: TOOL`, `  flavours: [cpu, gpu]`.
declare -A TOOL_FLAVOURS=()
TOOLS_ALL=()
for meta in tools/*/meta.yml; do
    name=$(sed -n 's/^name: *\([a-z0-9-]*\) *$/\1/p' "$meta")
    tool_flavours=$(sed -n 's/^  flavours: *\[\(.*\)\] *$/\1/p' "$meta" | tr -d ' ' | tr , ' ')
    if [ -z "$name" ] || [ -z "$tool_flavours" ]; then
        echo "build.sh: $meta has no 'name:' or '  flavours: [...]' line" >&2; exit 2
    fi
    TOOLS_ALL+=("$name")
    TOOL_FLAVOURS[$name]=$tool_flavours
done
flavours=(cpu gpu)
list=0
version=$(sed -n 's/^version = "\(.*\)"/\1/p' shared/pyproject.toml | head -n1)
registry=slidemill
push=0
tools=()
# GPU flavour: a CUDA runtime base (cuDNN for onnxruntime-gpu), CUDA wheels of torch for train.
GPU_BASE_IMAGE=${GPU_BASE_IMAGE:-nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04}
GPU_TORCH_INDEX_URL=${GPU_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
CPU_BASE_IMAGE=${CPU_BASE_IMAGE:-ubuntu:24.04}
CPU_TORCH_INDEX_URL=${CPU_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}

while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) case "$2" in all) flavours=(cpu gpu) ;; cpu|gpu) flavours=("$2") ;;
                   *) echo "build.sh: --flavour is cpu, gpu or all" >&2; exit 2 ;; esac; shift 2 ;;
        --tag) version=$2; shift 2 ;;
        --registry) registry=$2; shift 2 ;;
        --push) push=1; shift ;;
        --list) list=1; shift ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        -*) echo "build.sh: unknown option $1" >&2; exit 2 ;;
        *) tools+=("$1"); shift ;;
    esac
done
[ ${#tools[@]} -gt 0 ] || tools=("${TOOLS_ALL[@]}")
for tool in "${tools[@]}"; do
    if [[ ! " ${TOOLS_ALL[*]} " =~ \ ${tool}\  ]]; then
        echo "build.sh: unknown tool '$tool' (one of: ${TOOLS_ALL[*]})" >&2; exit 2
    fi
done
if [ "$list" = 1 ]; then
    for tool in "${tools[@]}"; do echo "$tool ${TOOL_FLAVOURS[$tool]}"; done
    exit 0
fi
if ! command -v docker > /dev/null 2>&1 || ! docker info > /dev/null 2>&1; then
    echo "build.sh: no Docker daemon reachable here; run this where Docker (with BuildKit) runs" >&2
    exit 2
fi

export DOCKER_BUILDKIT=1
for flavour in "${flavours[@]}"; do
    if [ "$flavour" = gpu ]; then
        base=$GPU_BASE_IMAGE; torch_index=$GPU_TORCH_INDEX_URL; suffix=-gpu
    else
        base=$CPU_BASE_IMAGE; torch_index=$CPU_TORCH_INDEX_URL; suffix=
    fi
    for tool in "${tools[@]}"; do
        [[ " ${TOOL_FLAVOURS[$tool]} " == *" $flavour "* ]] || continue
        image="$registry/$tool:$version$suffix"
        echo "== $image"
        docker build -f docker/Dockerfile --target "$tool" \
            --build-arg BASE_IMAGE="$base" --build-arg FLAVOUR="$flavour" \
            --build-arg TORCH_INDEX_URL="$torch_index" -t "$image" .
        if [ "$push" = 1 ]; then docker push "$image"; fi
    done
done
