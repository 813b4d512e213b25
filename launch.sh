#!/usr/bin/env bash
# Build the harness's GPU image (Dockerfile) and start a shell in it with every GPU, the host's
# IPC namespace, the host user, and the folders below mounted at the same paths as on the host.
#
# Usage: bash launch.sh [--dry-run] [--no-build] [-- COMMAND ...]
#   --dry-run   print the docker commands instead of running them
#   --no-build  reuse the image built last time
#   COMMAND     what to run in the container (default: an interactive bash)
# Environment: CHECKPOINT_PATH (model folder), DATASET_PATH (processed pickle), IMAGE (image tag),
#   TORCH_VERSION (PyPI torch release baked into the image; default: the Dockerfile's).

# Volume mounts, each "HOST_PATH" (mounted at the same path) or "HOST_PATH:CONTAINER_PATH".
# Add your own folders here (a raid space, a results folder). The repository is always mounted.
MOUNTS=(
    "${CHECKPOINT_PATH:-/raid/data/llama2/Llama-2-70b-chat-hf}"
    "$(dirname "${DATASET_PATH:-/raid/data/llama2/open_orca/open_orca_gpt4_tokenized_llama.sampled_24576.pkl}")"
)

set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The default tag is the user name as docker accepts it in a tag (a directory's jdoe@corp.example.com is not).
USER_TAG="$(id -un)"
USER_TAG="${USER_TAG//[^A-Za-z0-9_.-]/-}"
[[ "$USER_TAG" =~ ^[A-Za-z0-9_] ]] || USER_TAG="_${USER_TAG}"
IMAGE="${IMAGE:-mlperf-llama2:${USER_TAG:0:128}}"
DRY_RUN=0
BUILD=1
COMMAND=(bash)

die() {
    echo "launch.sh: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-build) BUILD=0 ;;
        --) shift; COMMAND=("$@"); break ;;
        -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
((${#COMMAND[@]})) || COMMAND=(bash)

# Print a command, quoted for a shell where needed (--dry-run), or run it.
run() {
    if ((DRY_RUN)); then
        local arg words=()
        for arg in "$@"; do
            if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then words+=("$arg"); else words+=("'${arg//\'/\'\\\'\'}'"); fi
        done
        echo "${words[*]}"
    else
        "$@"
    fi
}

# A field of a --mount value, which docker reads as one CSV record: quoted where the path holds a comma or a quote.
mount_field() {
    if [[ "$1" == *[,\"]* ]]; then printf '"%s"' "${1//\"/\"\"}"; else printf '%s' "$1"; fi
}

# Each target once: docker refuses two mounts at one target ("Duplicate mount point"), as when the dataset lies
# in the repository or in the model folder; the same folder listed twice is mounted once.
MOUNT_FLAGS=()
declare -A MOUNTED=()
add_mount() {
    local source_path="$1" target_path="$2"
    while [[ "$source_path" == ?*/ ]]; do source_path="${source_path%/}"; done
    while [[ "$target_path" == ?*/ ]]; do target_path="${target_path%/}"; done
    if [[ -n "${MOUNTED[$target_path]+set}" ]]; then
        [[ "${MOUNTED[$target_path]}" == "$source_path" ]] && return 0
        die "two folders mounted at $target_path: ${MOUNTED[$target_path]} and $source_path: drop one from MOUNTS at the top of launch.sh"
    fi
    MOUNTED[$target_path]="$source_path"
    MOUNT_FLAGS+=(--mount "type=bind,$(mount_field "source=${source_path}"),$(mount_field "target=${target_path}")")
}

add_mount "$REPO_DIR" "$REPO_DIR"
for mount in "${MOUNTS[@]}"; do
    # "HOST_PATH:CONTAINER_PATH", unless the whole entry is a path that exists (a folder whose name holds a colon).
    source_path="$mount"
    target_path="$mount"
    if [[ "$mount" == *:* && ! -e "$mount" ]]; then
        source_path="${mount%%:*}"
        target_path="${mount#*:}"
    fi
    [[ "$source_path" == /* && "$target_path" == /* ]] || die "mount '$mount' is not an absolute path: docker needs absolute paths"
    [[ -e "$source_path" ]] || die "mount source '$source_path' does not exist: set CHECKPOINT_PATH / DATASET_PATH or edit MOUNTS at the top of launch.sh"
    add_mount "$source_path" "$target_path"
done

# The image's user is the host user, so files written to the mounts belong to whoever launched it.
BUILD_CMD=(docker build
    --build-arg "USER_NAME=$(id -un)"
    --build-arg "USER_UID=$(id -u)"
    --build-arg "USER_GID=$(id -g)"
    -t "$IMAGE" -f "${REPO_DIR}/Dockerfile")
[[ -n "${TORCH_VERSION:-}" ]] && BUILD_CMD+=(--build-arg "TORCH_VERSION=${TORCH_VERSION}")
BUILD_CMD+=("$REPO_DIR")

# The run scripts read these; the paths are the same inside, so they pass through unchanged.
ENV_FLAGS=()
for name in CHECKPOINT_PATH DATASET_PATH; do
    [[ -n "${!name:-}" ]] && ENV_FLAGS+=(-e "${name}=${!name}")
done

TTY_FLAGS=(-i)
[[ -t 0 && -t 1 ]] && TTY_FLAGS=(-it)
RUN_CMD=(docker run --rm "${TTY_FLAGS[@]}"
    --gpus all
    --ipc=host
    --ulimit memlock=-1 --ulimit stack=67108864
    -u "$(id -u):$(id -g)"
    -e HF_HUB_OFFLINE=1
    "${ENV_FLAGS[@]}"
    -w "$REPO_DIR"
    "${MOUNT_FLAGS[@]}"
    "$IMAGE"
    "${COMMAND[@]}")

((BUILD)) && run "${BUILD_CMD[@]}"
run "${RUN_CMD[@]}"
