//! `injector export --format hf` on a tiny random model: the folder's files, config fields and
//! safetensors names and shapes, the round trip through injector's own loader, bad input, and (when
//! the interop venv has transformers) transformers' logits on the export.
mod common;

use common::export::*;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn export_writes_a_hugging_face_folder() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    let before = entries(p);
    let o = export(p, &run, &["--out", "out"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_only(p, &before, &["out"]);
    assert_eq!(
        entries(&p.join("out")),
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let t = TINY;
    let c = read_json(&p.join("out/config.json"));
    assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], "llama");
    for (key, want) in [
        ("hidden_size", t.hidden),
        ("intermediate_size", t.inter),
        ("num_hidden_layers", t.layers),
        ("num_attention_heads", t.heads),
        ("num_key_value_heads", t.kv_heads),
        ("head_dim", t.hidden / t.heads),
        ("vocab_size", vocab().len()),
        ("max_position_embeddings", 256),
        ("bos_token_id", 1),
        ("eos_token_id", 2),
    ] {
        assert_eq!(c[key].as_u64(), Some(want as u64), "{key}");
    }
    assert!((c["rms_norm_eps"].as_f64().unwrap() - 1e-5).abs() < 1e-9);
    assert_eq!(c["rope_theta"].as_f64(), Some(10000.0));
    assert!(c["rope_scaling"].is_null());
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["hidden_act"], "silu");
    assert_eq!(c["torch_dtype"], "float32");
    let tc = read_json(&p.join("out/tokenizer_config.json"));
    assert_eq!(tc["chat_template"], CHAT_TEMPLATE);
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    let g = read_json(&p.join("out/generation_config.json"));
    assert_eq!(g["eos_token_id"], serde_json::json!([2]));
    // Every weight under its HF name and shape, F32, tied embeddings (no lm_head), laid end to end.
    let (h, data_len) = safetensors_header(&p.join("out/model.safetensors"));
    assert_eq!(h["__metadata__"]["format"], "pt");
    let want: BTreeMap<String, Vec<i64>> = tiny_weights(0).into_iter().map(|(n, s, _)| (n, s)).collect();
    let got: BTreeMap<String, Vec<i64>> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), serde_json::from_value(v["shape"].clone()).unwrap()))
        .collect();
    assert_eq!(got, want);
    let mut spans: Vec<(u64, u64)> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| {
            assert_eq!(v["dtype"], "F32");
            let o: Vec<u64> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
            (o[0], o[1])
        })
        .collect();
    spans.sort();
    assert_eq!(spans[0].0, 0);
    assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "no gaps, no overlaps");
    assert_eq!(spans.last().unwrap().1 as usize, data_len);
}

#[test]
fn export_round_trips_through_injectors_loader() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    std::fs::create_dir(p.join("f32")).unwrap();
    let o = export(p, &run, &["--out", "f32"]);
    assert!(o.status.success(), "an empty folder is filled: {}", stderr(&o));
    let o = export(p, &run, &["--out", "bf16", "--dtype", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = export(p, &run, &["--out", "step0", "--step", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // f32: the export loaded back gives the replayed run's logits bit for bit.
    let (ids, want) = logits(p, &["--run", &run, "--ledger", "l.db"]);
    let (ids_back, got) = logits(p, &["--model", "f32"]);
    assert_eq!(
        ids_back, ids,
        "the exported tokenizer and chat template encode the same ids"
    );
    assert_eq!(got, want);
    // bf16: each weight is the f32 weight rounded once to bf16, and the logits stay close.
    let read = |dir: &str| -> BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(p.join(dir).join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (f32w, bf16w) = (read("f32"), read("bf16"));
    assert_eq!(f32w.len(), bf16w.len());
    for (name, w) in &f32w {
        assert_eq!(bf16w[name].kind(), tch::Kind::BFloat16, "{name}");
        assert!(bf16w[name].equal(&w.to_kind(tch::Kind::BFloat16)), "{name}");
    }
    let (_, got) = logits(p, &["--model", "bf16"]);
    let (worst, scale) = worst_and_scale(&want, &got);
    assert!(
        worst > 0.0 && worst < 0.05 * scale,
        "bf16 logits off by {worst} (scale {scale})"
    );
    // --step 0 exports the weights after the first step: not those after the last.
    let step0 = read("step0");
    assert!(f32w.iter().any(|(name, w)| !step0[name].equal(w)));
}

#[test]
fn bad_export_input_exits_2_and_writes_nothing() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    let ledger_before = std::fs::read(p.join("l.db")).unwrap();
    std::fs::create_dir(p.join("full")).unwrap();
    std::fs::write(p.join("full/x"), "keep").unwrap();
    let before = entries(p);
    let cases: [(&[&str], &str); 7] = [
        (&["no-such-run", "--out", "o"], "no run 'no-such-run'"),
        (&[&run, "--out", "o", "--step", "3"], "--step 3"),
        (&[&run, "--out", "o", "--step", "99"], "has 3 step(s)"),
        (&[&run, "--out", "o", "--format", "onnx"], "unknown format 'onnx'"),
        (&[&run, "--out", "o", "--dtype", "q4_1"], "unknown type 'q4_1'"),
        (&[&run, "--out", "full"], "not empty"),
        (&[&run, "--out", "l.db"], "is a file"),
    ];
    for (args, says) in cases {
        let mut all = vec!["export"];
        all.extend_from_slice(args);
        all.extend(["--ledger", "l.db", "--device", "cpu"]);
        let o = injector(p, &all);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(says), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
        assert_only(p, &before, &[]);
    }
    assert_eq!(std::fs::read_to_string(p.join("full/x")).unwrap(), "keep");
    assert_eq!(
        std::fs::read(p.join("l.db")).unwrap(),
        ledger_before,
        "the ledger is only read"
    );
}

#[test]
fn transformers_gives_the_runs_logits_on_the_tiny_export() {
    let Some(py) = interop_python("transformers, torch") else {
        eprintln!("skipped: no Python with transformers (see tests/interop/README.md)");
        return;
    };
    let (d, run) = workspace_with_run();
    let p = d.path();
    let o = export(p, &run, &["--out", "out"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = injector(
        p,
        &[
            "logits",
            "Tell me Zorb.",
            "--run",
            &run,
            "--ledger",
            "l.db",
            "--device",
            "cpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(p.join("logits.json"), &o.stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/check_hf.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .args([
            "tiny",
            "--export",
            "out",
            "--logits",
            "logits.json",
            "--prompt",
            "Tell me Zorb.",
        ])
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    println!("{}", stdout(&o));
}
