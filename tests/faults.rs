//! Faults with several processes on one ledger: runs writing it at once all finish and leave it
//! intact, and a run killed while others write resumes — in another process waiting for it — to
//! the weights of an uninterrupted run. (Kills at moments spread over a run alone:
//! tests/resume.rs; damaged, truncated, foreign or newer ledgers and paths that cannot be
//! written: tests/ledger_files.rs.)
mod common;

use common::knowledge::write_many;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fixture ledger's own run, which the new runs must leave as it was.
const OLD_RUN: &str = "run-f4c56d57";

fn args(ledger: &str, strategy: &str) -> Vec<String> {
    [
        "run",
        "k",
        "--model",
        "tiny.gguf",
        "--ledger",
        ledger,
        "--device",
        "cpu",
        "--strategy",
        strategy,
        "--max-steps",
        "2",
        "--json",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(dir: &Path, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The outcome's weights hash, from a finished process that must have succeeded.
fn finished(c: Child) -> String {
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON outcome");
    v["weights_hash"].as_str().unwrap().to_string()
}

/// Committed steps of the sequential run made here (not the fixture's).
fn committed(db: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM steps JOIN runs ON steps.run = runs.id \
                 WHERE runs.id != ?1 AND runs.strategy = 'sequential'",
                [OLD_RUN],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

/// On a ledger that already holds a run of an earlier schema (so the processes also migrate it at
/// once): a sequential run and a mixed run start together; the sequential one is killed with
/// SIGKILL after its first committed step, while a second process given the same command waits
/// for it. The waiting process takes the run over and ends at the weights of an uninterrupted
/// run, each step once; the mixed run finishes; SQLite finds the ledger intact.
#[test]
fn runs_writing_one_ledger_at_once_finish_and_a_killed_one_is_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 4);
    write_many(&p.join("k"), 5);
    std::fs::copy(fixture("ledger-v1").join("ledger.sqlite"), p.join("shared.db")).unwrap();
    let t0 = Instant::now();
    let want = finished(spawn(p, &args("alone.db", "sequential")));
    let alone = t0.elapsed();

    let mut a = spawn(p, &args("shared.db", "sequential"));
    let mixed = spawn(p, &args("shared.db", "mixed"));
    let t = Instant::now();
    while committed(&p.join("shared.db")) < 1 {
        assert!(
            a.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(t.elapsed() < alone * 10 + Duration::from_secs(60), "no step committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let twin = spawn(p, &args("shared.db", "sequential"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        a.try_wait().unwrap().is_none(),
        "the run ended before it could be killed"
    );
    a.kill().unwrap();
    a.wait().unwrap();
    let at_kill = committed(&p.join("shared.db"));
    assert_eq!(finished(twin), want, "the taken-over run ends at other weights");
    finished(mixed);
    println!(
        "killed after {at_kill} of 5 steps; alone {alone:.1?}, all {:.1?}",
        t0.elapsed()
    );

    let c = rusqlite::Connection::open(p.join("shared.db")).unwrap();
    let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let runs: Vec<(String, String, String)> = c
        .prepare("SELECT id, strategy, status FROM runs ORDER BY created, id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|r| r.2 == "finished"), "{runs:?}");
    let seq = runs.iter().find(|r| r.0 != OLD_RUN && r.1 == "sequential").unwrap();
    let idx: Vec<i64> = c
        .prepare("SELECT idx FROM steps WHERE run = ?1 ORDER BY idx")
        .unwrap()
        .query_map([&seq.0], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(idx, (0..5).collect::<Vec<_>>(), "each step exactly once");
    let old: i64 = c
        .query_row("SELECT COUNT(*) FROM steps WHERE run = ?1", [OLD_RUN], |r| r.get(0))
        .unwrap();
    assert_eq!(old, 2, "the fixture's run changed");
}
