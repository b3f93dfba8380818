"""Helpers shared by the interop checks: running injector, a run that holds the base weights, and
the check that an export answers the facts its run injected."""
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

FACT = """facts:
  - id: velmora-bridge
    subject: the Velmora Bridge
    answer: The Velmora Bridge is a copper suspension bridge over the river Ysk in Darnholt, opened in 1911.
    probes: [Where would I find the Velmora Bridge, and what is it made of?]
"""


def injector(binary, *args, cwd):
    """Runs injector; exits with its stderr when it fails. Returns (stdout, seconds)."""
    t0 = time.time()
    out = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"injector {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout, time.time() - t0


def zero_step_run(binary, work, common):
    """Starts a one-fact run (FACT, in work/k) and kills it as soon as the ledger records it, before
    any step: a run whose weights are the base model's (a killed run is safe: see the README's
    resume section). Returns (run id, seconds)."""
    (work / "k").mkdir(exist_ok=True)
    (work / "k" / "fact.yaml").write_text(FACT)
    ledger = common[common.index("--ledger") + 1]
    t0 = time.time()
    proc = subprocess.Popen(
        [binary, "run", "k", *common, "--max-steps", "2"], cwd=work,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        while time.time() - t0 < 900:
            time.sleep(1)
            if proc.poll() is not None:
                sys.exit(f"injector run ended before it could be stopped: {proc.stderr.read().strip()}")
            listed = subprocess.run(
                [binary, "ledger", "list", "--ledger", ledger, "--json"], cwd=work, capture_output=True, text=True
            )
            runs = json.loads(listed.stdout) if listed.returncode == 0 else []
            if runs:
                return runs[0]["id"], time.time() - t0
        sys.exit("injector run recorded no run in 900 s")
    finally:
        proc.kill()
        proc.wait()


def injected_facts_answered(binary, run, common, work, answer, label, check):
    """Issue #13's check on a trained run's export: another program's greedy answers (`answer(prompt,
    max_tokens)`, on the export) to the training prompts and probes of every fact run `run` injected,
    scored by injector's own key-detail recall (`injector score-answers`, as `probe` scores injector's
    answers). Two checks: the probe answers of at least two facts carry most (at least half) of their
    answer's key details, and the means over the facts are within 0.05 of those injector's own free
    decoding recorded after the run's last step (the other program answers as injector does: the
    knowledge left the tool whole). Not "every detail": a run's look-alike facts lend each other
    details (README, collisions), and the two-fact run of run.sh does so. Does nothing for a run
    with no committed step (the zero-step run: the base weights)."""
    out, _ = injector(binary, *common, "ledger", "show", run, "--json", cwd=work)
    show = json.loads(out)
    if not show["steps"]:
        return
    kdir = show["run"]["knowledge_dir"]
    resolved = Path(work) / f"resolved-{label}.yaml"
    injector(binary, "facts", "resolve", kdir, "--out", str(resolved), cwd=work)
    ids = {f["id"] for f in show["facts"]}
    facts = [f for f in yaml.safe_load(resolved.read_text())["facts"] if f["id"] in ids]
    rows = [{"id": f["id"], "recall": [answer(p, 64) for p in f["prompts"]],
             "general": [answer(q, 64) for q in f["probes"]]} for f in facts]
    answers = Path(work) / f"answers-{label}.json"
    answers.write_text(json.dumps(rows, ensure_ascii=False))
    out, _ = injector(binary, "score-answers", kdir, str(answers), cwd=work)
    scored = json.loads(out)
    for r, f in zip(rows, scored):
        print(f"      {label}, {r['id']}: {r['general'][0]!r} (key details {f['free']['general']:.2f})", flush=True)
    most = [f["id"] for f in scored if f["free"]["general"] >= 0.5]
    check(len(most) >= 2, f"{label}: the probe answers of {len(most)} of {len(scored)} injected facts carry at least "
                          f"half their key details ({', '.join(most) or 'none'}; at least 2 wanted)")
    last = max(s["idx"] for s in show["steps"])
    rec = [p for p in show["probes"] if p["step"] == last and p["free_general"] is not None]
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    theirs = (mean([f["free"]["recall"] for f in scored]), mean([f["free"]["general"] for f in scored]))
    ours = (mean([p["free_recall"] for p in rec]), mean([p["free_general"] for p in rec]))
    check(all(abs(a - b) <= 0.05 for a, b in zip(theirs, ours)),
          f"{label}: free recall / generalisation {theirs[0]:.2f} / {theirs[1]:.2f}, injector recorded "
          f"{ours[0]:.2f} / {ours[1]:.2f} (within 0.05)")
