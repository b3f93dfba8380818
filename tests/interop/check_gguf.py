"""Interop proof for `injector export --format gguf`: the `gguf` package (llama.cpp's gguf-py) reads
the file, and llama.cpp (through llama-cpp-python) loads it and computes what injector computes.

  tiny     f32 and q8_0 exports of a tiny random model's 3-step run (made by tests/export_gguf.rs):
           gguf-py reads the metadata and tensors (gguf-py's own Q8_0 quantiser, given the f32
           export's values, makes the q8_0 export's bytes); llama.cpp tokenises the chat prompt,
           rendered from the file's own template, into injector's ids; its logits at every position
           match injector's: for f32 those of the replayed run (`injector logits --run`) within 1e-3
           (f32 KV cache); for q8_0 those injector computes from the same q8_0 file, within 10 % of
           the largest logit (llama.cpp also rounds the activations to 8 bits in q8_0 products).
  smollm2  the embedded SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): a run's weights exported
           — by default a run with no committed step (a one-fact run stopped as soon as the ledger
           records it: the base weights, through the same replay, hash check and export; no
           training), or any recorded run with --ledger and --run — in f16 (the default), q8_0 and
           q4_1. For each: gguf-py reads it; llama.cpp tokenises the prompt rendered with the
           file's template into injector's ids, and its logits at the prompt's last position are
           within 1 % (f16) or 10 % (q8_0, q4_1: llama.cpp rounds the activations to 8 bits in
           quantised products) of the largest logit of injector's logits for the same file. For f16,
           llama.cpp's greedy chat answer to "What is the capital of France?" names Paris, as
           injector's does. For q8_0 and q4_1 the answer is printed, not checked (INFO): the base
           model's first token wins by 0.08 logits, and llama.cpp's 8-bit activations flip it —
           for the llama.cpp-made source file too, whose answer is printed beside them. For a run
           with steps, also: llama.cpp's greedy answers on the q8_0 export to the probes of at least
           two injected facts carry every key detail (injector's key-detail recall, through
           `injector score-answers`).

Requirements: tests/interop/requirements-gguf.txt (llama-cpp-python builds llama.cpp from source).
Exit status 0 when every check passes, 1 otherwise; each check prints one line.
"""
import argparse
import json
from importlib.metadata import version
import sys
import tempfile
from pathlib import Path

import gguf
import jinja2
import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType as Q

from common import injected_facts_answered, injector, zero_step_run

REPO = Path(__file__).resolve().parents[2]
FAILED = []
GGML_TYPE_F32 = 0


def check(ok, what):
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    if not ok:
        FAILED.append(what)


def field(reader, key):
    """A metadata value as Python: a string, a number, or a list of them."""
    f = reader.fields[key]
    return f.contents()


def read(path, arch, file_type):
    """gguf-py opens the file; returns the reader after checking the keys llama.cpp needs."""
    r = gguf.GGUFReader(path)
    check(field(r, "general.architecture") == arch, f"gguf-py reads {Path(path).name}: architecture {arch}")
    check(field(r, "general.file_type") == file_type, f"general.file_type {file_type}")
    check(r.alignment == 32 and all(t.data_offset % 32 == 0 for t in r.tensors), "tensor data aligned to 32")
    for k in ["context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon",
              "rope.dimension_count", "vocab_size"]:
        if f"{arch}.{k}" not in r.fields:
            check(False, f"{arch}.{k} present")
    n_tokens = len(r.fields["tokenizer.ggml.tokens"].data)
    check(n_tokens == field(r, f"{arch}.vocab_size"), f"{n_tokens} tokens, as many as the embedding's rows")
    check("tokenizer.chat_template" in r.fields, "the chat template is in the file")
    return r


def load(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0, **kw)


def chat_prompt_ids(llm, reader, prompt):
    """The ids llama.cpp gives the chat prompt rendered with the file's own template."""
    template = field(reader, "tokenizer.chat_template")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda key: tokens.contents(field(reader, key)) if key in reader.fields else ""
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    text = env.from_string(template).render(
        messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
        bos_token=token("tokenizer.ggml.bos_token_id"), eos_token=token("tokenizer.ggml.eos_token_id"))
    return llm.tokenize(text.encode(), add_bos=False, special=True)


def logits_of(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def tiny(args):
    with open(args.logits) as f:
        ours = json.load(f)
    ids, theirs = ours["ids"], np.array(ours["logits"], dtype=np.float32)
    r32 = read(args.f32, "llama", 0)
    r8 = read(args.q8, "llama", 7)
    # gguf-py's Q8_0 quantiser on the f32 export's values gives our q8_0 bytes.
    f32 = {t.name: t for t in r32.tensors}
    same = differ = 0
    for t in r8.tensors:
        if t.tensor_type != Q.Q8_0:
            continue
        want = gguf.quants.quantize(np.asarray(f32[t.name].data, dtype=np.float32), Q.Q8_0)
        if np.asarray(want).tobytes() == np.asarray(t.data).tobytes():
            same += 1
        else:
            differ += 1
    check(same > 0 and differ == 0, f"gguf-py's Q8_0 quantiser makes our bytes ({same} tensors same, {differ} differ)")
    # llama.cpp: the template and tokenizer carried in the file give injector's ids.
    llm = load(args.f32, logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    check(chat_prompt_ids(llm, r32, "Tell me Zorb.") == ids, f"llama.cpp tokenises the chat prompt as injector ({len(ids)} ids)")
    got = logits_of(llm, ids)
    diff = float(np.abs(got - theirs).max())
    check(diff <= 1e-3, f"f32: max |logit difference| {diff:.3g} <= 1e-3 over {got.size} logits (scale {np.abs(theirs).max():.3g})")
    with open(args.logits_q8) as f:
        theirs = np.array(json.load(f)["logits"], dtype=np.float32)
    llm = load(args.q8, logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    got = logits_of(llm, ids)
    diff, scale = float(np.abs(got - theirs).max()), float(np.abs(theirs).max())
    agree = float((got.argmax(-1) == theirs.argmax(-1)).mean())
    check(diff <= 0.1 * scale, f"q8_0: max |logit difference| {diff:.3g} <= 10 % of {scale:.3g} "
                               f"(same argmax at {agree:.0%} of positions)")


def answer(llm, prompt, n):
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=n, temperature=0.0, top_k=1, repeat_penalty=1.0,
    )
    return out["choices"][0]["message"]["content"]


def info(what):
    print(f"INFO  {what}", flush=True)


def smollm2(args):
    work = Path(args.work or tempfile.mkdtemp(prefix="injector-interop-gguf-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ledger = str(Path(args.ledger).resolve()) if args.ledger else "l.db"
    model_path = str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    common = ["--model", model_path, "--ledger", ledger, "--device", "cpu", "--base-dtype", "f32", "-q"]
    if args.run:
        run = args.run
    else:
        run, secs = zero_step_run(args.injector, work, common)
        print(f"      run {run}: stopped after {secs:.0f} s, before its first step (base weights)", flush=True)
    prompt = "What is the capital of France?"
    query, _ = injector(args.injector, "query", prompt, "--run", run, *common, "--max-tokens", "24", cwd=work)
    print(f"      injector query --run: {query.strip()!r}", flush=True)
    for dtype, file_type, tol in [("f16", 1, 0.01), ("q8_0", 7, 0.1), ("q4_1", 3, 0.1)]:
        out_dir = work / f"export-{dtype}"
        extra = [] if dtype == "f16" else ["--dtype", dtype]  # f16 is the default
        _, secs = injector(args.injector, "export", run, *common, "--out", str(out_dir), "--format", "gguf",
                           *extra, cwd=work)
        path = out_dir / "model.gguf"
        print(f"      exported run {run} ({dtype}) in {secs:.0f} s: {path.stat().st_size / 1e6:.1f} MB", flush=True)
        reader = read(str(path), "llama", file_type)
        check(field(reader, "tokenizer.ggml.pre") == "smollm", "tokenizer.ggml.pre smollm")
        out, _ = injector(args.injector, "logits", prompt, "--model", str(path), "--device", "cpu", "--last", "1",
                          cwd=work)
        ours = json.loads(out)
        llm = load(path, logits_all=True)
        ids = chat_prompt_ids(llm, reader, prompt)
        check(ids == ours["ids"], f"{dtype}: llama.cpp's prompt ids are injector's ({len(ids)} ids)")
        theirs, mine = logits_of(llm, ours["ids"])[-1], np.array(ours["logits"][-1], dtype=np.float32)
        diff, scale = float(np.abs(theirs - mine).max()), float(np.abs(mine).max())
        check(diff <= tol * scale, f"{dtype}: last-position logits of llama.cpp and injector on this file: max |difference| "
                                   f"{diff:.3g} <= {tol:g} of {scale:.3g}")
        text = answer(llm, prompt, 24)
        ours_top = f"injector's top token {int(mine.argmax())} by {np.sort(mine)[-1] - np.sort(mine)[-2]:.2f}"
        theirs_top = f"llama.cpp's {int(theirs.argmax())} by {np.sort(theirs)[-1] - np.sort(theirs)[-2]:.2f}"
        if dtype == "f16":
            check("Paris" in text, f"{dtype}: llama.cpp's greedy answer names Paris: {text!r}")
        else:
            info(f"{dtype}: llama.cpp's greedy answer: {text!r} ({ours_top}, {theirs_top})")
        if dtype == "q8_0":
            plain = load(path)
            injected_facts_answered(args.injector, run, common, work, lambda p, n: answer(plain, p, n),
                                    "llama.cpp, q8_0 export", check)
    text = answer(load(model_path), prompt, 24)
    info(f"the llama.cpp-made source file {Path(model_path).name} in llama.cpp: {text!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("tiny")
    t.add_argument("--f32", required=True)
    t.add_argument("--q8", required=True)
    t.add_argument("--logits", required=True, help="the JSON `injector logits --run RUN` printed")
    t.add_argument("--logits-q8", required=True, help="the JSON `injector logits --model Q8` printed")
    s = sub.add_parser("smollm2")
    s.add_argument("--injector", default=str(REPO / "target" / "release" / "injector"))
    s.add_argument("--work", help="folder for the ledger and the exports (default: a new temporary one)")
    s.add_argument("--ledger", help="export a run of this ledger (with --run) instead of a zero-step run")
    s.add_argument("--run", help="the run to export from --ledger")
    args = ap.parse_args()
    if args.mode == "smollm2" and bool(args.ledger) != bool(args.run):
        ap.error("--ledger and --run go together")
    print(f"      llama-cpp-python {llama_cpp.__version__}, gguf {version('gguf')}", flush=True)
    {"tiny": tiny, "smollm2": smollm2}[args.mode](args)
    if FAILED:
        print(f"{len(FAILED)} check(s) failed", flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
