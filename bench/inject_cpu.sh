#!/usr/bin/env bash
# Seconds per injected fact and recall, ours vs the peer ../shared/peers/peft_inject.py (HF transformers
# + peft AdaLoRA, the source article's settings), on the same facts, on this machine's CPU, in one run.
# usage: bench/inject_cpu.sh [N_FACTS (default 3)]
# The peer needs torch, transformers, peft, gguf, pyyaml and accelerate: PEER_PYTHON names a Python that
# has them; otherwise .venv-peer is made (a large download: torch with its CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
inj=./target/release/injector
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$inj" ] && [ -f "$model" ] || { echo "run 'bash setup.sh' first" >&2; exit 2; }
py=${PEER_PYTHON:-}
if [ -z "$py" ]; then
  if [ ! -x .venv-peer/bin/python ]; then
    python3 -m venv .venv-peer
    .venv-peer/bin/pip install -q torch==2.11.0 transformers peft gguf pyyaml accelerate
  fi
  py=.venv-peer/bin/python
fi
work=$(mktemp -d)
"$inj" facts resolve knowledge --out "$work/all.yaml" >/dev/null
"$py" - "$work" "$n" <<'PY'
import sys, yaml
work, n = sys.argv[1], int(sys.argv[2])
d = yaml.safe_load(open(f"{work}/all.yaml"))
d["facts"] = d["facts"][:n]
yaml.safe_dump(d, open(f"{work}/facts.yaml", "w"), allow_unicode=True)
PY
echo "facts: $n (the first of knowledge/), CPU threads: $(nproc)" >&2
t0=$(date +%s.%N)
"$py" ../shared/peers/peft_inject.py "$model" "$work/facts.yaml" --mode sequential > "$work/peer.log" 2>/dev/null
t1=$(date +%s.%N)
"$inj" run "$work/facts.yaml" --ledger "$work/ours.db" --reports "$work/rep" --json -q > "$work/ours.json"
t2=$(date +%s.%N)
"$inj" run "$work/facts.yaml" --ledger "$work/art.db" --reports "$work/rep" --json -q --preset article > "$work/art.json"
t3=$(date +%s.%N)
"$py" - "$work" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys
work, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
rows = [json.loads(l) for l in open(f"{work}/peer.log") if l.startswith("{")]
steps = [r for r in rows if "step" in r]
final = [r for r in rows if "mode" in r][0]
n = len(steps)
print("| tool (settings) | seconds per fact (training) | seconds per fact (whole run) | optimizer steps per fact | recall right after (mean) | final recall | final generalisation | locality |")
print("|---|---|---|---|---|---|---|---|")
print(f"| peer: peft, article (q/v, alpha 32, stop at 0.9 checked every 5 steps) | {sum(r['secs'] for r in steps)/n:.1f} | {(t1-t0)/n:.1f} | "
      f"{sum(r['opt_steps'] for r in steps)/n:.1f} | {sum(r['train_acc'] for r in steps)/n:.2f} | {final['final_train_acc']:.2f} | "
      f"{final['final_probe_acc']:.2f} | {final['locality']:.2f} (6 prompts) |")
for name, f, dt in [("ours: default (MLP, alpha 32, KL preservation 4, stop at 1.0)", "ours.json", t2 - t1),
                    ("ours: --preset article (the peer's settings)", "art.json", t3 - t2)]:
    o = json.load(open(f"{work}/{f}"))
    facts = o["facts"]
    m = lambda k: sum(x[k] for x in facts if x[k] is not None) / len(facts)
    db = f"{work}/{f.replace('.json', '.db')}"
    import sqlite3
    c = sqlite3.connect(db)
    opt, secs = c.execute("SELECT AVG(optimizer_steps), AVG(seconds) FROM steps").fetchone()
    print(f"| {name} | {secs:.1f} | {dt/len(facts):.1f} | {opt:.1f} | {m('recall_at_step'):.2f} | {m('recall'):.2f} | "
          f"{m('general'):.2f} | {o['locality']:.2f} (32 prompts) |")
PY
rm -rf "$work"
