//! `injector chat` on a tiny random model, its input piped: the transcript's structure (questions
//! echoed, one streamed answer per question), the history carried between rounds and cleared by
//! `/reset`, the round limit, the oldest rounds dropped at the model's positions, leaving at the end
//! of input, and bad input.
mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `injector chat` on the tiny model in `p` with `args`, `input` on its standard input (then closed:
/// Ctrl-D).
fn chat(p: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(["chat", "--model", "tiny.gguf", "--device", "cpu"])
        .args(args)
        .current_dir(p)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn workspace() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_gguf(&d.path().join("tiny.gguf"), 4);
    d
}

/// The lines of the transcript that open a turn: `user> …` and `assistant> …` (an answer of the
/// random model may hold line breaks of its own).
fn turns(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("user> ") || l.starts_with("assistant> "))
        .map(|l| l.split_once("> ").map_or("", |(who, _)| who).to_string())
        .collect()
}

/// The number of earlier rounds each answer saw, from `-v`'s `round N: T prompt tokens, K earlier
/// round(s)` lines: (round, prompt tokens, earlier rounds).
fn rounds(err: &str) -> Vec<(usize, usize, usize)> {
    err.lines()
        .filter_map(|l| {
            let rest = &l[l.find("round ")? + 6..];
            let (n, rest) = rest.split_once(": ")?;
            let (t, rest) = rest.split_once(" prompt tokens, ")?;
            let (k, _) = rest.split_once(" earlier")?;
            Some((n.parse().ok()?, t.parse().ok()?, k.parse().ok()?))
        })
        .collect()
}

#[test]
fn two_rounds_reset_and_end_of_input() {
    let d = workspace();
    let o = chat(
        d.path(),
        &["--max-tokens", "6", "-v"],
        "Hello there.\n\nAnd again?\n/reset\nAfter the reset.\n",
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("user> Hello there.\nassistant> "), "{out}");
    assert_eq!(
        turns(&out),
        ["user", "assistant", "user", "assistant", "user", "user", "assistant"],
        "{out}"
    );
    assert!(
        out.contains("\nuser> And again?\n") && out.contains("\nuser> /reset\n"),
        "{out}"
    );
    assert!(
        err.contains("/reset clears the history, Ctrl-D leaves (20 rounds at most)"),
        "{err}"
    );
    assert!(err.contains("(history cleared)"), "{err}");
    // The second round is prompted with the first; after /reset the history is empty again.
    let r = rounds(&err);
    assert_eq!(
        r.iter().map(|&(n, _, k)| (n, k)).collect::<Vec<_>>(),
        [(1, 0), (2, 1), (1, 0)],
        "{err}"
    );
    assert!(
        r[1].1 > r[0].1 + "And again?".len(),
        "the history is in the prompt: {r:?}"
    );
}

#[test]
fn the_round_limit_stops_answers_until_reset() {
    let d = workspace();
    let o = chat(
        d.path(),
        &["--max-tokens", "3", "--max-rounds", "1", "-q"],
        "one\ntwo\n/reset\nthree\n",
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert_eq!(
        turns(&out),
        ["user", "assistant", "user", "user", "user", "assistant"],
        "{out}"
    );
    assert!(err.contains("that was round 1 of 1"), "{err}");
    assert!(err.contains("this conversation has had its 1 rounds"), "{err}");
    assert!(!err.contains("Ctrl-D leaves (1 rounds"), "-q hides the banner: {err}");
}

#[test]
fn the_oldest_rounds_go_when_the_prompt_would_not_leave_room() {
    let d = workspace();
    // The tiny model has 256 positions; with room for 100 answer tokens a prompt keeps 156.
    let q = "Tell me everything about the bridge over the river, please.";
    let input = format!("{q}\n{q}\n{q}\n{q}\n");
    let o = chat(d.path(), &["--max-tokens", "100", "-v"], &input);
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert_eq!(turns(&out).iter().filter(|t| *t == "assistant").count(), 4, "{out}");
    assert!(err.contains("(dropped the oldest"), "{err}");
    let r = rounds(&err);
    assert_eq!(r.len(), 4, "{err}");
    assert!(r.iter().all(|&(_, t, _)| t <= 156), "{r:?}");
    assert!(
        r.iter().any(|&(n, _, k)| k < n - 1),
        "some round lost its oldest: {r:?}"
    );
}

#[test]
fn a_question_too_long_is_refused_and_the_chat_goes_on() {
    let d = workspace();
    let long = "x".repeat(300);
    let o = chat(d.path(), &["--max-tokens", "2"], &format!("{long}\nshort\n"));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("(not answered: the question is"), "{err}");
    assert_eq!(turns(&out), ["user", "user", "assistant"], "{out}");
}

#[test]
fn bad_chat_flags_exit_2() {
    let d = workspace();
    for (args, says) in [
        (&["--max-rounds", "0"][..], "--max-rounds"),
        (&["--top-p", "0"][..], "--top-p"),
        (&["--run", "nope", "--ledger", "l.db"][..], "l.db"),
    ] {
        let o = chat(d.path(), args, "hi\n");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
}
