//! Helpers of the export tests: a finished run of the tiny model, `injector export` and
//! `injector logits` on it, reading what an export wrote, and the interop venv's Python.
use super::knowledge::write_small;
use super::*;
use serde_json::Value;
use std::path::Path;

/// The training flags of the tiny runs: a few fast steps that change the weights, with f32 base
/// weights (the exports are checked bit for bit against them; `auto` is bf16 on CPUs with AMX).
pub const TRAIN: [&str; 12] = [
    "--device",
    "cpu",
    "--base-dtype",
    "f32",
    "--lr",
    "0.05",
    "--max-steps",
    "25",
    "--alpha",
    "32",
    "--ledger",
    "l.db",
];

/// A temporary folder with the tiny model (`model`: `tiny.gguf` or the folder `tiny-hf`, written
/// by the caller's `make`), the small knowledge set and a finished 3-step run in `l.db`; returns the
/// folder and the run id.
pub fn workspace_with_run_of(model: &str, make: impl FnOnce(&Path)) -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    make(p);
    write_small(&p.join("k"));
    let mut args = vec!["run", "k", "--model", model];
    args.extend(TRAIN);
    args.extend(["--json", "-q", "--no-free-decoding"]);
    let o = injector(p, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run = out["run"].as_str().unwrap().to_string();
    (d, run)
}

/// [`workspace_with_run_of`] the tiny GGUF model `tiny.gguf`.
pub fn workspace_with_run() -> (tempfile::TempDir, String) {
    workspace_with_run_of("tiny.gguf", |p| write_tiny_gguf(&p.join("tiny.gguf"), 4))
}

/// `injector export RUN` with the ledger `l.db` on the CPU, and `extra` flags.
pub fn export(p: &Path, run: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", run, "--ledger", "l.db", "--device", "cpu"];
    args.extend_from_slice(extra);
    injector(p, &args)
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The JSON header of a safetensors file, read as the format defines it (u64 length, then JSON).
pub fn safetensors_header(path: &Path) -> (Value, usize) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes.len() - 8 - n)
}

/// `injector logits` on a chat prompt with f32 base weights, with `args` choosing the weights:
/// (ids, logits [t][vocab]).
pub fn logits(p: &Path, args: &[&str]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut all = vec!["logits", "Tell me Zorb.", "--device", "cpu", "--base-dtype", "f32"];
    all.extend_from_slice(args);
    let o = injector(p, &all);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    (
        serde_json::from_value(v["ids"].clone()).unwrap(),
        serde_json::from_value(v["logits"].clone()).unwrap(),
    )
}

/// The largest |a - b| over two logit tables, and the largest |a|.
pub fn worst_and_scale(want: &[Vec<f32>], got: &[Vec<f32>]) -> (f32, f32) {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let worst = want
        .iter()
        .flatten()
        .zip(got.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (worst, scale)
}

/// The names in folder `p`, sorted, without SQLite's `-wal`/`-shm` files (reading a WAL ledger makes
/// them).
pub fn entries(p: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    names.sort();
    names
}

/// `p` holds what it held `before` and `new`, nothing else (no half-written export, no temporary
/// folder).
pub fn assert_only(p: &Path, before: &[String], new: &[&str]) {
    let mut want: Vec<String> = before
        .iter()
        .cloned()
        .chain(new.iter().map(|s| s.to_string()))
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(entries(p), want);
}

/// The interop venv's Python (`INJECTOR_INTEROP_PYTHON`, else the repo's `.venv`), when it imports
/// `modules` (`"transformers, torch"`; see tests/interop/run.sh).
pub fn interop_python(modules: &str) -> Option<std::path::PathBuf> {
    let py = std::env::var_os("INJECTOR_INTEROP_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}
