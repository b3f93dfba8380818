//! Scoring a run's export as the run was scored (what `bench/export_recall.sh` relies on), on a tiny
//! random model's run: `probe --model EXPORT --locality RUN` gives the run's own locality for an
//! exact export, and `score-answers` scores answers decoded elsewhere as `probe` scores its own.
mod common;

use common::export::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn an_export_is_scored_as_the_run_was() {
    let (d, run) = workspace_with_run();
    let p = d.path();
    let o = export(p, &run, &["--out", "f32", "--format", "gguf", "--dtype", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // f32 base weights, as the run's (the check below is exact).
    let args = ["--ledger", "l.db", "--device", "cpu", "--base-dtype", "f32", "--json"];
    let mut probe = vec!["probe", "k", "--model", "f32/model.gguf", "--locality", &run];
    probe.extend(args);
    let o = injector(p, &probe);
    assert!(o.status.success(), "{}", stderr(&o));
    let scored: Value = serde_json::from_str(&stdout(&o)).unwrap();
    // The f32 export computes the run's logits bit for bit, so its locality is the one recorded
    // after the run's last step.
    let o = injector(p, &["ledger", "show", &run, "--ledger", "l.db", "--json"]);
    let show: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let recorded = show["locality"].as_array().unwrap().last().unwrap()[1]
        .as_f64()
        .unwrap();
    assert_eq!(scored["locality"].as_f64().unwrap(), recorded);
    // And the general check's perplexity, the same way.
    let ppl = show["perplexity"].as_array().unwrap().last().unwrap()[1]
        .as_f64()
        .unwrap();
    assert_eq!(scored["perplexity"].as_f64().unwrap(), ppl);

    // The greedy answers probe decoded, scored again by score-answers: the same free scores.
    let facts = scored["facts"].as_array().unwrap();
    let texts = |f: &Value, k: &str| -> Vec<Value> {
        f["free"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["text"].clone())
            .collect()
    };
    let answers: Vec<Value> = facts
        .iter()
        .map(|f| json!({"id": f["id"], "recall": texts(f, "recall_each"), "general": texts(f, "general_each")}))
        .collect();
    std::fs::write(p.join("answers.json"), serde_json::to_string(&answers).unwrap()).unwrap();
    let o = injector(p, &["score-answers", "k", "answers.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(again.as_array().unwrap().len(), facts.len());
    for (a, f) in again.as_array().unwrap().iter().zip(facts) {
        assert_eq!((&a["id"], &a["hash"]), (&f["id"], &f["hash"]));
        assert_eq!(a["free"], f["free"], "{}", f["id"]);
    }
    // A known answer, scored by hand: Mib's one detail ("7") is in the first answer, not the second.
    let mib = json!([{"id": "mib", "recall": ["It is 7.", "No idea."], "general": ["Mib is 7 years old."]}]);
    std::fs::write(p.join("mib.json"), mib.to_string()).unwrap();
    let o = injector(p, &["score-answers", "k", "mib.json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v[0]["free"]["recall"].as_f64(), v[0]["free"]["general"].as_f64()),
        (Some(0.5), Some(1.0))
    );

    // Bad input: one line, exit 2.
    for (answers, says) in [
        (json!([{"id": "nope", "recall": [], "general": []}]), "no fact 'nope'"),
        (
            json!([{"id": "mib", "recall": ["x"], "general": ["y"]}]),
            "has 2 prompt(s) and 1 probe(s)",
        ),
        (json!({"id": "mib"}), "answers.json"),
    ] {
        std::fs::write(p.join("answers.json"), answers.to_string()).unwrap();
        let o = injector(p, &["score-answers", "k", "answers.json"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1);
    }
    let mut probe = vec!["probe", "k", "--model", "f32/model.gguf", "--locality", "run-none"];
    probe.extend(args);
    let o = injector(p, &probe);
    assert_eq!(o.status.code(), Some(2), "an unknown run: {}", stderr(&o));
}
