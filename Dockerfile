# GPU image for the llama2-70b harness (built and started by launch.sh).
#
# CUDA 12.8 on Ubuntu 22.04 (Hopper needs CUDA >= 11.8), PyTorch's CUDA 12.8 build from PyPI and the
# harness's pinned dependencies (constraints.txt) in /opt/venv, a Python 3.11 environment owned by
# the host user. Ubuntu's own Python 3.10 stays beside it for the LiteML wheel (cp310 only), which
# build.sh installs into a separate environment. The repository is not copied in: launch.sh mounts
# it at its host path and build.sh installs it editable. Nothing is ever fetched from a model hub.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ARG USER_NAME=mlperf
ARG USER_UID=1000
ARG USER_GID=1000
# The default PyPI wheel of torch 2.9.1 for Linux x86_64 is the CUDA 12.8 build.
ARG TORCH_VERSION=2.9.1

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's packages are not version-pinned: the base image tag fixes the release, and pinning
# point versions breaks the build each time Ubuntu publishes a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev \
        python3.10 python3.10-venv python3.10-dev \
        build-essential git ca-certificates numactl \
    && rm -rf /var/lib/apt/lists/*

# The host user (launch.sh passes its name, uid and gid), reusing an existing group or user
# with the same id rather than failing on it.
RUN (getent group "${USER_GID}" || groupadd --gid "${USER_GID}" "${USER_NAME}") \
    && (getent passwd "${USER_UID}" \
        || useradd --create-home --shell /bin/bash --uid "${USER_UID}" --gid "${USER_GID}" "${USER_NAME}") \
    && install -d -o "${USER_UID}" -g "${USER_GID}" /opt/venv /opt/harness

USER ${USER_UID}:${USER_GID}
WORKDIR /opt/harness

COPY --chown=${USER_UID}:${USER_GID} pyproject.toml constraints.txt constraints-tf446.txt ./

# torch first, so that the project's `torch>=...` requirement is met by this CUDA build; then the
# project's dependencies (read from pyproject.toml), every version pinned by constraints.txt.
# mlcommons-loadgen comes as its PyPI wheel: no LoadGen source build.
RUN python3.11 -m venv /opt/venv \
    && python -m pip install --no-cache-dir "pip==26.3" \
    && python -m pip install --no-cache-dir -c constraints.txt "torch==${TORCH_VERSION}" \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['test']))" > requirements.txt \
    && python -m pip install --no-cache-dir -c constraints.txt -r requirements.txt \
    && python -c "import torch, transformers, mlperf_loadgen; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

CMD ["bash"]
