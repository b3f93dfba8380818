#!/usr/bin/env bash
# Interop proof of `injector export` against the real libraries.
#   hf:   transformers and peft (tests/interop/check_hf.py, check_peft.py), pinned in
#         requirements.txt, installed into .venv (or the Python of INJECTOR_INTEROP_PYTHON): the
#         tiny-model checks (through tests/export_hf.rs and tests/export_adapters.rs, which make the
#         run and the exports) and the SmolLM2 check. About 4 minutes on 2 CPU cores after the first
#         install (~4 GB: torch's CUDA dependencies).
#   gguf: the gguf package and llama.cpp through llama-cpp-python (tests/interop/check_gguf.py),
#         pinned in requirements-gguf.txt, installed into GGUF_VENV (default
#         ~/.cache/injector/venv-gguf; the first install builds llama.cpp from source): the
#         tiny-model check (through tests/export_gguf.rs) and the SmolLM2 check.
#   Both SmolLM2 checks run twice: on a zero-step run (the base weights) and on a two-fact run
#   trained here (tests/interop/two-facts.yaml), whose exports must answer its facts' probes with
#   every key detail in transformers (f32) and llama.cpp (q8_0).
# PARTS="hf gguf" (the default) chooses; arguments go to both zero-step SmolLM2 checks (--ledger L
# --run R checks that run instead).
set -euo pipefail
cd "$(dirname "$0")/../.."
PARTS=${PARTS:-hf gguf}
GGUF_VENV=$(realpath -sm "${GGUF_VENV:-$HOME/.cache/injector/venv-gguf}")
# Absolute (not resolving the venv's symlink): the tests run it from temporary folders.
PY="$(realpath -s "${INJECTOR_INTEROP_PYTHON:-.venv/bin/python}")"
export INJECTOR_INTEROP_PYTHON="$PY"
cargo build --release
# A two-fact run trained to the end on the CPU (27 minutes on the 2 cores shared with other work: a
# new ledger's base answers, preservation set and projections, then two steps): both SmolLM2 checks
# run again on it,
# and their exports must answer its facts (issue #13). TRAINED_LEDGER and TRAINED_RUN reuse one.
if [[ -z "${TRAINED_RUN:-}" ]]; then
  trained=$(mktemp -d)
  mkdir "$trained/k" && cp tests/interop/two-facts.yaml "$trained/k/"
  TRAINED_LEDGER=$trained/l.db
  TRAINED_RUN=$(target/release/injector --ledger "$TRAINED_LEDGER" --device cpu --base-dtype f32 -q run "$trained/k" --json |
    python3 -c "import json, sys; print(json.load(sys.stdin)['run'])")
fi
if [[ " $PARTS " == *" hf "* ]]; then
  "$PY" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
  cargo test --release --test export_hf transformers -- --nocapture
  cargo test --release --test export_adapters peft -- --nocapture
  "$PY" tests/interop/check_hf.py smollm2 "$@"
  "$PY" tests/interop/check_hf.py smollm2 --ledger "$TRAINED_LEDGER" --run "$TRAINED_RUN"
fi
if [[ " $PARTS " == *" gguf "* ]]; then
  [[ -x "$GGUF_VENV/bin/python" ]] || python3 -m venv "$GGUF_VENV"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" nice -n 19 \
    "$GGUF_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements-gguf.txt
  INJECTOR_GGUF_PYTHON="$GGUF_VENV/bin/python" cargo test --release --test export_gguf llama_cpp -- --nocapture
  "$GGUF_VENV/bin/python" tests/interop/check_gguf.py smollm2 "$@"
  "$GGUF_VENV/bin/python" tests/interop/check_gguf.py smollm2 --ledger "$TRAINED_LEDGER" --run "$TRAINED_RUN"
fi
