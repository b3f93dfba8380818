#!/usr/bin/env bash
# Interop proof of `injector export --format hf` against the real transformers (tests/interop/check_hf.py):
# installs the pinned requirements into .venv, builds, then runs the tiny-model check (through
# tests/export_hf.rs, which makes the run and the export) and the SmolLM2 check. About 3 minutes on
# 2 CPU cores after the first install (~4 GB: torch's CUDA dependencies).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
cargo build --release
cargo test --release --test export_hf transformers -- --nocapture
.venv/bin/python tests/interop/check_hf.py smollm2 "$@"
