#!/usr/bin/env bash
# End to end, as a user runs it: seconds per injected fact from process start to end (model load,
# base answers, training, evaluation, ledger and report included), where the time went (the phases
# the ledger records), recall and locality; ours against the peer ../shared/peers/peft_inject.py
# (HF transformers + peft AdaLoRA, the source article's settings) on the same generated facts, in one
# run on one machine.
#
# usage: bench/e2e.sh [DEVICE]      DEVICE: cuda (default when a GPU is visible) or cpu
#   On cuda: 40 generated facts (peer; ours --preset article; ours with the defaults), the 13 shipped
#   facts, then ours alone on 1,000 generated facts (defaults, --retention-every 50
#   --retention-sample 50). On cpu: the same at 6 facts, and no 1,000-fact row.
# Environment: INJ (our binary, default target/release/injector), MODEL (the GGUF, default the
# embedded one), PEER (default ../shared/peers/peft_inject.py), PEER_PYTHON (a Python with torch,
# transformers, peft, gguf, pyyaml; default python3), N (overrides the facts count), BIG (overrides
# 1000; 0 skips that row), ROWS (which rows to run, default peer,article,default,shipped,big),
# WORK (a work folder to keep and reuse: rows already in its times file are not run again), DTYPE
# (our --base-dtype: auto, f32 or bf16; default auto).
set -euo pipefail
cd "$(dirname "$0")/.."
inj=$(realpath "${INJ:-target/release/injector}")
model=$(realpath "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}")
py=${PEER_PYTHON:-python3}
peer=$(realpath "${PEER:-../shared/peers/peft_inject.py}")
rows=",${ROWS:-peer,article,default,shipped,big},"
dev=${1:-}
if [ -z "$dev" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then dev=cuda; else dev=cpu; fi
fi
if [ "$dev" = cuda ]; then n=${N:-40}; big=${BIG:-1000}; else n=${N:-6}; big=${BIG:-0}; fi
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "e2e: device $dev, $n facts, work folder $work" >&2

# Runs a command (when its row is asked for and not yet in $work/times), appending "label seconds"
# (process start to end) to $work/times.
timed() {
  local label=$1; shift
  local t0 t1
  [[ $rows == *",$label,"* ]] || return 0
  grep -q "^$label " "$work/times" && return 0
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  echo "$label $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" >> "$work/times"
}
touch "$work/times"
[ -d "$work/facts" ] || "$inj" facts generate --n "$n" --seed 0 --out "$work/facts" >/dev/null
[ -f "$work/facts.yaml" ] || "$inj" facts resolve "$work/facts" --out "$work/facts.yaml" >/dev/null
ours() { "$inj" --device "$dev" --base-dtype "${DTYPE:-auto}" --model "$model" --ledger "$work/ledger.db" --reports "$work/reports" "$@"; }

timed peer "$py" "$peer" "$model" "$work/facts.yaml" --mode sequential > "$work/peer.log" 2> "$work/peer.err"
timed article ours run "$work/facts" --preset article --json -q > "$work/article.json"
timed default ours run "$work/facts" --json -q > "$work/default.json"
timed shipped ours run knowledge --json -q > "$work/shipped.json"
if [ "$big" -gt 0 ]; then
  [ -d "$work/big" ] || "$inj" facts generate --n "$big" --seed 1 --out "$work/big" >/dev/null
  timed big ours run "$work/big" --retention-every 50 --retention-sample 50 --json -q > "$work/big.json"
fi

"$py" - "$work" "$n" "$big" "$dev" <<'PY'
import json, sys
work, n, big, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
times = dict(l.split() for l in open(f"{work}/times"))
peer_wall = None
print(f"device {dev}; seconds per fact from process start to end (model load, evaluation, ledger and report included)")
print()
print("| run | facts | s per fact | vs peer | training s per fact | final recall | final generalisation | free recall / generalisation | locality | where the time went |")
print("|---|---|---|---|---|---|---|---|---|---|")
if "peer" in times:
    rows = [json.loads(l) for l in open(f"{work}/peer.log") if l.startswith("{")]
    peer_final = [r for r in rows if "mode" in r][0]
    peer_steps = [r for r in rows if "step" in r]
    peer_wall = float(times["peer"]) / n
    print(f"| peer: peft, article settings | {n} | {peer_wall:.2f} | 1.0x | {sum(r['secs'] for r in peer_steps)/n:.2f} | "
          f"{peer_final['final_train_acc']:.3f} | {peer_final['final_probe_acc']:.3f} | | {peer_final['locality']:.3f} (its 6 prompts) | |")
def shares(o):
    parts = dict(o["fixed"]); parts.pop("plan", None)
    parts.update(o["step_phases"])
    parts["plan"] = o["fixed"]["plan"]
    total = sum(parts.values()) or 1
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k} {v/total:.0%}" for k, v in top)
for label, name, count in [("ours: --preset article", "article", n), ("ours: defaults", "default", n),
                           ("ours: defaults, 13 shipped facts", "shipped", 13), (f"ours: defaults, {big} facts, retention every 50 (sample 50)", "big", big)]:
    if name not in times:
        continue
    o = json.load(open(f"{work}/{name}.json"))
    facts = o["facts"]
    wall = float(times[name]) / len(facts)
    sp = o["step_phases"]
    train = (sp["setup"] + sp["warmup"] + sp["train"]) / len(facts)
    m = lambda k: sum(f[k] for f in facts if f[k] is not None) / max(1, sum(1 for f in facts if f[k] is not None))
    ratio = f"{peer_wall / wall:.1f}x" if count == n and peer_wall else ""
    loc = o["locality"]
    means = o.get("means", {})
    free = " / ".join("-" if means.get(k) is None else f"{means[k]:.3f}" for k in ("free_recall", "free_general"))
    print(f"| {label} | {len(facts)} | {wall:.3f} | {ratio} | {train:.3f} | {m('recall'):.3f} | {m('general'):.3f} | "
          f"{free} | {loc:.3f} | {shares(o)} |")
    print(f"  {name}: process {float(times[name]):.1f} s, run {o['run']}", file=sys.stderr)
PY
