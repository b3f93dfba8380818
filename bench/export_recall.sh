#!/usr/bin/env bash
# Does knowledge survive the way out? (issue #13 item 5.) A run's final weights exported at each type,
# loaded back and scored: teacher-forced recall and generalisation, and free decoding's key-detail
# recall on the training prompts and on the probes, beside the run's own figures from the ledger and
# the base model's (nothing injected).
#   injector: `injector --model EXPORT probe DIR --json` — injector's loader (quantised types are
#             dequantised to f32) on the file as exported.
#   llama.cpp: bench/llama_cpp_answers.py decodes the same prompts greedily in llama.cpp
#             (llama-cpp-python; the file's chat template; with q8_0/q4_1 weights llama.cpp also
#             rounds the activations to 8 bits) and `injector score-answers` scores the answers, so
#             both columns share one metric.
# Prints a markdown table and writes it to WORK/export_recall.md; every file it read stays in WORK.
#
# usage: bench/export_recall.sh [DEVICE]     DEVICE: cuda or cpu (default: cuda when a GPU is visible)
# Environment: INJ (our binary, default target/release/injector); WORK (a folder to keep; default a
# temporary one); LEDGER and RUN (score that recorded run; default: train KNOWLEDGE into
# WORK/ledger.db, or find that run finished there); KNOWLEDGE (default knowledge/); TYPES (default
# "hf:f32 gguf:f32 gguf:bf16 gguf:f16 gguf:q8_0 gguf:q4_1"; FORMAT:TYPE, and an EXPORT_FLAGS_<name>
# variable's flags are added for a type spelt FORMAT:TYPE:name); GGUF_VENV (the Python environment
# with llama-cpp-python, as tests/interop/run.sh; default ~/.cache/injector/venv-gguf; NO_LLAMA=1
# skips llama.cpp); DTYPE (our --base-dtype: default f32 on the CPU, so that the exports are loaded
# as written and the run is the fp32 one of the README's table; auto on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
inj=$(realpath "${INJ:-target/release/injector}")
knowledge=${KNOWLEDGE:-knowledge/}
types=${TYPES:-hf:f32 gguf:f32 gguf:bf16 gguf:f16 gguf:q8_0 gguf:q4_1}
py=${GGUF_VENV:-$HOME/.cache/injector/venv-gguf}/bin/python
dev=${1:-}
if [ -z "$dev" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then dev=cuda; else dev=cpu; fi
fi
work=$(realpath "${WORK:-$(mktemp -d)}")
mkdir -p "$work"
ledger=$(realpath "${LEDGER:-$work/ledger.db}")
echo "export_recall: device $dev, work folder $work, ledger $ledger" >&2
dtype=${DTYPE:-$([ "$dev" = cpu ] && echo f32 || echo auto)}
ours() { "$inj" --device "$dev" --base-dtype "$dtype" --ledger "$ledger" --reports "$work/reports" "$@"; }
secs() { local t0=$SECONDS; "$@"; echo "  $(($SECONDS - t0)) s: ${*: -3}" >&2; }

run=${RUN:-}
if [ -z "$run" ]; then
  # A second call finds the run finished in the ledger and trains nothing.
  ours run "$knowledge" --json -q > "$work/run.json"
  run=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run'])" "$work/run.json")
fi
ours ledger show "$run" --json > "$work/ledger-show.json"
run=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run']['id'])" "$work/ledger-show.json")
model=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run']['model_path'])" "$work/ledger-show.json")
ours facts resolve "$knowledge" --out "$work/facts.yaml" >/dev/null
echo "run $run, model $model" >&2

# name, what it is, the model file or folder injector loads, the GGUF file llama.cpp loads (or -)
rows=()
probe() { # NAME MODEL [--run RUN]
  local name=$1 m=$2; shift 2
  [ -s "$work/probe-$name.json" ] ||
    secs ours --model "$m" probe "$knowledge" "$@" --locality "$run" --json > "$work/probe-$name.json"
}
llama() { # NAME GGUF
  [ "${NO_LLAMA:-}" = 1 ] && return
  if [ ! -s "$work/llama-$1.json" ]; then
    secs "$py" bench/llama_cpp_answers.py "$2" "$work/facts.yaml" \
      --answers "$work/answers-$1.json" --tf "$work/llama-tf-$1.json" 2>"$work/llama-$1.log"
    ours score-answers "$knowledge" "$work/answers-$1.json" > "$work/llama-$1.json"
  fi
}
probe base "$model"
llama base "$model"
rows+=("base|the base model, nothing injected (\`$(basename "$model")\`)")
probe run "$model" --run "$run"
rows+=("run|injector at the run's replayed fp32 weights (\`probe --run\`)")
for spec in $types; do
  IFS=: read -r format ty variant <<<"$spec"
  name=$format-$ty${variant:+-$variant}
  flags_var=EXPORT_FLAGS_${variant:-none}
  # shellcheck disable=SC2206
  flags=(${!flags_var:-})
  out=$work/export-$name
  [ -d "$out" ] || secs ours export "$run" --out "$out" --format "$format" --dtype "$ty" "${flags[@]}" 2>"$work/export-$name.log"
  file=$out
  [ "$format" = gguf ] && file=$out/model.gguf
  probe "$name" "$file"
  [ "$format" = gguf ] && llama "$name" "$file"
  size=$(du -sb "$out" | cut -f1)
  rows+=("$name|\`export --format $format --dtype $ty${flags[*]:+ ${flags[*]}}\` ($((size / 1000000)) MB)")
done

python3 - "$work" "$run" "${rows[@]}" <<'PY' | tee "$work/export_recall.md"
import json, os, sys
work, run, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
load = lambda n: json.load(open(f"{work}/{n}")) if os.path.exists(f"{work}/{n}") else None
mean = lambda v: sum(v) / len(v) if v else None
f = lambda v: "—" if v is None else f"{v:.3f}"

def ours(out):
    rows = out["facts"]
    return (mean([r["score"]["recall"] for r in rows]), mean([r["score"]["general"] for r in rows]),
            mean([r["free"]["recall"] for r in rows]), mean([r["free"]["general"] for r in rows]), out["locality"])

def llama(name):
    tf, free = load(f"llama-tf-{name}.json"), load(f"llama-{name}.json")
    if tf is None or free is None:
        return (None,) * 4
    return (mean([r["recall"] for r in tf]), mean([r["general"] for r in tf]),
            mean([r["free"]["recall"] for r in free]), mean([r["free"]["general"] for r in free]))

show = load("ledger-show.json")
# The run's own figures: each fact's last scores in the ledger (the check after the last step).
top = max(p["step"] for p in show["probes"])
last = {p["fact"]: p for p in show["probes"] if p["step"] == top}
recorded = [mean([p[k] for p in last.values()]) for k in ("recall", "general", "free_recall", "free_general")]
recorded.append(dict((s, v) for s, v in show["locality"])[top])
print(f"Run `{run}` ({len(last)} facts), weights `{show['run']['weights_hash'][:12]}`. Means over the facts; "
      "TF: teacher-forced token accuracy; free: key-detail recall of greedy answers (training prompts / probes); "
      "locality: the run's own metric (its base model's answers to 32 unrelated prompts) on the weights of the row.")
print()
print("| weights | injector: recall (TF) | general (TF) | free recall | free general | locality "
      "| llama.cpp: recall (TF) | general (TF) | free recall | free general |")
print("|---|---|---|---|---|---|---|---|---|---|")
print("| the run as recorded in the ledger | " + " | ".join(map(f, recorded)) + " | | | | |")
for row in rows:
    name, what = row.split("|", 1)
    print(f"| {what} | " + " | ".join(map(f, ours(load(f"probe-{name}.json")) + llama(name))) + " |")
PY
