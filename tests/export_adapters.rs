//! `injector export --adapters` on a tiny random model's 3-step run: each step's adapter in peft's
//! AdaLoRA format (files, config fields, key names, shapes against the rank pattern); the base
//! export (`--step -1`); base + each adapter, read back as peft computes it, gives the step's merged
//! weights; and (when the interop venv has peft) peft's PeftModel gives the step's logits.
mod common;

use common::export::*;
use common::*;
use injector::export::adapters::delta_weights;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

const PROJS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn adapters_are_written_in_pefts_adalora_format() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    let o = export(p, &run, &["--out", "out", "--adapters"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 adapter(s)"), "{}", stderr(&o));
    assert!(entries(&p.join("out")).contains(&"adapters".to_string()));
    assert_eq!(
        entries(&p.join("out/adapters")),
        ["README.md", "step-0", "step-1", "step-2"]
    );
    for step in 0..3 {
        let dir = p.join(format!("out/adapters/step-{step}"));
        assert_eq!(entries(&dir), ["adapter_config.json", "adapter_model.safetensors"]);
        let c = read_json(&dir.join("adapter_config.json"));
        assert_eq!(c["peft_type"], "ADALORA");
        assert_eq!(c["task_type"], "CAUSAL_LM");
        assert_eq!(c["base_model_name_or_path"], "tiny.gguf");
        assert_eq!(c["target_modules"], json!(["gate_proj", "up_proj", "down_proj"]));
        assert_eq!(c["layers_to_transform"], json!([0, 1]));
        assert_eq!(c["layers_pattern"], "layers");
        assert_eq!((c["init_r"].clone(), c["target_r"].clone()), (json!(12), json!(8)));
        assert_eq!(c["lora_alpha"].as_f64(), Some(32.0));
        assert_eq!(c["lora_dropout"].as_f64(), Some(0.0));
        assert!(c["total_step"].as_i64().unwrap() > 0);
        // Every site, each with its kept ranks; the tensors hold exactly those.
        let (h, _) = safetensors_header(&dir.join("adapter_model.safetensors"));
        assert_eq!(h["__metadata__"]["format"], "pt");
        assert_eq!(h["__metadata__"]["injector.step"], step.to_string());
        let mut want_keys = Vec::new();
        for l in 0..TINY.layers {
            for proj in PROJS {
                let module = format!("model.layers.{l}.mlp.{proj}");
                let kept: Vec<bool> = serde_json::from_value(c["rank_pattern"][format!("{module}.lora_E")].clone())
                    .unwrap_or_else(|e| panic!("{module}: {e}"));
                assert_eq!(kept.len(), 12);
                let k = kept.iter().filter(|&&b| b).count() as i64;
                let (out, inp) = if proj == "down_proj" {
                    (TINY.hidden, TINY.inter)
                } else {
                    (TINY.inter, TINY.hidden)
                };
                let shape = |part: &str| -> Vec<i64> {
                    let v = &h[format!("base_model.model.{module}.{part}")];
                    assert_eq!(v["dtype"], "F32", "{module}.{part}");
                    serde_json::from_value(v["shape"].clone()).unwrap()
                };
                assert_eq!(shape("lora_A"), [k, inp as i64], "{module}");
                assert_eq!(shape("lora_B"), [out as i64, k], "{module}");
                assert_eq!(shape("lora_E"), [k, 1], "{module}");
                for part in ["lora_A", "lora_B", "lora_E"] {
                    want_keys.push(format!("base_model.model.{module}.{part}"));
                }
            }
        }
        want_keys.sort();
        let got: Vec<String> = h
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        assert_eq!(got, want_keys, "no other tensors (peft rebuilds ranknum)");
    }
    let readme = std::fs::read_to_string(p.join("out/adapters/README.md")).unwrap();
    assert!(readme.contains("step N's on the weights after step N-1"), "{readme}");
}

#[test]
fn base_plus_each_adapter_gives_the_steps_weights() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    for (out, extra) in [
        ("base", &["--step", "-1"][..]),
        ("s0", &["--step", "0"][..]),
        ("s1", &["--step", "1"][..]),
        ("all", &["--adapters"][..]),
    ] {
        let mut args = vec!["--out", out];
        args.extend_from_slice(extra);
        let o = export(p, &run, &args);
        assert!(o.status.success(), "{out}: {}", stderr(&o));
    }
    // --step -1 is the base model, as the run started from it.
    let (_, want) = logits(p, &["--model", "tiny.gguf"]);
    let (_, got) = logits(p, &["--model", "base"]);
    assert_eq!(got, want, "the --step -1 export holds the base weights");
    for (step, before, after) in [(0, "base", "s0"), (1, "s0", "s1"), (2, "s1", "all")] {
        let (w0, w1) = (
            read_tensors(&p.join(before).join("model.safetensors")),
            read_tensors(&p.join(after).join("model.safetensors")),
        );
        let dir = p.join(format!("all/adapters/step-{step}"));
        let config: Value = read_json(&dir.join("adapter_config.json"));
        let delta = delta_weights(&config, &read_tensors(&dir.join("adapter_model.safetensors"))).unwrap();
        assert_eq!(delta.len(), TINY.layers * PROJS.len(), "step {step}");
        let mut moved_any = false;
        for (name, w) in &w1 {
            let Some(dw) = delta.get(name) else {
                assert!(w.equal(&w0[name]), "step {step}: {name} is not adapted and stays");
                continue;
            };
            let moved = (w - &w0[name]).abs().max().double_value(&[]);
            let off = (&w0[name] + dw - w).abs().max().double_value(&[]);
            moved_any |= moved > 0.0;
            assert!(
                off <= 1e-6,
                "step {step}: {name}: base + adapter is {off} off (moved {moved})"
            );
        }
        assert!(moved_any, "step {step} changed some weight");
    }
}

#[test]
fn adapters_of_the_base_export_are_none() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    let o = export(p, &run, &["--out", "base", "--step", "-1", "--adapters"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("after 0 step(s)") && stderr(&o).contains("0 adapter(s)"));
    assert_eq!(entries(&p.join("base/adapters")), ["README.md"]);
    let o = export(p, &run, &["--out", "x", "--step", "-2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--step -2"), "{}", stderr(&o));
}

/// Runs tests/interop/check_peft.py on one step: the adapter of `step` loaded by peft on the export
/// `before`, against `injector logits --run --step` and the export `after`.
fn check_peft(py: &Path, p: &Path, run: &str, step: i64, before: &str, after: &str) -> String {
    let s = step.to_string();
    let o = injector(
        p,
        &[
            "logits",
            "Tell me Zorb.",
            "--run",
            run,
            "--step",
            &s,
            "--ledger",
            "l.db",
            "--device",
            "cpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let json = format!("logits-{step}.json");
    std::fs::write(p.join(&json), &o.stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/check_peft.py");
    let adapter = format!("all/adapters/step-{step}");
    let o = std::process::Command::new(py)
        .arg(script)
        .args([
            "--base",
            before,
            "--adapter",
            &adapter,
            "--merged",
            after,
            "--logits",
            &json,
        ])
        .args(["--prompt", "Tell me Zorb."])
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn peft_gives_the_steps_logits_with_an_exported_adapter() {
    let Some(py) = interop_python("peft, transformers, torch") else {
        eprintln!("skipped: no Python with peft (see tests/interop/run.sh)");
        return;
    };
    let (d, run) = workspace_with_run();
    let p = d.path();
    for (out, step) in [("base", "-1"), ("s0", "0"), ("s1", "1")] {
        let o = export(p, &run, &["--out", out, "--step", step]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = export(p, &run, &["--out", "all", "--adapters"]);
    assert!(o.status.success(), "{}", stderr(&o));
    println!(
        "step 0 on the base export:\n{}",
        check_peft(&py, p, &run, 0, "base", "s0")
    );
    println!(
        "step 2 on the export of step 1:\n{}",
        check_peft(&py, p, &run, 2, "s1", "all")
    );
}
