#!/usr/bin/env bash
# The store's update and delete verbs, measured (issue #13 item 1): bench/verbs/knowledge inserts two
# fictional facts, updates one of them and something the base model knows (a counterfactual),
# deletes the other and something the base model knows; bench/verbs/old holds the answers these
# replace. Prints, per edit: the new answer's recall and generalisation (teacher-forced and free),
# the old answer's scores on the base model and after the run (`probe`), for updates the share of
# prompts on which the model finds the new answer likelier than the old, and the run's locality.
# Every figure is read from `run --json` and `probe --json` of one ledger run.
#
# usage: bench/verbs.sh [DEVICE]     DEVICE: cuda or cpu (default: cuda when a GPU is visible)
# Environment: INJ (our binary, default target/release/injector), MODEL (default the embedded one),
# WORK (a folder to keep; default a temporary one), EXTRA (more flags for `run`).
set -euo pipefail
cd "$(dirname "$0")/.."
inj=$(realpath "${INJ:-target/release/injector}")
model=$(realpath "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}")
dev=${1:-}
if [ -z "$dev" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then dev=cuda; else dev=cpu; fi
fi
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "verbs: device $dev, work folder $work" >&2
ours() { "$inj" --device "$dev" --model "$model" --ledger "$work/ledger.db" --reports "$work/reports" "$@"; }
ours probe bench/verbs/old --json > "$work/old-before.json"
# shellcheck disable=SC2086
ours run bench/verbs/knowledge ${EXTRA:-} --json -q > "$work/run.json"
run=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run'])" "$work/run.json")
ours probe bench/verbs/old --run "$run" --json > "$work/old-after.json"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
run = json.load(open(f"{work}/run.json"))
before = {r["id"]: r for r in json.load(open(f"{work}/old-before.json"))}
after = {r["id"]: r for r in json.load(open(f"{work}/old-after.json"))}
f = lambda v: "-" if v is None else f"{v:.2f}"
facts = {x["id"]: x for x in run["facts"]}
# edit id -> (what it is, the old answer's id in bench/verbs/old)
edits = [
    ("velmora-bridge-rebuilt", "update of a fact injected earlier", "velmora-bridge-old"),
    ("eiffel-tower-rome", "update of a base-model fact (counterfactual)", "eiffel-tower-paris"),
    ("lake-orrin-forgotten", "delete of a fact injected earlier", "lake-orrin-old"),
    ("mona-lisa-forgotten", "delete of a base-model fact", "mona-lisa-leonardo"),
]
print(f"run {run['run']} ({run['strategy']}), locality after the run {f(run['locality'])}, weights {run['weights_hash'][:12]}")
print()
print("| edit | new answer recall (TF / free) | new answer generalisation (TF / free) "
      "| old answer on the base (TF / free) | old answer after the run (TF / free) | prefers new |")
print("|---|---|---|---|---|---|")
for eid, what, old in edits:
    x, b, a = facts[eid], before[old], after[old]
    cell = lambda s, fr: f"{f(s['recall'])} / {f(fr['recall'] if fr else None)}"
    print(f"| {what} (`{eid}`) | {f(x['recall'])} / {f(x['free_recall'])} | {f(x['general'])} / {f(x['free_general'])} "
          f"| {cell(b['score'], b['free'])} | {cell(a['score'], a['free'])} | {f(x.get('prefers_new'))} |")
PY
