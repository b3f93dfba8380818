//! A run killed with SIGKILL at any moment resumes (same command) and ends with the same weights hash
//! as an uninterrupted run; no step is applied twice.
mod common;

use common::knowledge::write_many;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn args(ledger: &str) -> Vec<String> {
    [
        "run",
        "k",
        "--model",
        "tiny.gguf",
        "--ledger",
        ledger,
        "--device",
        "cpu",
        "--lr",
        "0.05",
        "--alpha",
        "32",
        "--max-steps",
        "12",
        "--threshold",
        "1.0",
        "--strategy",
        "batch:2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn final_hash(out: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_str(&stdout(out)).expect("JSON outcome");
    v["weights_hash"].as_str().unwrap().to_string()
}

#[test]
fn killed_runs_resume_to_the_same_weights() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 9);
    write_many(&p.join("k"), 8);
    let t = Instant::now();
    let clean = Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(args("clean.db"))
        .current_dir(p)
        .output()
        .unwrap();
    assert!(clean.status.success(), "{}", stderr(&clean));
    let whole = t.elapsed();
    let want = final_hash(&clean);

    // Kill at moments spread over the whole run: once the ledger holds k committed steps, after a
    // short and a longer extra wait (mid-training, mid-evaluation, mid-commit).
    let committed = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let mut kills = 0;
    for k in 0..4 {
        for extra_ms in [20u64, 150, 400] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_injector"))
                .args(args("killed.db"))
                .current_dir(p)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t0 = Instant::now();
            while committed(&p.join("killed.db")) < k && t0.elapsed() < whole * 4 && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(extra_ms));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills += 1;
            }
            child.wait().unwrap();
        }
    }
    println!("{kills} kills");
    assert!(kills >= 6, "the run was killed only {kills} times");
    let resumed = Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(args("killed.db"))
        .current_dir(p)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(
        final_hash(&resumed),
        want,
        "resumed run ended with other weights after {kills} kills"
    );
    let show = injector(p, &["ledger", "list", "--ledger", "killed.db", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    let run = runs[0]["id"].as_str().unwrap();
    let s = injector(p, &["ledger", "show", run, "--ledger", "killed.db", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&s)).unwrap();
    let idx: Vec<i64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["idx"].as_i64().unwrap())
        .collect();
    assert_eq!(idx, (0..4).collect::<Vec<_>>(), "each of the 4 steps exactly once");
}
