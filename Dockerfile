# sftkit for NVIDIA GPUs: CUDA runtime, Python, a CUDA build of torch and the sftkit-llm wheel with its
# `gpu` extra (bitsandbytes, DeepSpeed) and `serve` extra (sft serve, sft console). Documented in docs/gpu.md.
#
#   docker build -t sftkit-llm .
#   docker run --rm --gpus all -v "$PWD":/work -v hf-cache:/cache/huggingface sftkit-llm train config.yaml
#
# Build arguments: CUDA_IMAGE (the base), TORCH_INDEX (torch's wheel index, matching the base's CUDA),
# EXTRAS (sftkit-llm extras), UID (the user id files in /work are written as; match yours for a bind mount).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
# tini as PID 1: signals reach sft (a bare PID 1 ignores the ones it has no handler for)
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv tini \
 && rm -rf /var/lib/apt/lists/*

# The wheel, built from this checkout exactly as `python -m build` builds it anywhere.
FROM base AS wheel
COPY pyproject.toml README.md README_zh.md MANIFEST.in /src/
COPY src /src/src
RUN python3 -m venv /build \
 && /build/bin/pip install --no-cache-dir build \
 && /build/bin/python -m build --wheel --outdir /dist /src

FROM base
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG EXTRAS=gpu,serve
ARG UID=1000
COPY --from=wheel /dist/ /tmp/dist/
# torch first, from the index that matches the CUDA runtime (PyPI's default build may target another);
# DS_BUILD_OPS=0: DeepSpeed compiles its ops on first use instead of at install (no nvcc in a runtime image)
RUN python3 -m venv /opt/sftkit \
 && /opt/sftkit/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" torch \
 && DS_BUILD_OPS=0 /opt/sftkit/bin/pip install --no-cache-dir \
      "sftkit-llm[$EXTRAS] @ file://$(ls /tmp/dist/sftkit_llm-*.whl)" \
 && rm -rf /tmp/dist

# A non-root user; Ubuntu's images already hold `ubuntu` with uid 1000.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid "$UID" sft \
 && mkdir -p /cache/huggingface /work \
 && chown sft:sft /cache /cache/huggingface /work

ENV PATH=/opt/sftkit/bin:$PATH \
    HF_HOME=/cache/huggingface \
    SFTKIT_HOME=/cache/sftkit \
    PYTHONUNBUFFERED=1
# Downloaded models outlive the container: `sft download` once, then train, eval and serve offline.
VOLUME ["/cache/huggingface"]
USER sft
WORKDIR /work
# sft serve --host 0.0.0.0 --api-key KEY (8000), sft console --host 0.0.0.0 (7860)
EXPOSE 8000 7860
# `docker stop` sends what Ctrl-C sends: sft train saves a checkpoint at the end of the step, then exits
# (give it time: docker stop -t 600); `sft train CONFIG --resume` continues
STOPSIGNAL SIGINT
ENTRYPOINT ["tini", "--", "sft"]
CMD ["--help"]
