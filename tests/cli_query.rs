//! `injector query` end to end: the real model answers, and bad input exits 2 with a one-line message.
mod common;

use common::*;

#[test]
fn query_streams_an_answer_from_the_embedded_model() {
    let model = real_model();
    let dir = tempfile::tempdir().unwrap();
    let o = injector(
        dir.path(),
        &[
            "query",
            "What is the capital of France?",
            "--max-tokens",
            "24",
            "--model",
            model.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "answer: {}", stdout(&o));
}

#[test]
fn query_runs_on_a_tiny_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_hf(&dir.path().join("hf"), 2);
    let o = injector(
        dir.path(),
        &["query", "hi", "--max-tokens", "5", "--model", "hf", "--device", "cpu"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

fn assert_bad_input(o: &std::process::Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "error should be one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_models_and_devices_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let q = |args: &[&str]| {
        let mut a = vec!["query", "hi", "--max-tokens", "2"];
        a.extend_from_slice(args);
        injector(p, &a)
    };
    assert_bad_input(&q(&["--model", "nope.gguf"]), "nope.gguf: no such file");
    std::fs::write(p.join("junk.gguf"), b"not a model at all").unwrap();
    assert_bad_input(&q(&["--model", "junk.gguf"]), "bad magic");
    write_tiny_gguf(&p.join("tiny.gguf"), 1);
    let bytes = std::fs::read(p.join("tiny.gguf")).unwrap();
    std::fs::write(p.join("cut.gguf"), &bytes[..bytes.len() - 100]).unwrap();
    assert_bad_input(&q(&["--model", "cut.gguf"]), "truncated");
    write_tiny_gguf_with(&p.join("k.gguf"), 1, "llama", |ts| {
        let t = ts.iter_mut().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
        t.type_id = 12; // Q4_K: 144 bytes per 256 values
        t.dims = vec![256, 1];
        t.data = vec![0; 144];
    });
    assert_bad_input(&q(&["--model", "k.gguf"]), "unsupported type Q4_K");
    write_tiny_gguf_with(&p.join("gpt.gguf"), 1, "gpt2", |_| {});
    assert_bad_input(&q(&["--model", "gpt.gguf"]), "unsupported architecture 'gpt2'");
    assert_bad_input(&q(&["--model", "tiny.gguf", "--device", "tpu"]), "unknown device 'tpu'");
    assert_bad_input(&q(&["--model", "tiny.gguf", "--device", "cuda:7"]), "not available");
}
