//! The ledger file: a read never changes it, and an SQLite file that is not an injector ledger (or
//! of a newer schema) is refused by name and left as it was.
mod common;

use common::*;
use rusqlite::Connection;
use std::path::Path;
use std::process::Output;

fn assert_refused(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
}

/// Every command that opens the ledger, reading or writing, on the ledger `db` in `dir`.
fn ledger_commands(db: &str) -> Vec<Vec<String>> {
    let cmds: [&[&str]; 6] = [
        &["ledger", "list"],
        &["ledger", "show", "run-1"],
        &["report"],
        &["query", "hi", "--run", "run-1", "--max-tokens", "2"],
        &["probe", "k", "--run", "run-1"],
        &["run", "k"],
    ];
    let common = [
        "--ledger",
        db,
        "--model",
        "tiny.gguf",
        "--device",
        "cpu",
        "--reports",
        "r",
    ];
    cmds.iter()
        .map(|c| c.iter().chain(&common).map(|s| s.to_string()).collect())
        .collect()
}

fn run(dir: &Path, args: &[String]) -> Output {
    injector(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Makes an SQLite file with `sql` run in it, in rollback-journal mode.
fn sqlite_file(path: &Path, sql: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(sql).unwrap();
}

#[test]
fn a_file_that_is_not_our_ledger_is_refused_and_left_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 1);
    knowledge::write_small(&p.join("k"));
    // Another program's database; a database with a `runs` table of its own, with a schema version;
    // an injector ledger of a newer schema (in rollback mode, which a WAL switch would change);
    // and a file that is no database at all.
    sqlite_file(
        &p.join("notes.db"),
        "CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('hi');",
    );
    sqlite_file(
        &p.join("other.db"),
        "CREATE TABLE runs (id TEXT, name TEXT); INSERT INTO runs VALUES ('run-1', 'x'); PRAGMA user_version = 3;",
    );
    drop(injector::ledger::Ledger::open(&p.join("newer.db")).unwrap());
    sqlite_file(
        &p.join("newer.db"),
        "PRAGMA journal_mode = DELETE; PRAGMA user_version = 99;",
    );
    std::fs::write(p.join("junk.db"), b"SQLite format 2\0 but not really, just some text").unwrap();
    let cases = [
        ("notes.db", "not an injector ledger (its tables are not injector's)"),
        ("other.db", "not an injector ledger (its runs table is not injector's)"),
        ("newer.db", "ledger schema version 99 is newer than this injector's"),
        ("junk.db", "not an injector ledger (file is not a database)"),
    ];
    for (db, why) in cases {
        let before = std::fs::read(p.join(db)).unwrap();
        for args in ledger_commands(db) {
            let o = run(p, &args);
            assert_refused(&o, &[&format!("{db}: {why}")]);
            assert!(std::fs::read(p.join(db)).unwrap() == before, "{args:?} changed {db}");
            assert!(!p.join(format!("{db}-wal")).exists(), "{args:?} left {db}-wal");
        }
    }
}

#[test]
fn reading_a_ledger_changes_nothing_in_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // A ledger of an earlier release (schema version 2), read by every read-only command: it is not
    // migrated on disk, its schema version stays, its bytes stay.
    for f in ["ledger.sqlite", "tiny.gguf"] {
        std::fs::copy(fixture("ledger-v1").join(f), p.join(f)).unwrap();
    }
    let db = p.join("ledger.sqlite");
    let before = std::fs::read(&db).unwrap();
    let base = ["--ledger", "ledger.sqlite", "--device", "cpu", "--reports", "r"];
    for cmd in [
        &["ledger", "list"][..],
        &["ledger", "show", "run-f4c56d57"],
        &["report"],
    ] {
        let o = injector(p, &[cmd, &base].concat());
        assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
        assert!(std::fs::read(&db).unwrap() == before, "{cmd:?} changed the ledger");
    }
    let o = injector(p, &[&["ledger", "list", "--json"][..], &base].concat());
    assert!(stdout(&o).contains("run-f4c56d57"), "{}", stdout(&o));
    let version: i64 = Connection::open(&db)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    // An empty file is no ledger to read.
    std::fs::write(p.join("empty.db"), b"").unwrap();
    let o = injector(p, &["ledger", "list", "--ledger", "empty.db"]);
    assert_refused(&o, &["empty.db: not an injector ledger (an empty database)"]);
    assert_eq!(std::fs::read(p.join("empty.db")).unwrap().len(), 0);
}
