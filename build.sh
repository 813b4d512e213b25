#!/usr/bin/env bash
# Install the harness and its pinned dependencies into the current Python environment (in the
# container: /opt/venv), keeping the torch that is already there (the image's CUDA build).
# When a liteml-*.whl lies in this folder, also create a separate environment with the Python that
# wheel is built for (cp310: 3.10) and transformers 4.46 (constraints-tf446.txt), and install the
# wheel and the harness there; LiteML runs (--liteml-config) use that environment.
#
# Usage: bash build.sh [--dry-run] [--no-liteml]
#   --dry-run    print what would be run instead of running it
#   --no-liteml  leave the LiteML environment alone even if a wheel is present
# Environment: PYTHON (main environment's interpreter, default python3), TORCH_SPEC (torch to install
#   where none is, default torch), LITEML_WHEEL_DIR (default: this folder), LITEML_VENV (default:
#   .venv-liteml here), LITEML_PYTHON (interpreter for it; default: found by version).

set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
LITEML_WHEEL_DIR="${LITEML_WHEEL_DIR:-$REPO_DIR}"
LITEML_VENV="${LITEML_VENV:-$REPO_DIR/.venv-liteml}"
DRY_RUN=0
LITEML=1

die() {
    echo "build.sh: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-liteml) LITEML=0 ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

# Print a command, quoted for a shell where needed (--dry-run), or run it.
run() {
    local arg words=() plain='^[][A-Za-z0-9_./:=,@%+-]+$'
    for arg in "$@"; do
        if [[ "$arg" =~ $plain ]]; then words+=("$arg"); else words+=("'${arg//\'/\'\\\'\'}'"); fi
    done
    if ((DRY_RUN)); then
        echo "${words[*]}"
    else
        echo "+ ${words[*]}" >&2
        "$@"
    fi
}

# "X.Y" of an interpreter, or nothing if it does not run (a pyenv shim for a missing version fails).
python_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

torch_version() {
    "$1" -c 'import torch; print(torch.__version__)' 2>/dev/null || true
}

# Check the main environment's interpreter; sets MAIN_VERSION.
check_main_python() {
    command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON': set PYTHON"
    MAIN_VERSION="$(python_version "$PYTHON")"
    # constraints.txt pins releases (numpy 2.4, pandas 3.1) that need Python 3.11 or newer.
    [[ "$MAIN_VERSION" =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] \
        || die "$PYTHON is Python ${MAIN_VERSION:-?}; the harness's pins need 3.11 or newer: set PYTHON"
}

install_main() {
    if [[ -n "$TORCH" ]]; then
        # Asking for exactly the installed build keeps it: pip fails rather than replace it.
        echo "build.sh: keeping the installed torch $TORCH" >&2
        run "$PYTHON" -m pip install -c "$REPO_DIR/constraints.txt" "torch==$TORCH" -e "${REPO_DIR}[test]"
    else
        run "$PYTHON" -m pip install -c "$REPO_DIR/constraints.txt" "${TORCH_SPEC:-torch}"
        run "$PYTHON" -m pip install -c "$REPO_DIR/constraints.txt" -e "${REPO_DIR}[test]"
        ((DRY_RUN)) || TORCH="$(torch_version "$PYTHON")"
    fi
    echo "build.sh: harness installed for $PYTHON (Python $MAIN_VERSION); use it for every run without --liteml-config" >&2
}

# Python version a wheel is built for, from its file name (liteml-25.0.0-cp310-cp310-linux_x86_64.whl
# -> 3.10); 3.10 for a pure-Python wheel, the version LiteML supports.
wheel_python() {
    local tag
    tag="$(basename "$1" .whl | awk -F- '{print $(NF-2)}')"
    tag="${tag%%.*}"
    if [[ "$tag" =~ ^cp3([0-9]+)$ ]]; then echo "3.${BASH_REMATCH[1]}"; else echo "3.10"; fi
}

# Set CREATE to the command that makes the LiteML environment with Python $1, or fail naming what to install.
find_venv_creator() {
    local want="$1" candidate root found
    if [[ -n "${LITEML_PYTHON:-}" ]]; then
        [[ "$(python_version "$LITEML_PYTHON")" == "$want" ]] \
            || die "LITEML_PYTHON=$LITEML_PYTHON is not Python $want, which the LiteML wheel needs"
        CREATE=("$LITEML_PYTHON" -m venv "$LITEML_VENV")
        return
    fi
    for candidate in "python$want" "/usr/bin/python$want"; do
        if [[ "$(python_version "$candidate")" == "$want" ]]; then
            CREATE=("$(command -v "$candidate")" -m venv "$LITEML_VENV")
            return
        fi
    done
    if command -v pyenv >/dev/null; then
        root="$(pyenv root)"
        found="$(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}(\.[0-9]+)?$" | tail -n 1 || true)"
        if [[ -n "$found" && "$(python_version "$root/versions/$found/bin/python$want")" == "$want" ]]; then
            CREATE=("$root/versions/$found/bin/python$want" -m venv "$LITEML_VENV")
            return
        fi
    fi
    # uv and conda fetch the interpreter themselves when it is missing (from their own download sites).
    if command -v uv >/dev/null; then
        CREATE=(uv venv --seed --python "$want" "$LITEML_VENV")
        return
    fi
    if command -v conda >/dev/null; then
        CREATE=(conda create -y -p "$LITEML_VENV" "python=$want" pip)
        return
    fi
    die "no Python $want for the LiteML wheel: install it (Ubuntu: apt-get install python$want-venv; or pyenv, uv, conda) or set LITEML_PYTHON"
}

# Find the LiteML wheel and how to make its environment; sets WHEEL (empty: none) and CREATE
# (empty: reuse the existing environment). Runs before anything is installed, so that a problem
# stops the script in its first second.
plan_liteml() {
    local wheels want
    WHEEL=""
    CREATE=()
    [[ -d "$LITEML_WHEEL_DIR" ]] \
        || die "LITEML_WHEEL_DIR=$LITEML_WHEEL_DIR is not a folder: set it to the folder holding the liteml-*.whl (unset: this repository)"
    shopt -s nullglob
    wheels=("$LITEML_WHEEL_DIR"/liteml-*.whl)
    shopt -u nullglob
    ((${#wheels[@]} <= 1)) || die "several LiteML wheels in $LITEML_WHEEL_DIR (${wheels[*]##*/}): keep one"
    ((${#wheels[@]} == 1)) || return 0
    WHEEL="${wheels[0]}"
    want="$(wheel_python "$WHEEL")"
    if [[ "$(python_version "$LITEML_VENV/bin/python")" == "$want" ]]; then
        echo "build.sh: reusing $LITEML_VENV (Python $want)" >&2
    else
        [[ -e "$LITEML_VENV" ]] && die "$LITEML_VENV exists but is not a Python $want environment: remove it"
        find_venv_creator "$want"
    fi
}

install_liteml() {
    local venv_py="$LITEML_VENV/bin/python" torch_spec="${TORCH_SPEC:-torch}"
    if [[ -z "$WHEEL" ]]; then
        echo "build.sh: no liteml-*.whl in $LITEML_WHEEL_DIR; LiteML environment not built" >&2
        return
    fi
    ((${#CREATE[@]} == 0)) || run "${CREATE[@]}"
    # The same torch release as the main environment (its CUDA build in the container), else TORCH_SPEC.
    [[ -z "${TORCH_SPEC:-}" && -n "$TORCH" ]] && torch_spec="torch==${TORCH%%+*}"
    run "$venv_py" -m pip install -c "$REPO_DIR/constraints-tf446.txt" "$torch_spec"
    run "$venv_py" -m pip install -c "$REPO_DIR/constraints-tf446.txt" "$WHEEL" -e "${REPO_DIR}[test]"
    # The real LiteML is told apart from an unrelated PyPI "liteml" by its submodules (QUANT.md).
    run "$venv_py" -c 'import liteml.ailabs_liteml.retrainer, transformers; print("LiteML with transformers", transformers.__version__)' \
        || run "$venv_py" -c 'import liteml.retrainer, transformers; print("LiteML (0.2 API) with transformers", transformers.__version__)' \
        || die "the wheel provides neither liteml.ailabs_liteml.retrainer nor liteml.retrainer (is it Ceva's LiteML?)"
    echo "build.sh: LiteML environment ready: use $venv_py (or: source $LITEML_VENV/bin/activate) for --liteml-config runs" >&2
}

check_main_python
WHEEL=""
((LITEML)) && plan_liteml
TORCH="$(torch_version "$PYTHON")"
install_main
((LITEML)) && install_liteml
exit 0
