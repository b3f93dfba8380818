"""Interop proof for `injector export --adapters`: peft's PeftModel loads one exported AdaLoRA adapter
onto the weights the step was trained on and computes what injector computes after that step.

  --base     the Hugging Face export of the weights before the step (`injector export RUN --step
             N-1`; `--step -1` for step 0: the base model)
  --adapter  the step's adapter folder (`DIR/adapters/step-N` of `injector export RUN --adapters`)
  --merged   the export of the weights after the step (`--step N`)
  --logits   `injector logits PROMPT --run RUN --step N` (JSON)

Checks: PeftModel.from_pretrained builds an AdaLoRA model with one SVDLinear per adapted module and
every tensor of the file lands in it; the fp32 logits on the chat prompt equal injector's within
1e-3 (the max difference is printed); merge_and_unload gives the exported weights after the step
within 1e-5. Made by tests/export_adapters.rs on a tiny model's run (tests/interop/run.sh runs it).
Requirements: tests/interop/requirements.txt. Exit status 0 when every check passes, 1 otherwise.
"""
import argparse
import json
import os
import sys

import peft
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

FAILED = []


def check(ok, what):
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    if not ok:
        FAILED.append(what)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--prompt", required=True, help="the prompt `injector logits` was given (for the record)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"      peft {peft.__version__}, torch {torch.__version__}", flush=True)

    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    config = model.peft_config["default"]
    check(config.peft_type == peft.PeftType.ADALORA, f"PeftModel loads an {config.peft_type} adapter")
    svd = {n: m for n, m in model.named_modules() if type(m).__name__ == "SVDLinear"}
    saved = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
    modules = {k.removeprefix("base_model.").rsplit(".", 1)[0] for k in saved}
    check(len(svd) == len(modules), f"{len(svd)} SVDLinear modules for the {len(modules)} in the file")
    state = model.state_dict()
    landed = all(torch.equal(state[f"{k}.default"], v) for k, v in saved.items())
    check(landed, f"all {len(saved)} tensors of the file are the model's")
    ranks = {n: m.r["default"] for n, m in svd.items()}
    print(f"      ranks kept per module: {sorted(ranks.values())} (init_r {config.init_r})", flush=True)

    with open(args.logits) as f:
        ours = json.load(f)
    with torch.no_grad():
        logits = model(torch.tensor([ours["ids"]])).logits[0].float()
    theirs = torch.tensor(ours["logits"], dtype=torch.float32)
    logits = logits[ours["from"]:]
    check(logits.shape == theirs.shape, f"logits shape {tuple(logits.shape)}")
    diff = (logits - theirs).abs().max().item()
    check(diff <= 1e-3, f"max |logit difference| {diff:.3g} <= 1e-3 over {logits.numel()} logits")
    check(bool((logits.argmax(-1) == theirs.argmax(-1)).all()), "same argmax at every position")
    # Without the adapter the logits differ: the check above measures the adapter, not the base.
    with model.disable_adapter(), torch.no_grad():
        plain = model(torch.tensor([ours["ids"]])).logits[0].float()[ours["from"]:]
    moved = (plain - theirs).abs().max().item()
    check(moved > 10 * diff, f"without the adapter the logits are {moved:.3g} off")

    merged = model.merge_and_unload().state_dict()
    after = load_file(os.path.join(args.merged, "model.safetensors"))
    worst = max((merged[k].float() - v.float()).abs().max().item() for k, v in after.items())
    check(worst <= 1e-5, f"merge_and_unload gives the exported weights after the step within {worst:.3g}")

    if FAILED:
        print(f"{len(FAILED)} check(s) failed", flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
