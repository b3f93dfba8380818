#!/usr/bin/env bash
# Issue #12's acceptance at scale, per seed of generated facts: N facts (`facts generate --n N
# --seed S`) taken one at a time with a recipe (RECIPE, default session 17's), against plain
# sequential on the same facts for the token budget; prints one row per seed with the five
# conditions — recall ≥ 0.95, free recall ≥ 0.9, generalisation ≥ 0.9, locality ≥ 0.9, tokens ≤ 2×
# plain sequential's — the locality of the stream (after the last fact, before a closing
# consolidation) and a verdict. Every figure is read from the runs' `run --json` and the ledger.
#
# usage: bench/issue12.sh [DEVICE]           DEVICE: cuda (default when a GPU is visible) or cpu
# Environment: INJ (our binary, default target/release/injector), MODEL (default: the embedded
# one), N (default 1000), SEEDS (default "1 2 3"), RECIPE (the flags of the run under test),
# EVAL (flags of both runs, default "--retention-every 50 --retention-sample 50"), WORK (a folder
# to keep and reuse: its facts and ledger; a run already finished there is not trained again, as
# `run` finds it by its key), PLAIN_TOKENS ("S:TOKENS …": plain sequential's tokens at seed S,
# measured before, so that run is skipped; e.g. "1:6792100 2:6803800 3:6601649", README Capacity,
# sessions 15–16, for N = 1000 and the default EVAL on the embedded model).
# On one H200 a seed takes ~6 minutes for the recipe and ~4 for the plain run.
set -euo pipefail
cd "$(dirname "$0")/.."
inj=$(realpath "${INJ:-target/release/injector}")
model=$(realpath "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}")
n=${N:-1000}
seeds=${SEEDS:-1 2 3}
recipe=${RECIPE:---protect 2 --protect-mean --preserve-prompts 256 --consolidate --consolidate-epochs 20 --consolidate-prompts 2}
eval_flags=${EVAL:---retention-every 50 --retention-sample 50}
dev=${1:-}
if [ -z "$dev" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then dev=cuda; else dev=cpu; fi
fi
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
ledger=$work/ledger.db
inject() { "$inj" --device "$dev" --model "$model" --ledger "$ledger" --reports "$work/reports" "$@"; }
echo "issue12: device $dev, N $n, seeds {$seeds}, recipe: $recipe; work folder $work" >&2
for s in $seeds; do
  facts=$work/facts-$n-s$s
  [ -d "$facts" ] || "$inj" facts generate --n "$n" --seed "$s" --out "$facts" >/dev/null
  known=$(for kv in ${PLAIN_TOKENS:-}; do [ "${kv%%:*}" = "$s" ] && echo "${kv#*:}"; done; true)
  if [ -z "$known" ]; then
    # shellcheck disable=SC2086
    inject run "$facts" $eval_flags --json > "$work/plain-s$s.json"
  else
    echo "{\"given_tokens\": $known}" > "$work/plain-s$s.json"
  fi
  # shellcheck disable=SC2086
  inject run "$facts" $eval_flags $recipe --json > "$work/recipe-s$s.json"
  echo "  seed $s: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run'])" "$work/recipe-s$s.json")" >&2
done
python3 - "$work" "$ledger" "$n" $seeds <<'PY'
import json, sqlite3, sys
work, ledger, n, seeds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
def tokens(run):
    return db.execute("SELECT SUM(tokens) FROM steps WHERE run = ?", (run,)).fetchone()[0]
def stream_locality(run):
    # The locality after the last fact's step (index n - 1); the closing consolidation comes after.
    row = db.execute("SELECT value FROM locality WHERE run = ? AND step = ?", (run, n - 1)).fetchone()
    return row[0] if row else None
f = lambda v: "-" if v is None else f"{v:.3f}"
print("| seed | run | recall | free recall | generalisation | free generalisation | locality: stream → end | tokens (× plain) | verdict |")
print("|---|---|---|---|---|---|---|---|---|")
for s in seeds:
    r = json.load(open(f"{work}/recipe-s{s}.json"))
    p = json.load(open(f"{work}/plain-s{s}.json"))
    plain = p.get("given_tokens") or tokens(p["run"])
    m, ratio = r["means"], tokens(r["run"]) / plain
    checks = {
        "recall": m["recall"] >= 0.95,
        "free": (m.get("free_recall") or 0) >= 0.9,
        "generalisation": (m.get("general") or 0) >= 0.9,
        "locality": (r.get("locality") or 0) >= 0.9,
        "tokens": ratio <= 2.0,
    }
    missed = [k for k, ok in checks.items() if not ok]
    verdict = "all five met" if not missed else "missed: " + ", ".join(missed)
    print(f"| {s} | {r['run']} | {f(m['recall'])} | {f(m.get('free_recall'))} | {f(m.get('general'))} | "
          f"{f(m.get('free_general'))} | {f(stream_locality(r['run']))} → {f(r.get('locality'))} | "
          f"{tokens(r['run']):,} ({ratio:.3f}×) | {verdict} |")
PY
