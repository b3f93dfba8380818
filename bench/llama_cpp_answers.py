"""Decodes every fact's training prompts and probes with llama.cpp (llama-cpp-python) on one GGUF file,
as injector's free decoding does on its own loader, for bench/export_recall.sh.

For each prompt (the chat template carried in the file, rendered as tests/interop/check_gguf.py renders
it; the file's tokenizer): greedy tokens until an end-of-generation token or the answer's length plus
16 tokens (injector's `SLACK_TOKENS`), decoded without special tokens. Also teacher-forced token
accuracy as injector defines it (the share of the answer's tokens plus the end-of-turn token whose
argmax is right, after the prompt and the right tokens before it), per prompt.

Writes two JSON files: ANSWERS, the texts in the form `injector score-answers` reads (injector scores
them, so the key-detail recall is injector's own), and TF, `[{"id", "recall", "general"}]` with the
teacher-forced means per fact. llama.cpp runs with its defaults but greedy (f16 KV cache; with
quantised weights it also rounds the activations to 8 bits in the matrix products).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
from check_gguf import chat_prompt_ids  # noqa: E402  (the rendering the interop check verified)
import gguf  # noqa: E402
import llama_cpp  # noqa: E402

SLACK_TOKENS = 16  # src/eval/free.rs


def mean(v):
    return sum(v) / len(v) if v else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="the GGUF file")
    ap.add_argument("facts", help="the facts with every default filled in (`injector facts resolve DIR --out F`)")
    ap.add_argument("--answers", required=True, help="where to write the answers (JSON)")
    ap.add_argument("--tf", required=True, help="where to write the teacher-forced accuracies (JSON)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (on a shared CPU more can be slower)")
    args = ap.parse_args()
    facts = yaml.safe_load(open(args.facts))["facts"]
    reader = gguf.GGUFReader(args.gguf)
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=512, n_threads=args.threads,
                          verbose=False, seed=0)
    end_of_turn = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    eot = end_of_turn[0] if len(end_of_turn) == 1 else llm.token_eos()
    stops = {eot, llm.token_eos()}

    n_vocab = llm.n_vocab()

    def last_argmax():
        # The last evaluated position's logits (llm.scores holds them only with logits_all).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def one(prompt, answer):
        ids = chat_prompt_ids(llm, reader, prompt)
        target = llm.tokenize(answer.encode(), add_bos=False, special=False) + [eot]
        # One token at a time after the prompt: logits_all, which would give every position in one
        # call, is far slower in llama-cpp-python on this CPU.
        llm.reset()
        llm.eval(ids)
        first = last_argmax()
        right = 0
        for j, t in enumerate(target):
            right += (first if j == 0 else last_argmax()) == t
            if j + 1 < len(target):
                llm.eval([t])
        # Greedy from the end of the prompt (eval drops the cache past n_tokens).
        llm.n_tokens = len(ids)
        out, cap, nxt = [], len(target) - 1 + SLACK_TOKENS, first
        while nxt not in stops and len(out) < cap:
            out.append(nxt)
            llm.eval([nxt])
            nxt = last_argmax()
        text = llm.detokenize(out, special=False).decode("utf-8", errors="replace")
        return text, right / len(target)

    answers, tf = [], []
    for f in facts:
        rec = [one(p, f["answer"]) for p in f["prompts"]]
        gen = [one(p, f["answer"]) for p in f["probes"]]
        answers.append({"id": f["id"], "recall": [t for t, _ in rec], "general": [t for t, _ in gen]})
        tf.append({"id": f["id"], "recall": mean([a for _, a in rec]), "general": mean([a for _, a in gen])})
        print(f"  {f['id']}: {gen[0][0]!r}", file=sys.stderr, flush=True)
    json.dump(answers, open(args.answers, "w"), ensure_ascii=False, indent=1)
    json.dump(tf, open(args.tf, "w"), indent=1)


if __name__ == "__main__":
    main()
