#!/usr/bin/env bash
# Build every slidemill image from docker/Dockerfile: six tools x {cpu, gpu}.
#   docker/build.sh [--flavour cpu|gpu|all] [--tag VERSION] [--registry PREFIX] [--push] [TOOL...]
# Images are named PREFIX/TOOL:VERSION (cpu) and PREFIX/TOOL:VERSION-gpu, e.g. slidemill/infer:0.1.0-gpu.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_ALL=(tile train infer postprocess merge-annotations to-qupath)
flavours=(cpu gpu)
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
        -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
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
        image="$registry/$tool:$version$suffix"
        echo "== $image"
        docker build -f docker/Dockerfile --target "$tool" \
            --build-arg BASE_IMAGE="$base" --build-arg FLAVOUR="$flavour" \
            --build-arg TORCH_INDEX_URL="$torch_index" -t "$image" .
        if [ "$push" = 1 ]; then docker push "$image"; fi
    done
done
