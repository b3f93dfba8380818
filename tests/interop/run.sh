#!/usr/bin/env bash
# Interop proof of `injector export --format hf [--adapters]` against the real transformers and peft
# (tests/interop/check_hf.py, check_peft.py): installs the pinned requirements into .venv (or the
# Python of INJECTOR_INTEROP_PYTHON), builds, then runs the tiny-model checks (through
# tests/export_hf.rs and tests/export_adapters.rs, which make the run and the exports) and the
# SmolLM2 check. About 4 minutes on 2 CPU cores after the first install (~4 GB: torch's CUDA
# dependencies).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${INJECTOR_INTEROP_PYTHON:-.venv/bin/python}"
export INJECTOR_INTEROP_PYTHON="$PY"
"$PY" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
cargo build --release
cargo test --release --test export_hf transformers -- --nocapture
cargo test --release --test export_adapters peft -- --nocapture
"$PY" tests/interop/check_hf.py smollm2 "$@"
