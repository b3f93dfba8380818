#!/usr/bin/env bash
# One-run speed comparison on a GPU: our AdaLoRA training step (bench/train_step.rs, built with
# INJECTOR_CUDA=1) against the peer ../shared/peers/peft_bench.py, same shapes, same machine, same run.
# Several builds of ours can be given (to measure changes one by one); each is compared with the same
# peft run of its shape. Peak GPU memory is the process's own, polled from nvidia-smi every 100 ms.
# usage: bench/gpu_bench.sh PEFT_BENCH_PY TRAIN_STEP_BINARY... (SHAPES=a,b,c to choose shapes)
set -u
peer=$1; shift; shapes=${SHAPES:-smollm2-135m,smollm2-1.7b,llama-7b}
peak() { # peak used memory (MiB) of pid $1 while it runs
  local pid=$1 max=0 m
  while kill -0 "$pid" 2>/dev/null; do
    m=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | awk -F', ' -v p="$pid" '$1==p{print $2}')
    [ -n "$m" ] && [ "$m" -gt "$max" ] && max=$m
    sleep 0.1
  done
  echo "$max"
}
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" <<<"$2"; }
printf "| shape | build | ours ms/step | peft ms/step | speed-up | ours tokens/s | ours TFLOP/s | peft TFLOP/s | ours peak MiB | peft peak MiB | loss |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
for s in ${shapes//,/ }; do
  python3 "$peer" "$s" > /tmp/peer.$s 2>&1 & p=$!; mp=$(peak $p); wait $p
  q=$(grep "^$s " /tmp/peer.$s)
  if [ -z "$q" ]; then echo "| $s | peft failed: $(tail -2 /tmp/peer.$s | tr '\n' ' ') |"; continue; fi
  pm=$(field step_ms "$q")
  for ours in "$@"; do
    b=$(basename "$ours")
    "$ours" "$s" cuda > /tmp/ours.$s.$b 2>&1 & p=$!; mo=$(peak $p); wait $p
    o=$(grep "^$s " /tmp/ours.$s.$b)
    if [ -z "$o" ]; then echo "| $s | $b failed: $(tail -2 /tmp/ours.$s.$b | tr '\n' ' ') |"; continue; fi
    om=$(field step_ms "$o")
    printf "| %s | %s | %.1f | %.1f | %.2fx | %.0f | %.1f | %.1f | %s | %s | %s |\n" "$s" "$b" "$om" "$pm" "$(awk -v a="$pm" -v b="$om" 'BEGIN{print a/b}')" \
      "$(field tokens_per_s "$o")" "$(field tflops "$o")" "$(field tflops "$q")" "$mo" "$mp" "$(field loss "$o")"
  done
done
