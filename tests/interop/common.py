"""Helpers shared by the interop checks: running injector, and a run that holds the base weights."""
import json
import subprocess
import sys
import time

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
