//! What users feed the tool, read as they meant it: fact and question text is plain text (a
//! special-token string in it is ordinary tokens, never a control token), a chat template in the
//! list form is the one named `default` or the one `--chat-template NAME` picks (recorded with a
//! run), and text too long for the model's positions is refused.
mod common;

use common::*;
use injector::eval::batch::Example;
use injector::eval::probe::FactExamples;
use injector::knowledge::load_dir;
use injector::model::generate::{generate, greedy_batch, Sampling};
use injector::model::{load, load_with_template, Loaded, NoAdapter};
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

/// Rewrites the tiny Hugging Face folder's tokenizer_config.json with `chat_template` set to `v`.
fn set_hf_template(hf: &Path, v: serde_json::Value) {
    let cfg = serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": v});
    std::fs::write(hf.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

const OTHER_TEMPLATE: &str = "{{ raise_exception('the tool-use template') }}";

#[test]
fn a_chat_template_list_uses_the_one_named_default() {
    let d = tempfile::tempdir().unwrap();
    let hf = d.path().join("hf");
    write_tiny_hf(&hf, 3);
    let chat = [("user", "hi")];
    let want = load(&hf, Device::Cpu)
        .unwrap()
        .tokenizer
        .render_chat(&chat, true)
        .unwrap();
    set_hf_template(
        &hf,
        serde_json::json!([{"name": "tool_use", "template": OTHER_TEMPLATE}, {"name": "default", "template": CHAT_TEMPLATE}]),
    );
    let m = load(&hf, Device::Cpu).unwrap();
    assert_eq!(m.tokenizer.render_chat(&chat, true).unwrap(), want);

    // GGUF: the default template under its own name, the others beside it.
    let g = d.path().join("named.gguf");
    write_tiny_gguf_meta(&g, 3, |meta| {
        for (k, _) in meta.iter_mut().filter(|(k, _)| k == "tokenizer.chat_template") {
            *k = "tokenizer.chat_template.default".into();
        }
        meta.push((
            "tokenizer.chat_template.tool_use".into(),
            injector::model::gguf::Value::Str(OTHER_TEMPLATE.into()),
        ));
    });
    let m = load(&g, Device::Cpu).unwrap();
    assert_eq!(m.tokenizer.render_chat(&chat, true).unwrap(), want);
}

fn assert_refused(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
}

#[test]
fn a_model_without_a_usable_chat_template_is_refused_or_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let query = |model: &str| {
        injector(
            p,
            &["query", "hi", "--max-tokens", "2", "--device", "cpu", "--model", model],
        )
    };
    // A list with no template named default: which one is meant is not known.
    write_tiny_hf(&p.join("hf"), 3);
    set_hf_template(
        &p.join("hf"),
        serde_json::json!([{"name": "tool_use", "template": OTHER_TEMPLATE}, {"name": "rag", "template": CHAT_TEMPLATE}]),
    );
    assert_refused(&query("hf"), &["tokenizer_config.json", "tool_use, rag", "'default'"]);
    // Entries that are not {name, template}, and a value of another shape.
    set_hf_template(&p.join("hf"), serde_json::json!([{"template": CHAT_TEMPLATE}]));
    assert_refused(&query("hf"), &["tokenizer_config.json", "'name' and 'template'"]);
    set_hf_template(&p.join("hf"), serde_json::json!(7));
    assert_refused(&query("hf"), &["tokenizer_config.json", "neither text nor a list"]);
    // A template that cannot render is refused when the model loads.
    set_hf_template(&p.join("hf"), serde_json::json!("{% for m in messages %}"));
    assert_refused(&query("hf"), &["hf: chat template"]);
    // One that would render for ever (10,000 × 10,000 rounds) runs out of fuel, at once.
    set_hf_template(
        &p.join("hf"),
        serde_json::json!("{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"),
    );
    let t = std::time::Instant::now();
    assert_refused(&query("hf"), &["hf: chat template", "fuel"]);
    assert!(t.elapsed().as_secs() < 30, "took {:?}", t.elapsed());
    // GGUF: named templates, none the default.
    write_tiny_gguf_meta(&p.join("named.gguf"), 3, |meta| {
        for (k, _) in meta.iter_mut().filter(|(k, _)| k == "tokenizer.chat_template") {
            *k = "tokenizer.chat_template.rag".into();
        }
    });
    assert_refused(
        &query("named.gguf"),
        &["named.gguf", "named rag but none is the default"],
    );
    // No template at all: the model is usable (plain `role: text` lines), and a warning says so.
    write_tiny_gguf_meta(&p.join("bare.gguf"), 3, |meta| {
        meta.retain(|(k, _)| k != "tokenizer.chat_template")
    });
    let o = query("bare.gguf");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("bare.gguf: no chat template"), "{}", stderr(&o));
}

/// A second template that renders differently from [`CHAT_TEMPLATE`]: plain `role: text` lines.
const PLAIN_TEMPLATE: &str = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/// What [`PLAIN_TEMPLATE`] makes of one user turn `hi` with the assistant's opening.
const PLAIN_HI: &str = "user: hi\nassistant:";

/// `--chat-template NAME` picks one of the named templates a checkpoint ships, in each of the forms
/// they come in: the list in tokenizer_config.json, transformers' additional_chat_templates/ folder,
/// GGUF's `tokenizer.chat_template.NAME`.
#[test]
fn a_named_chat_template_is_chosen_in_every_form() {
    let d = tempfile::tempdir().unwrap();
    let chat = [("user", "hi")];
    let hf = d.path().join("hf");
    write_tiny_hf(&hf, 3);
    let default = load(&hf, Device::Cpu)
        .unwrap()
        .tokenizer
        .render_chat(&chat, true)
        .unwrap();
    let render = |path: &Path, name: Option<&str>| {
        let m = load_with_template(path, Device::Cpu, name).unwrap();
        m.tokenizer.render_chat(&chat, true).unwrap()
    };
    set_hf_template(
        &hf,
        serde_json::json!([{"name": "default", "template": CHAT_TEMPLATE}, {"name": "plain", "template": PLAIN_TEMPLATE}]),
    );
    assert_eq!(render(&hf, Some("plain")), PLAIN_HI);
    assert_eq!(render(&hf, Some("default")), default);
    assert_eq!(render(&hf, None), default);

    // transformers' layout: chat_template.jinja is the default, the others beside it by file name.
    let folder = d.path().join("folder");
    write_tiny_hf(&folder, 3);
    set_hf_template(&folder, serde_json::Value::Null);
    std::fs::write(folder.join("chat_template.jinja"), CHAT_TEMPLATE).unwrap();
    std::fs::create_dir(folder.join("additional_chat_templates")).unwrap();
    std::fs::write(folder.join("additional_chat_templates/plain.jinja"), PLAIN_TEMPLATE).unwrap();
    assert_eq!(render(&folder, Some("plain")), PLAIN_HI);
    assert_eq!(render(&folder, None), default);

    let g = d.path().join("named.gguf");
    write_tiny_gguf_meta(&g, 3, |meta| {
        meta.push((
            "tokenizer.chat_template.plain".into(),
            injector::model::gguf::Value::Str(PLAIN_TEMPLATE.into()),
        ))
    });
    assert_eq!(render(&g, Some("plain")), PLAIN_HI);
    assert_eq!(render(&g, Some("default")), default);
    assert_eq!(render(&g, None), default);
}

/// A name the checkpoint does not have is bad input naming the file and the names it has; a name
/// for a checkpoint with one template (other than `default`, which names it) or none is refused.
#[test]
fn a_chat_template_name_the_model_lacks_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let query = |model: &str, name: &str| {
        injector(
            p,
            &[
                "query",
                "hi",
                "--max-tokens",
                "1",
                "--device",
                "cpu",
                "--model",
                model,
                "--chat-template",
                name,
            ],
        )
    };
    write_tiny_hf(&p.join("hf"), 3);
    assert!(
        query("hf", "default").status.success(),
        "`default` names the only template"
    );
    assert_refused(
        &query("hf", "plain"),
        &[
            "hf/tokenizer_config.json",
            "--chat-template plain",
            "a single chat template",
        ],
    );
    set_hf_template(
        &p.join("hf"),
        serde_json::json!([{"name": "default", "template": CHAT_TEMPLATE}, {"name": "tool_use", "template": PLAIN_TEMPLATE}]),
    );
    assert_refused(
        &query("hf", "rag"),
        &[
            "hf/tokenizer_config.json",
            "--chat-template rag",
            "there are default, tool_use",
        ],
    );
    write_tiny_gguf_meta(&p.join("named.gguf"), 3, |meta| {
        meta.push((
            "tokenizer.chat_template.tool_use".into(),
            injector::model::gguf::Value::Str(PLAIN_TEMPLATE.into()),
        ))
    });
    assert_refused(
        &query("named.gguf", "rag"),
        &["named.gguf", "there are default, tool_use"],
    );
    write_tiny_gguf_meta(&p.join("bare.gguf"), 3, |meta| {
        meta.retain(|(k, _)| k != "tokenizer.chat_template")
    });
    assert_refused(&query("bare.gguf", "default"), &["bare.gguf", "has no chat template"]);
    assert_refused(&query("hf", ""), &["--chat-template"]);
}

/// A run records the template it was made with: its config names it (a run made with `default`
/// is the run made without the flag), the run's weights are queried with it, and `--resume` refuses
/// another.
#[test]
fn a_run_records_its_chat_template_and_keeps_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_hf(&p.join("hf"), 3);
    set_hf_template(
        &p.join("hf"),
        serde_json::json!([{"name": "default", "template": CHAT_TEMPLATE}, {"name": "plain", "template": PLAIN_TEMPLATE}]),
    );
    std::fs::create_dir_all(p.join("k")).unwrap();
    std::fs::write(
        p.join("k/a.yaml"),
        "subject: Zorb\nanswer: Zorb is blue.\nprompts: [Zorb?]\n",
    )
    .unwrap();
    let base = ["--model", "hf", "--ledger", "l.db", "--device", "cpu"];
    let with = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend_from_slice(&base);
        injector(p, &v)
    };
    let run = |flags: &[&str]| {
        let mut v = vec!["run", "k", "--max-steps", "2", "--json", "-q"];
        v.extend_from_slice(flags);
        let o = with(&v);
        assert!(o.status.success(), "{}", stderr(&o));
        let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        out["run"].as_str().unwrap().to_string()
    };
    let plain = run(&["--chat-template", "plain"]);
    let show = with(&["ledger", "show", &plain, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(v["config"]["chat_template"], "plain");
    let default = run(&["--chat-template", "default"]);
    assert_ne!(default, plain, "another template is another run");
    assert_eq!(run(&[]), default, "`default` is recorded as no name: the same run");
    let show = with(&["ledger", "show", &default, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert!(v["config"].get("chat_template").is_none(), "{}", v["config"]);

    // The run's weights are rebuilt with its template, without the flag: the prompt's ids are
    // the plain template's bytes (one token each in the tiny vocabulary), with no markup token.
    let o = with(&["logits", "hi", "--run", &plain, "--last", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(ids["ids"].as_array().unwrap().len(), PLAIN_HI.len(), "{}", ids["ids"]);
    // Another template for the recorded run is refused, before anything loads.
    let o = with(&["run", "--resume", &plain, "--chat-template", "default"]);
    assert_refused(&o, &["--chat-template default", &plain, "named plain"]);
    let o = with(&["query", "hi", "--run", &default, "--chat-template", "plain"]);
    assert_refused(&o, &["--chat-template plain", "the model's default chat template"]);
    assert!(with(&["run", "--resume", &plain, "-q"]).status.success());
    // So are flags that would change the resumed run's config (they used to be ignored silently).
    let o = with(&[
        "run",
        "--resume",
        &plain,
        "--lr",
        "0.1",
        "--strategy",
        "mixed",
        "--seed",
        "3",
    ]);
    assert_refused(
        &o,
        &["--strategy, --lr, --seed", &plain, "start a new run without --resume"],
    );
    // --config-json (compare's children) carries a whole config: with config flags or --resume it
    // is refused, where the flags used to be ignored silently.
    let json = v["config"].to_string();
    let o = with(&["run", "k", "--config-json", &json, "--protect", "1", "--seed", "3"]);
    assert_refused(
        &o,
        &["--protect, --seed", "--config-json carries the run's whole config"],
    );
    let o = with(&["run", "--resume", &plain, "--config-json", &json]);
    assert_refused(&o, &["--resume", "--config-json carries the run's whole config"]);
}

/// The tiny Hugging Face folder with room for `positions` tokens.
fn write_short_hf(hf: &Path, positions: usize) {
    write_tiny_hf(hf, 3);
    let path = hf.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = positions.into();
    std::fs::write(path, cfg.to_string()).unwrap();
}

/// Tokens of a user turn with the tiny template (one token per byte): `<|im_start|>user\n`, the
/// text, `<|im_end|>\n<|im_start|>assistant\n`.
fn prompt_tokens(text: &str) -> usize {
    1 + "user\n".len() + text.len() + 1 + 1 + 1 + "assistant\n".len()
}

#[test]
fn a_fact_longer_than_the_models_positions_is_refused_before_training() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_short_hf(&p.join("hf"), 64);
    std::fs::create_dir_all(p.join("k")).unwrap();
    let (prompt, probe) = ("What is Zorb?", "Tell me about Zorb, please.");
    let answer = "Zorb is a small blue town on a river, founded long ago.";
    std::fs::write(
        p.join("k/a.yaml"),
        format!("facts:\n  - id: short\n    subject: Mib\n    answer: Mib is 7.\n    prompts: [Mib?]\n  - id: zorb\n    subject: Zorb\n    answer: {answer}\n    prompts: [\"{prompt}\"]\n    probes: [\"{probe}\"]\n"),
    )
    .unwrap();
    // The longest example: the probe's turn, the answer and the end-of-turn token.
    let n = prompt_tokens(probe) + answer.len() + 1;
    assert!(n > 64);
    let want = format!("a.yaml:6: fact zorb is {n} tokens with its template; the model's limit is 64");
    let args = ["--model", "hf", "--device", "cpu", "--ledger", "l.db", "--reports", "r"];
    for cmd in [
        &["run", "k"][..],
        &["probe", "k"],
        &["compare", "k", "--strategy", "sequential,mixed"],
    ] {
        let o = injector(p, &[cmd, &args].concat());
        assert_refused(&o, &[&want]);
        assert!(!p.join("l.db").exists(), "{cmd:?} created the ledger");
    }
}

#[test]
fn generation_stops_at_the_models_positions() {
    let d = tempfile::tempdir().unwrap();
    write_short_hf(&d.path().join("hf"), 40);
    let m = load(&d.path().join("hf"), Device::Cpu).unwrap();
    let tok = &m.tokenizer;
    let prompt = tok.encode_chat(&[("user", "hi")], true).unwrap();
    assert_eq!(prompt.len(), prompt_tokens("hi"));
    let greedy = Sampling {
        max_tokens: 500,
        ..Default::default()
    };
    let out = generate(&m.model, tok, &prompt, &greedy, &NoAdapter, |_| {}).unwrap();
    assert!(prompt.len() + out.len() <= 40, "{} + {}", prompt.len(), out.len());
    let outs = greedy_batch(&m.model, tok, std::slice::from_ref(&prompt), 500, &NoAdapter).unwrap();
    assert!(prompt.len() + outs[0].len() <= 40);
    // A prompt that fills the positions alone is refused, in the library and by `query`.
    let long = "x".repeat(40);
    let ids = Example::chat(tok, &long, "").unwrap().prompt;
    let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let e = generate(&m.model, tok, &ids, &greedy, &NoAdapter, |_| {}).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    let o = injector(d.path(), &["query", &long, "--model", "hf", "--device", "cpu"]);
    let want = format!(
        "the prompt is {} tokens with its template; the model's limit is 40",
        prompt_tokens(&long)
    );
    assert_refused(&o, &[&want]);
}

/// Values a model cannot use, and counts no model has, are refused when the model loads (exit 2,
/// one line naming the file), before any allocation they would drive: non-finite, zero or negative
/// rotary base and norm epsilon; a layer count the file's tensors do not match, or absurdly large;
/// the same in a Hugging Face config.
#[test]
fn model_values_that_cannot_work_are_refused_at_load() {
    use injector::model::gguf::Value;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let query = |model: &str| {
        injector(
            p,
            &["query", "hi", "--max-tokens", "2", "--device", "cpu", "--model", model],
        )
    };
    let set = |key: &'static str, v: Value| {
        move |meta: &mut Vec<(String, Value)>| {
            for (k, old) in meta.iter_mut().filter(|(k, _)| k == key) {
                let _ = k;
                *old = v.clone();
            }
        }
    };
    for (i, (key, v, needle)) in [
        ("llama.rope.freq_base", Value::F32(f32::NAN), "rope_theta is NaN"),
        ("llama.rope.freq_base", Value::F32(-1.0), "rope_theta is -1"),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(0.0),
            "rms_norm_eps is 0",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::INFINITY),
            "rms_norm_eps is inf",
        ),
        ("llama.block_count", Value::U32(1 << 31), "layers is beyond any model"),
        (
            "llama.block_count",
            Value::U32(1),
            "block_count is 1 but the file holds 2 layers",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("m{i}.gguf");
        write_tiny_gguf_meta(&p.join(&name), 3, set(key, v));
        let t = std::time::Instant::now();
        assert_refused(&query(&name), &[&name, needle]);
        assert!(t.elapsed().as_secs() < 30);
    }
    // A tokenizer with ids the embedding has no row for.
    write_tiny_gguf_meta(&p.join("vocab.gguf"), 3, |meta| {
        meta.push(("llama.vocab_size".into(), Value::U32(10)))
    });
    assert_refused(&query("vocab.gguf"), &["vocab.gguf", "tokens but the model embeds 10"]);
    // A Hugging Face config with a layer count no model has, or a negative epsilon.
    for (key, v, needle) in [
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000_000_000u64),
            "layers is beyond any model",
        ),
        ("rms_norm_eps", serde_json::json!(-1e-5), "rms_norm_eps is -0.00001"),
        ("rope_theta", serde_json::json!(0.0), "rope_theta is 0"),
    ] {
        write_tiny_hf(&p.join("hf"), 3);
        let cfg_path = p.join("hf/config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg[key] = v;
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        assert_refused(&query("hf"), &["config.json", needle]);
    }
}

/// Values clap itself refuses (an unknown choice, a number that does not parse, a negative number
/// after a space, a repeated flag, an unknown flag) are bad input like any other: one line, exit 2,
/// naming the flag or value, with the choices where there are some; help still prints in full.
#[test]
fn arguments_the_parser_refuses_are_one_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for (args, needles) in [
        (
            &["run", "k", "--lr-scheduler", "step"][..],
            &["--lr-scheduler", "possible values: constant, linear, cosine"][..],
        ),
        (&["run", "k", "--protect", "x"], &["'x'", "--protect"]),
        (&["run", "k", "--protect", "-1"], &["'-1'", "--flag=-1"]),
        (
            &["run", "k", "--lr", "1", "--lr", "2"],
            &["--lr", "cannot be used multiple times"],
        ),
        (&["run", "k", "--bogus"], &["'--bogus'"]),
        (
            &["--base-dtype", "xx", "run", "k"],
            &["--base-dtype", "auto, f32, bf16"],
        ),
    ] {
        let o = injector(p, args);
        assert_refused(&o, needles);
    }
    let help = injector(p, &["run", "--help"]);
    assert!(
        help.status.success() && stdout(&help).lines().count() > 20,
        "{}",
        stdout(&help)
    );
    assert!(
        std::fs::read_dir(p).unwrap().next().is_none(),
        "a refused command wrote something"
    );
}
