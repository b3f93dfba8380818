#!/usr/bin/env bash
# The capacity sweep (issue #12, the source article's second question: how much can the model hold
# before new facts push old ones out): for each N, `facts generate --n N` and `compare` of the
# strategies on them, in one ledger; prints a table per N and strategy of what the comparison pages
# show — final recall (teacher-forced and free), generalisation, locality, the general check's
# perplexity (with the base model's), first-quarter retention,
# tokens and seconds — read from `compare --json`, so every figure is a ledger run's — and writes
# the capacity page (`report --capacity`: the scores against N per strategy, and the collisions).
#
# usage: bench/capacity.sh [DEVICE]          DEVICE: cuda (default when a GPU is visible) or cpu
# Environment: INJ (our binary, default target/release/injector), MODEL (default: the embedded one),
# NS (default "100 300 1000 3000"), STRATEGIES (default "sequential,spaced:2,mixed"), WORK (a folder
# to keep and reuse: finished runs are found in its ledger and not trained again), EXTRA (more flags
# for `compare`, e.g. "--retention-every 50 --retention-sample 50", the default), LEDGER (default
# WORK/ledger.db; two sweeps at once, one per GPU, can share one ledger and so one capacity page),
# DTYPE (our --base-dtype, default auto: the runs of a work folder are found again only with the type
# they were made with).
set -euo pipefail
cd "$(dirname "$0")/.."
inj=$(realpath "${INJ:-target/release/injector}")
model=$(realpath "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}")
ns=${NS:-100 300 1000 3000}
strategies=${STRATEGIES:-sequential,spaced:2,mixed}
extra=${EXTRA:---retention-every 50 --retention-sample 50}
dev=${1:-}
if [ -z "$dev" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then dev=cuda; else dev=cpu; fi
fi
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
ledger=${LEDGER:-$work/ledger.db}
echo "capacity: device $dev, N in {$ns}, strategies $strategies, work folder $work" >&2
for n in $ns; do
  [ -d "$work/facts-$n" ] || "$inj" facts generate --n "$n" --seed 1 --out "$work/facts-$n" >/dev/null
  # shellcheck disable=SC2086
  "$inj" --device "$dev" --base-dtype "${DTYPE:-auto}" --model "$model" --ledger "$ledger" --reports "$work/reports" \
    compare "$work/facts-$n" --strategy "$strategies" $extra --json -q > "$work/compare-$n.json"
  echo "  N=$n: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['report'])" "$work/compare-$n.json")" >&2
done
python3 - "$work" $ns <<'PY'
import json, sys
work, ns = sys.argv[1], sys.argv[2:]
f = lambda v: "-" if v is None else f"{v:.3f}"
print("| N | strategy | run | final recall | free recall | generalisation | free generalisation | locality | perplexity (base) | first quarter | tokens | wall s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in ns:
    c = json.load(open(f"{work}/compare-{n}.json"))
    for r in c["runs"]:
        s = r["summary"]
        print(f"| {n} | {r['strategy']} | {r['run']} | {f(s['final_recall'])} | {f(s['final_free_recall'])} | "
              f"{f(s['final_general'])} | {f(s['final_free_general'])} | {f(s['locality'])} | "
              f"{f(s.get('perplexity'))} ({f(s.get('base_perplexity'))}) | "
              f"{f(s['first_quarter_recall'])} | {s['tokens']:,} | {s['wall_seconds']:.0f} |")
PY
# The capacity page (every run of the sweep against its N, and the collisions' template overlap).
runs=$(python3 -c "
import json, sys
print(','.join(r['run'] for n in sys.argv[1:] for r in json.load(open(f'$work/compare-{n}.json'))['runs']))" $ns)
"$inj" --ledger "$ledger" --reports "$work/reports" report --capacity "$runs" | sed -n 1p >&2
