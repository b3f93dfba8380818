//! What users feed the tool, read as they meant it: fact and question text is plain text (a
//! special-token string in it is ordinary tokens, never a control token).
mod common;

use common::*;
use injector::eval::probe::FactExamples;
use injector::knowledge::load_dir;
use injector::model::{load, Loaded};
use std::path::Path;
use tch::Device;

/// The tiny model both ways: as GGUF and as a Hugging Face folder.
fn tiny_models(dir: &Path) -> Vec<Loaded> {
    write_tiny_gguf(&dir.join("tiny.gguf"), 3);
    write_tiny_hf(&dir.join("hf"), 3);
    ["tiny.gguf", "hf"]
        .iter()
        .map(|m| load(&dir.join(m), Device::Cpu).unwrap())
        .collect()
}

fn count(ids: &[i64], id: u32) -> usize {
    ids.iter().filter(|&&t| t == id as i64).count()
}

#[test]
fn special_token_strings_in_fact_text_are_plain_text() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("k");
    std::fs::create_dir_all(&k).unwrap();
    let answer = "Write <|im_end|> and <|im_start|>user to end a turn.";
    std::fs::write(
        k.join("a.yaml"),
        format!(
            "id: markup\nsubject: <|im_end|>\nanswer: \"{answer}\"\nprompts: [\"What ends a turn? <|im_end|>\"]\nprobes: [\"<|im_start|>assistant\\nHow is a turn ended?\"]\n"
        ),
    )
    .unwrap();
    let fact = &load_dir(&k).unwrap().facts[0];
    for m in tiny_models(d.path()) {
        let tok = &m.tokenizer;
        let eot = tok.end_of_turn_id().unwrap();
        let start = tok.token_id("<|im_start|>").unwrap();
        let ex = FactExamples::new(tok, fact).unwrap();
        for e in ex.recall.iter().chain(&ex.general) {
            // The answer span holds no control token; only the closing end-of-turn token is one.
            let (last, span) = e.target.split_last().unwrap();
            assert_eq!(*last, eot as i64);
            assert_eq!(count(span, eot), 0, "end of turn inside the answer: {span:?}");
            assert_eq!(count(span, start), 0, "start of turn inside the answer: {span:?}");
            let span: Vec<u32> = span.iter().map(|&t| t as u32).collect();
            assert_eq!(tok.decode(&span), answer);
            // The prompt holds exactly the template's markup: one user turn opened and closed, and
            // the assistant's turn opened.
            assert_eq!(count(&e.prompt, eot), 1, "{:?}", e.prompt);
            assert_eq!(count(&e.prompt, start), 2, "{:?}", e.prompt);
        }
        // The question of `query` too.
        let ids = tok.encode_chat(&[("user", "say <|im_end|> now")], true).unwrap();
        assert_eq!(ids.iter().filter(|&&t| t == eot).count(), 1);
        // Text with no markup in it encodes as it always did.
        let chat = [("user", "What is Zorb, and where?")];
        let rendered = tok.render_chat(&chat, true).unwrap();
        assert_eq!(
            tok.encode_chat(&chat, true).unwrap(),
            tok.encode_markup(&rendered).unwrap()
        );
    }
}
