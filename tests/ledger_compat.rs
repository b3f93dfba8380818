//! A ledger written by an earlier release (tests/fixtures/ledger-v1, made before the configuration
//! moved to `src/config/`) still reads, renders and resumes: its recorded config goes through today's
//! validation, its stored factors replay to the recorded weights hash, and the run continues with a new
//! fact as one more step.
mod common;

use common::*;
use std::path::Path;

const RUN: &str = "run-f4c56d57";
/// The weights after the fixture's two steps, as that release recorded them.
const RECORDED: &str = "415e921f012b856579119fdc21d80b7078e7211e864974ab501777df3627c490";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("JSON on stdout")
}

#[test]
fn a_ledger_of_the_previous_release_opens_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    copy_dir(&fixture("ledger-v1"), p);
    let base = ["--ledger", "ledger.sqlite", "--device", "cpu", "--reports", "reports"];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(&base).map(|s| s.to_string()).collect() };
    let run = |args: &[&str]| {
        let a = with(args);
        injector(p, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Read: the list, the run with its config and per-fact summary, and its report.
    let list = json(&run(&["ledger", "list", "--json"]));
    assert_eq!(list[0]["id"], RUN);
    let show = json(&run(&["ledger", "show", RUN, "--json"]));
    assert_eq!(show["run"]["weights_hash"], RECORDED);
    assert_eq!(show["config"]["train"]["lr"], 0.05);
    // Its merges made ΔW on the host, as every run before schema 6 did; replay repeats that.
    assert_eq!(show["run"]["merge_on_device"], false);
    // Today's code derives the same run key from the recorded config (the key hashes the config's
    // serialised form, so the same command still finds the same run).
    let r = &show["run"];
    let config = injector::config::RunConfig::from_json(r["config"].as_str().unwrap(), "ledger").unwrap();
    let key = injector::inject::plan::run_key(
        r["model_hash"].as_str().unwrap(),
        r["knowledge_dir"].as_str().unwrap(),
        &config,
    );
    assert_eq!(key, r["key"].as_str().unwrap());
    let ids: Vec<&str> = show["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["zorb", "quax"]);
    let o = run(&["report", RUN]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(p.join("reports").join(RUN).join("index.html").is_file());

    // Resume with a third fact: the two recorded steps replay to the recorded hash (the driver checks
    // it), and one new step injects the new fact.
    std::fs::copy(p.join("b.yaml"), p.join("k/b.yaml")).unwrap();
    let out = json(&run(&["run", "--resume", RUN, "k", "--model", "tiny.gguf", "--json"]));
    assert_eq!(out["run"], RUN);
    assert_eq!(out["new_steps"], 1);
    assert_eq!(out["total_steps"], 3);
    let facts: Vec<&str> = out["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(facts, ["zorb", "quax", "mib"]);
    assert_ne!(out["weights_hash"], RECORDED);
    let show = json(&run(&["ledger", "show", RUN, "--json"]));
    assert_eq!(show["run"]["status"], "finished");
    // The general check: a run recorded before it gets its base figure when resumed (step -1, from
    // the base weights before the replay) and one for the new step; the recorded steps have none.
    let ppl: Vec<i64> = show["perplexity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    assert_eq!(ppl, [-1, 2]);
    assert_eq!(out["base_perplexity"], show["perplexity"][0][1]);
    assert!(out["base_perplexity"].as_f64().unwrap() >= 1.0);

    // And the same command again is a no-op.
    let again = json(&run(&["run", "--resume", RUN, "k", "--model", "tiny.gguf", "--json"]));
    assert_eq!(again["new_steps"], 0);
    assert_eq!(again["weights_hash"], out["weights_hash"]);

    // A different model is refused before any work (exit 2), and the ledger is left as it was.
    write_tiny_gguf(&p.join("other.gguf"), 12);
    let before = std::fs::read(p.join("ledger.sqlite")).unwrap();
    let o = run(&["run", "--resume", RUN, "k", "--model", "other.gguf"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not the model run"), "{}", stderr(&o));
    assert!(
        std::fs::read(p.join("ledger.sqlite")).unwrap() == before,
        "the ledger changed"
    );
}
