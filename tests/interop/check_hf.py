"""Interop proof for `injector export --format hf`: transformers loads the export with
AutoModelForCausalLM and AutoTokenizer and computes what injector computes.

  tiny     an export of a tiny random model's 3-step run (made by tests/export_hf.rs): the chat
           prompt's token ids equal injector's, and the fp32 logits at every position equal
           injector's on the replayed run (`injector logits --run`) within 1e-4.
  smollm2  the embedded SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): a run's weights exported at
           f32 — by default a run with no committed step (a one-fact run stopped with SIGKILL as
           soon as the ledger records it: the base weights, through the same replay, hash check and
           export; no training), or any recorded run with --ledger and --run — then transformers'
           ids and fp32 logits on one prompt match injector's within 1e-3, and its greedy answer to
           "What is the capital of France?" names Paris. For a run with steps, also: its greedy
           answers to the probes of at least two injected facts carry every key detail (injector's
           key-detail recall, through `injector score-answers`).

Requirements: tests/interop/requirements.txt (into the repo's .venv). Exit status 0 when every
check passes, 1 otherwise; each check prints one line.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from common import injected_facts_answered, injector, zero_step_run

REPO = Path(__file__).resolve().parents[2]
FAILED = []


def check(ok, what):
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    if not ok:
        FAILED.append(what)


def chat_ids(tok, prompt):
    """The ids of one user turn with the assistant's opening, as transformers renders it."""
    out = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def load(export):
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    model.eval()
    return tok, model


def compare_logits(tok, model, prompt, injector_json, tol):
    """Ids and logits of transformers against injector's `logits` JSON; returns the max |diff|."""
    ids = chat_ids(tok, prompt)
    check(ids == injector_json["ids"], f"token ids equal injector's ({len(ids)} tokens)")
    with torch.no_grad():
        logits = model(torch.tensor([injector_json["ids"]])).logits[0].float()
    theirs = torch.tensor(injector_json["logits"], dtype=torch.float32)
    ours = logits[injector_json["from"]:]
    check(ours.shape == theirs.shape, f"logits shape {tuple(ours.shape)}")
    diff = (ours - theirs).abs().max().item()
    check(diff <= tol, f"max |logit difference| {diff:.3g} <= {tol:g} over {ours.numel()} logits")
    same_argmax = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
    check(same_argmax, "same argmax at every position")
    return diff


def greedy(tok, model, prompt, n):
    ids = chat_ids(tok, prompt)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
        )
    return tok.decode(out[0][len(ids):], skip_special_tokens=True)


def tiny(args):
    tok, model = load(args.export)
    check(type(model).__name__ == "LlamaForCausalLM", f"AutoModelForCausalLM gives {type(model).__name__}")
    with open(args.logits) as f:
        theirs = json.load(f)
    compare_logits(tok, model, args.prompt, theirs, 1e-4)


def smollm2(args):
    work = Path(args.work or tempfile.mkdtemp(prefix="injector-interop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ledger = str(Path(args.ledger).resolve()) if args.ledger else "l.db"
    model_path = str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    common = ["--model", model_path, "--ledger", ledger, "--device", "cpu", "--base-dtype", "f32", "-q"]
    if args.run:
        run = args.run
    else:
        run, secs = zero_step_run(args.injector, work, common)
        print(f"      run {run}: stopped after {secs:.0f} s, before its first step (base weights)", flush=True)
    out_dir = work / "export"
    _, secs = injector(args.injector, "export", run, *common, "--out", str(out_dir), cwd=work)
    print(f"      exported run {run} (f32) in {secs:.0f} s", flush=True)
    tok, model = load(str(out_dir))
    check(type(model).__name__ == "LlamaForCausalLM", f"AutoModelForCausalLM gives {type(model).__name__}")
    prompt = "What is the capital of France?"
    out, _ = injector(args.injector, "logits", prompt, "--run", run, *common, cwd=work)
    compare_logits(tok, model, prompt, json.loads(out), 1e-3)
    answer = greedy(tok, model, prompt, 24)
    check("Paris" in answer, f"transformers' greedy answer names Paris: {answer!r}")
    injected_facts_answered(args.injector, run, common, work, lambda p, n: greedy(tok, model, p, n),
                            "transformers, f32 export", check)
    ours, _ = injector(args.injector, "query", prompt, "--run", run, *common, "--max-tokens", "24", cwd=work)
    print(f"      injector query --run, same prompt: {ours.strip()!r}", flush=True)
    bf16_dir = work / "export-bf16"
    injector(args.injector, "export", run, *common, "--out", str(bf16_dir), "--dtype", "bf16", cwd=work)
    bf16 = AutoModelForCausalLM.from_pretrained(str(bf16_dir), dtype=torch.bfloat16).eval()
    check(next(bf16.parameters()).dtype == torch.bfloat16, "the bf16 export loads as bfloat16")
    answer = greedy(tok, bf16, prompt, 24)
    check("Paris" in answer, f"bf16 export, transformers' greedy answer names Paris: {answer!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("tiny")
    t.add_argument("--export", required=True)
    t.add_argument("--logits", required=True, help="the JSON `injector logits --run RUN` printed")
    t.add_argument("--prompt", required=True)
    s = sub.add_parser("smollm2")
    s.add_argument("--injector", default=str(REPO / "target" / "release" / "injector"))
    s.add_argument("--work", help="folder for the ledger and the export (default: a new temporary one)")
    s.add_argument("--ledger", help="export a run of this ledger (with --run) instead of a zero-step run")
    s.add_argument("--run", help="the run to export from --ledger")
    args = ap.parse_args()
    if args.mode == "smollm2" and bool(args.ledger) != bool(args.run):
        ap.error("--ledger and --run go together")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"      transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    {"tiny": tiny, "smollm2": smollm2}[args.mode](args)
    if FAILED:
        print(f"{len(FAILED)} check(s) failed", flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
