//! The files the tool reads and writes besides the model: a read never changes the ledger, an SQLite
//! file that is not an injector ledger (or of a newer schema, or damaged) is refused by name and
//! left as it was, and a `--ledger` or `--reports` path that cannot be written is refused before
//! the model loads.
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
    // A ledger that holds a run, damaged: one page overwritten (the steps table's), or cut in half.
    std::fs::copy(fixture("ledger-v1").join("ledger.sqlite"), p.join("held.db")).unwrap();
    sqlite_file(&p.join("held.db"), "PRAGMA journal_mode = DELETE;");
    let held = std::fs::read(p.join("held.db")).unwrap();
    let mut damaged = held.clone();
    damaged[8 * 4096..9 * 4096].fill(0x5a);
    std::fs::write(p.join("damaged.db"), damaged).unwrap();
    std::fs::write(p.join("truncated.db"), &held[..held.len() / 2]).unwrap();
    let cases = [
        ("notes.db", "not an injector ledger (its tables are not injector's)"),
        ("other.db", "not an injector ledger (its runs table is not injector's)"),
        ("newer.db", "ledger schema version 99 is newer than this injector's"),
        ("junk.db", "not an injector ledger (file is not a database)"),
        ("damaged.db", "the ledger is damaged (Tree 9 page 9"),
        (
            "truncated.db",
            "the ledger is damaged (database disk image is malformed)",
        ),
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
    // A row that does not read back (hand-edited JSON) is named, as bad input, for every reader.
    std::fs::copy(&db, p.join("edited.sqlite")).unwrap();
    sqlite_file(
        &p.join("edited.sqlite"),
        "PRAGMA journal_mode = DELETE; UPDATE steps SET rank_pattern = 'not json' WHERE idx = 0;",
    );
    let edited = std::fs::read(p.join("edited.sqlite")).unwrap();
    for cmd in [&["ledger", "show", "run-f4c56d57"][..], &["report"]] {
        let o = injector(p, &[cmd, &["--ledger", "edited.sqlite", "--reports", "r"]].concat());
        assert_refused(&o, &["edited.sqlite: the ledger holds a row that cannot be read"]);
        assert!(std::fs::read(p.join("edited.sqlite")).unwrap() == edited);
    }
    // An empty file is no ledger to read.
    std::fs::write(p.join("empty.db"), b"").unwrap();
    let o = injector(p, &["ledger", "list", "--ledger", "empty.db"]);
    assert_refused(&o, &["empty.db: not an injector ledger (an empty database)"]);
    assert_eq!(std::fs::read(p.join("empty.db")).unwrap().len(), 0);
}

#[test]
fn output_paths_that_cannot_be_written_are_refused_before_the_model_loads() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    knowledge::write_small(&p.join("k"));
    std::fs::write(p.join("afile"), b"not a folder").unwrap();
    std::fs::create_dir_all(p.join("afolder")).unwrap();
    // The model does not exist: a refusal that names the path shows the check came first.
    let model = ["--model", "missing.gguf", "--device", "cpu"];
    let cases: [(&[&str], &str); 5] = [
        (
            &["--reports", "afile"],
            "afile: --reports cannot be written: it is a file, not a folder",
        ),
        (
            &["--reports", "afile/sub"],
            "afile/sub: --reports cannot be written: afile is a file, not a folder",
        ),
        (
            &["--ledger", "afolder"],
            "afolder: --ledger cannot be written: it is a folder",
        ),
        (
            &["--ledger", "afile/l.db"],
            "afile/l.db: --ledger cannot be written: afile is a file, not a folder",
        ),
        (
            &["--ledger", "afile/deeper/l.db"],
            "afile/deeper/l.db: --ledger cannot be written: afile is a file, not a folder",
        ),
    ];
    for (flags, want) in cases {
        for cmd in [&["run", "k"][..], &["compare", "k", "--strategy", "sequential,mixed"]] {
            let o = injector(p, &[cmd, &model, flags].concat());
            assert_refused(&o, &[want]);
        }
    }
    // Where the system makes no files (as root too): /proc; a folder without write permission
    // where permissions hold (not for root).
    let locked = p.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let root = std::fs::write(locked.join("probe"), b"").is_ok();
    let mut denied = vec![
        ("--ledger", "/proc/injector-test/l.db".to_string()),
        ("--ledger", "/proc/l.db".to_string()),
        ("--reports", "/proc/injector-reports".to_string()),
    ];
    if !root {
        denied.push(("--ledger", locked.join("l.db").display().to_string()));
        denied.push(("--reports", locked.join("r").display().to_string()));
    }
    for (flag, path) in &denied {
        for cmd in [&["run", "k"][..], &["compare", "k", "--strategy", "sequential,mixed"]] {
            let o = injector(p, &[cmd, &model, &[flag, path.as_str()]].concat());
            assert_refused(&o, &[&format!("{path}: {flag} cannot be written")]);
        }
    }
    // An existing --ledger that is not a ledger is refused before the model loads too.
    sqlite_file(&p.join("notes.db"), "CREATE TABLE notes (x TEXT);");
    let o = injector(p, &[&["run", "k", "--ledger", "notes.db"][..], &model].concat());
    assert_refused(&o, &["notes.db: not an injector ledger"]);
    assert_eq!(std::fs::read(p.join("afile")).unwrap(), b"not a folder");
    assert_eq!(std::fs::read_dir(p.join("afolder")).unwrap().count(), 0);
    // `report` checks its folder before it reads the ledger; `facts` its --out.
    let o = injector(p, &["report", "--reports", "afile", "--ledger", "none.db"]);
    assert_refused(&o, &["afile: --reports cannot be written"]);
    let o = injector(p, &["facts", "generate", "--n", "3", "--out", "afile"]);
    assert_refused(&o, &["afile: --out cannot be written: it is a file, not a folder"]);
    let o = injector(p, &["facts", "resolve", "k", "--out", "afolder"]);
    assert_refused(&o, &["afolder: --out cannot be written: it is a folder"]);
    // Nothing was made on the way.
    assert!(!p.join("injector.db").exists());
    assert!(!p.join("reports").exists());
}

/// Output into a pipe whose reader is gone (`injector ledger list | head -c 5`) ends the process
/// by SIGPIPE, as it ends other Unix tools, not by a panic in `println!` (exit 101 before).
#[test]
fn a_closed_output_pipe_ends_by_sigpipe_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("ledger-v1").join("ledger.sqlite"), d.path().join("l.db")).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(["--ledger", "l.db", "ledger", "list", "--json"])
        .current_dir(d.path())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
