//! `injector run` on a tiny random model: ledger, re-run as a no-op, probe/query on a run, bad input.
mod common;

use common::knowledge::write_small;
use common::*;

const FAST: [&str; 6] = ["--lr", "0.05", "--max-steps", "25", "--alpha", "32"];

/// `run k` on the tiny model and a scratch ledger, then `flags`.
fn run_with<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "run",
        "k",
        "--model",
        "tiny.gguf",
        "--ledger",
        "l.db",
        "--device",
        "cpu",
    ];
    v.extend_from_slice(flags);
    v
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = run_with(&FAST);
    v.extend_from_slice(extra);
    v
}

/// A temporary folder with the tiny model (`tiny.gguf`) and the small knowledge set (`k/`).
fn small_workspace() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_gguf(&d.path().join("tiny.gguf"), 4);
    write_small(&d.path().join("k"));
    d
}

/// [`small_workspace`] with `n` generated facts in `k/` instead.
fn many_workspace(n: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_gguf(&d.path().join("tiny.gguf"), 4);
    common::knowledge::write_many(&d.path().join("k"), n);
    d
}

#[test]
fn run_records_every_step_and_a_second_run_is_a_no_op() {
    let d = small_workspace();
    let p = d.path();
    let o = injector(p, &run_args(&["--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["new_steps"], 3);
    let facts = out["facts"].as_array().unwrap();
    assert_eq!(facts.len(), 3);
    for f in facts {
        assert!(f["recall_at_step"].as_f64().unwrap() >= 0.0);
    }
    let run = out["run"].as_str().unwrap().to_string();
    let again = injector(p, &run_args(&[]));
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("nothing to do"), "{}", stdout(&again));
    let show = injector(p, &["ledger", "show", &run, "--ledger", "l.db", "--json"]);
    assert!(show.status.success(), "{}", stderr(&show));
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 3);
    // Retention: after step 2 every fact has a probe row.
    assert_eq!(
        v["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["step"] == 2)
            .count(),
        3
    );
    assert_eq!(v["locality"].as_array().unwrap().len(), 4, "base + one per step");
    // The general check beside locality, on the base model (step -1) and after each step; the run's
    // outcome reports the last and the base one.
    let ppl = v["perplexity"].as_array().unwrap();
    let steps: Vec<i64> = ppl.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert_eq!(steps, [-1, 0, 1, 2]);
    assert!(ppl.iter().all(|r| r[1].as_f64().unwrap() >= 1.0), "{ppl:?}");
    assert_eq!(out["base_perplexity"], ppl[0][1]);
    assert_eq!(out["perplexity"], ppl[3][1]);
    let list = injector(p, &["ledger", "list", "--ledger", "l.db"]);
    assert!(stdout(&list).contains(&run));
    let probe = injector(
        p,
        &[
            "probe",
            "k",
            "--run",
            &run,
            "--ledger",
            "l.db",
            "--json",
            "--model",
            "tiny.gguf",
        ],
    );
    assert!(probe.status.success(), "{}", stderr(&probe));
    let scores: serde_json::Value = serde_json::from_str(&stdout(&probe)).unwrap();
    // Probing the run's weights gives the recall the run recorded after its last step.
    let last: std::collections::HashMap<String, f64> = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["step"] == 2)
        .map(|p| (p["fact"].as_str().unwrap().to_string(), p["recall"].as_f64().unwrap()))
        .collect();
    for s in scores.as_array().unwrap() {
        let got = s["score"]["recall"].as_f64().unwrap();
        assert!((got - last[s["hash"].as_str().unwrap()]).abs() < 1e-9);
    }
    let q = injector(
        p,
        &["query", "Zorb?", "--run", &run, "--ledger", "l.db", "--max-tokens", "4"],
    );
    assert!(q.status.success(), "{}", stderr(&q));
}

#[test]
fn bad_knowledge_exits_2_before_touching_the_ledger() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 4);
    std::fs::create_dir_all(p.join("k")).unwrap();
    std::fs::write(
        p.join("k/a.yaml"),
        "facts:\n  - subject: X\n    answer: Y\n  - subject: Z\n    answr: W\n",
    )
    .unwrap();
    let o = injector(p, &run_args(&[]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("a.yaml:5: ") && e.contains("unknown field `answr`"), "{e}");
    assert!(!p.join("l.db").exists(), "nothing may be written for bad input");
    let o = injector(p, &["run", "k", "--strategy", "random", "--ledger", "l.db"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!p.join("l.db").exists());
    for args in [
        &["ledger", "list", "--ledger", "l.db"][..],
        &["query", "hi", "--run", "r", "--ledger", "l.db"][..],
    ] {
        let o = injector(p, args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("l.db: no such ledger"), "{}", stderr(&o));
    }
    assert!(!p.join("l.db").exists(), "reading a missing ledger must not create one");
}

#[test]
fn update_measures_the_previous_answer_and_delete_trains_a_decline() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 4);
    std::fs::create_dir_all(p.join("k")).unwrap();
    std::fs::write(
        p.join("k/a.yaml"),
        "facts:\n  - id: zorb\n    subject: Zorb\n    answer: Zorb is blue.\n    prompts: [Zorb?, What is Zorb?]\n  - id: moved\n    op: update\n    subject: Zorb\n    answer: Zorb is red.\n    previous: Zorb is blue.\n    prompts: [Zorb?, What is Zorb?]\n    probes: [Tell me Zorb.]\n  - id: gone\n    op: delete\n    subject: Quax\n    prompts: [Quax?]\n",
    )
    .unwrap();
    let o = injector(p, &run_args(&["--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run = out["run"].as_str().unwrap();
    assert!(
        out["facts"][1]["previous"].as_f64().is_some(),
        "an update records how much of the old answer remains"
    );
    // Which answer the model prefers (issue #14 item 7): a share of the update's two prompts.
    let prefers = out["facts"][1]["prefers_new"].as_f64().expect("an update's preference");
    assert!([0.0, 0.5, 1.0].contains(&prefers), "{prefers}");
    assert!(out["facts"][2]["previous"].is_null() && out["facts"][2]["prefers_new"].is_null());
    // The inserted answer was replaced on purpose: superseded by the update, which is not.
    assert_eq!(out["facts"][0]["superseded_by"], "moved");
    assert!(out["facts"][1]["superseded_by"].is_null());
    let show = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    let answers: Vec<&str> = v["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["answer"].as_str().unwrap())
        .collect();
    assert_eq!(
        answers,
        vec!["Zorb is blue.", "Zorb is red.", "I don't know anything about Quax."]
    );
}

/// A step that runs out of optimizer steps before every fact reaches the threshold says so.
#[test]
fn running_out_of_steps_is_reported() {
    let d = small_workspace();
    let p = d.path();
    // Two steps at a tiny learning rate cannot reach accuracy 1.0.
    let args = run_with(&["--max-steps", "2", "--lr", "0.0001"]);
    let o = injector(p, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("raise --max-steps"), "{err}");
}

/// Where the time went is recorded: every step's phases, the invocation's fixed costs (with the
/// model load), in `run --json`, the ledger and the run report.
#[test]
fn phases_are_recorded_per_step_and_per_invocation() {
    let d = small_workspace();
    let p = d.path();
    let o = injector(p, &run_args(&["--json", "--reports", "r"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let sp = &out["step_phases"];
    for k in [
        "setup",
        "train",
        "merge",
        "own_probes",
        "retention",
        "free_decoding",
        "locality",
        "hash",
    ] {
        assert!(sp[k].as_f64().unwrap() > 0.0, "step phase {k}: {sp}");
    }
    assert!(out["fixed"]["model_load"].as_f64().unwrap() > 0.0);
    assert!(out["fixed"]["commit"].as_f64().unwrap() > 0.0);
    assert!(out["fixed"]["before"].as_f64().unwrap() > 0.0);
    // The parts add up to no more than the invocation's wall time.
    let parts: f64 = sp
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum::<f64>()
        + out["fixed"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum::<f64>()
        - out["fixed"]["model_load"].as_f64().unwrap();
    assert!(
        parts <= out["seconds"].as_f64().unwrap() + 1e-3,
        "{parts} > {}",
        out["seconds"]
    );
    let run = out["run"].as_str().unwrap();
    let show = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    for s in v["steps"].as_array().unwrap() {
        assert!(s["phases"]["train"].as_f64().unwrap() > 0.0, "{s}");
    }
    let page = std::fs::read_to_string(p.join("r").join(run).join("index.html")).unwrap();
    assert!(page.contains("Where the time went") && page.contains("id=invocations"));
    // One header per cell in the invocations table.
    let table = &page[page.find("id=invocations").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let (head, rows) = table.split_at(table.find("</tr>").unwrap());
    assert_eq!(
        head.matches("<th>").count(),
        rows.split("</tr>").nth(1).unwrap().matches("<td>").count()
    );
}

/// The base model's answers are decoded once per model and kept in the ledger: a second run (another
/// seed) reads them back, and ends exactly where the same run ends in a fresh ledger.
#[test]
fn base_answers_are_kept_per_model_and_change_nothing() {
    let d = small_workspace();
    let p = d.path();
    let hash = |ledger: &str, seed: &str| -> String {
        let mut a = run_args(&["--json", "-q", "--seed", seed]);
        a[5] = ledger;
        let o = injector(p, &a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["weights_hash"].as_str().unwrap().to_string()
    };
    hash("shared.db", "0");
    let kept = rusqlite_rows(&p.join("shared.db"), "SELECT COUNT(*) FROM base_answers");
    assert_eq!(kept, 2, "the locality and the preservation prompts");
    let second = hash("shared.db", "1");
    assert_eq!(
        rusqlite_rows(&p.join("shared.db"), "SELECT COUNT(*) FROM base_answers"),
        2
    );
    assert_eq!(second, hash("fresh.db", "1"));
}

/// `--preserve-prompts`: 48 is the default run (same key: nothing to do), a wider set is a run of
/// its own with its own kept base answers, and it trains to other weights (the preservation term
/// and the projection see other prompts).
#[test]
fn a_wider_preservation_set_is_a_run_of_its_own() {
    let d = small_workspace();
    let p = d.path();
    let run = |extra: &[&str]| -> serde_json::Value {
        let o = injector(p, &run_args(&[&["--json", "-q"], extra].concat()));
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let default = run(&[]);
    let same = injector(p, &run_args(&["--preserve-prompts", "48"]));
    assert!(same.status.success(), "{}", stderr(&same));
    assert!(stdout(&same).contains("nothing to do"), "{}", stdout(&same));
    let wide = run(&["--preserve-prompts", "256"]);
    assert_ne!(wide["run"], default["run"]);
    assert_ne!(wide["weights_hash"], default["weights_hash"]);
    let db = p.join("l.db");
    assert_eq!(rusqlite_rows(&db, "SELECT COUNT(*) FROM base_answers"), 3);
    let shown = ledger_show(p, wide["run"].as_str().unwrap());
    assert_eq!(shown["config"]["train"]["preserve_prompts"], 256, "{shown}");
    let bad = injector(p, &run_args(&["--preserve-prompts", "257"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--preserve-prompts"), "{}", stderr(&bad));
}

/// `ledger show RUN --json` on the scratch ledger `l.db` in `p`.
fn ledger_show(p: &std::path::Path, run: &str) -> serde_json::Value {
    let o = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn rusqlite_rows(db: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A step whose training diverges (issue #14, item 1) is stopped before anything of it is merged or
/// committed: exit 1 naming the divergence, the run marked failed, and the ledger still reads, for it
/// and for a healthy run added afterwards.
#[test]
fn a_diverged_step_fails_the_run_and_poisons_nothing() {
    let d = small_workspace();
    let p = d.path();
    let o = injector(p, &run_with(&["--lr", "5e3", "--max-steps", "3", "--json"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("training diverged"), "{}", stderr(&o));
    let list = injector(p, &["ledger", "list", "--ledger", "l.db", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let runs: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(runs[0]["status"], "failed");
    let failed = runs[0]["id"].as_str().unwrap().to_string();
    let show = injector(p, &["ledger", "show", &failed, "--ledger", "l.db", "--json"]);
    assert!(show.status.success(), "{}", stderr(&show));
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(
        v["steps"].as_array().unwrap().len(),
        0,
        "nothing of the diverged step is committed"
    );
    // A healthy run in the same ledger trains, commits and reports.
    let ok = injector(p, &run_args(&["--json", "-q"]));
    assert!(ok.status.success(), "{}", stderr(&ok));
    for args in [vec!["ledger", "list"], vec!["report"]] {
        let mut a = args.clone();
        a.extend(["--ledger", "l.db"]);
        let o = injector(p, &a);
        assert!(o.status.success(), "{a:?}: {}", stderr(&o));
    }
}

/// Free answers are decoded after the steps `--free-every` picks and after the last, recorded per
/// fact and step beside the teacher-forced scores and summed up in `run --json`; by default only
/// after the last step; `--no-free-decoding` leaves them out. None of it changes a weight.
#[test]
fn free_decoding_is_recorded_when_asked() {
    let d = small_workspace();
    let p = d.path();
    // Which steps of a run have free-decoding scores, per fact row.
    let free_steps = |run: &str| -> Vec<(i64, bool)> {
        let show = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        v["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let detail: serde_json::Value = serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
                let has = row["free_recall"].is_number();
                assert_eq!(detail["free"]["recall_each"][0]["text"].is_string(), has, "{row}");
                (row["step"].as_i64().unwrap(), has)
            })
            .collect()
    };
    let every2 = injector(p, &run_args(&["--json", "--free-every", "2"]));
    assert!(every2.status.success(), "{}", stderr(&every2));
    let every2: serde_json::Value = serde_json::from_str(&stdout(&every2)).unwrap();
    for f in every2["facts"].as_array().unwrap() {
        let v = f["free_recall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{f}");
    }
    let m = &every2["means"];
    assert!(
        m["free_recall"].as_f64().is_some() && m["recall"].as_f64().is_some(),
        "{m}"
    );
    // Step 1 (2 divides 2) and step 2 (the last) have free answers, step 0 none.
    for (step, has) in free_steps(every2["run"].as_str().unwrap()) {
        assert_eq!(has, step != 0, "step {step}");
    }
    let default = injector(p, &run_args(&["--json"]));
    let default: serde_json::Value = serde_json::from_str(&stdout(&default)).unwrap();
    for (step, has) in free_steps(default["run"].as_str().unwrap()) {
        assert_eq!(has, step == 2, "step {step}");
    }
    // The last step's answers are the same whichever steps before it were decoded.
    assert_eq!(every2["means"], default["means"]);
    let off = injector(p, &run_args(&["--json", "--no-free-decoding"]));
    assert!(off.status.success(), "{}", stderr(&off));
    let off: serde_json::Value = serde_json::from_str(&stdout(&off)).unwrap();
    // Other configs, so other runs in the same ledger; the same weights.
    assert_ne!(off["run"], default["run"]);
    assert_ne!(every2["run"], default["run"]);
    assert!(off["facts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["free_recall"].is_null()));
    assert_eq!(off["weights_hash"], default["weights_hash"]);
    assert_eq!(every2["weights_hash"], default["weights_hash"]);
}

/// `spaced:K` rehearses by retention and records why; its choices are a function of the ledger, so a
/// run continued with more facts rehearses, and ends, exactly as the same run made in one go — at
/// the default cadence, with sparse, sampled checks (where the continued run's extra check after
/// its first invocation must not count), and with one prompt a rehearsal (whose turn, a count of
/// the fact's earlier rehearsals, is rebuilt from the ledger).
#[test]
fn spaced_rehearsal_is_recorded_and_continues_exactly() {
    // (flags, facts in the first invocation): with one prompt, fact 0's second rehearsal (step 2)
    // falls in the second invocation, which must take its second prompt.
    for (cadence, first) in [
        (&[][..], 3),
        (&["--retention-every", "3", "--retention-sample", "1"][..], 3),
        (&["--rehearse-prompts", "1"][..], 2),
    ] {
        spaced_continues_exactly(cadence, first);
    }
}

fn spaced_continues_exactly(cadence: &[&str], first: usize) {
    use common::knowledge::write_many;
    let mut flags = vec!["--strategy", "spaced:1", "--json", "--rehearse-below", "1.0"];
    flags.extend_from_slice(cadence);
    let one_go = tempfile::tempdir().unwrap();
    write_tiny_gguf(&one_go.path().join("tiny.gguf"), 4);
    write_many(&one_go.path().join("k"), 5);
    let a = injector(one_go.path(), &run_args(&flags));
    assert!(a.status.success(), "{}", stderr(&a));
    let a: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();

    let twice = tempfile::tempdir().unwrap();
    write_tiny_gguf(&twice.path().join("tiny.gguf"), 4);
    write_many(&twice.path().join("k"), first);
    let first_run = injector(twice.path(), &run_args(&flags));
    assert!(first_run.status.success(), "{}", stderr(&first_run));
    write_many(&twice.path().join("k"), 5);
    let b = injector(twice.path(), &run_args(&flags));
    assert!(b.status.success(), "{}", stderr(&b));
    let b: serde_json::Value = serde_json::from_str(&stdout(&b)).unwrap();
    assert_eq!(b["new_steps"], 5 - first);
    assert_eq!(a["weights_hash"], b["weights_hash"], "{cadence:?}");

    let steps = |dir: &std::path::Path, run: &str| -> Vec<serde_json::Value> {
        let show = injector(dir, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        v["steps"].as_array().unwrap().clone()
    };
    let sa = steps(one_go.path(), a["run"].as_str().unwrap());
    let sb = steps(twice.path(), b["run"].as_str().unwrap());
    let mut rehearsals = 0;
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x["rehearsed"], y["rehearsed"], "{cadence:?}");
        assert_eq!(x["rehearsal"], y["rehearsal"], "{cadence:?}");
        // Each rehearsed fact is recorded with its reason, at most K = 1 a step.
        let r = x["rehearsal"].as_array().unwrap();
        assert!(r.len() <= 1);
        for (h, why) in x["rehearsed"].as_array().unwrap().iter().zip(r) {
            assert_eq!(h, &why["fact"]);
            assert!(why["reason"] == "fell" || why["reason"] == "due", "{why}");
        }
        rehearsals += r.len();
    }
    // The first step has nothing to rehearse; later ones do (a fact is due one step after its own).
    assert!(sa[0]["rehearsed"].as_array().unwrap().is_empty());
    assert!(rehearsals >= 3, "{rehearsals} rehearsals in 5 steps");
    let page = std::fs::read_to_string(
        one_go
            .path()
            .join("reports")
            .join(a["run"].as_str().unwrap())
            .join("index.html"),
    )
    .unwrap();
    assert!(
        page.contains(&format!("{rehearsals} rehearsals in 5 steps")),
        "no rehearsal section"
    );
}

/// `--rehearse-prompts 1`: a rehearsed fact trains on one of its prompts, so a step that rehearses
/// one spends fewer tokens per optimizer step than the same step rehearsing all of them (the first
/// rehearsal, of fact 0 at step 1, is the same in both runs), and the run's config records it.
#[test]
fn a_fact_rehearsed_with_one_prompt_costs_fewer_tokens() {
    use common::knowledge::write_many;
    let per_step = |extra: &[&str]| -> (Vec<serde_json::Value>, String) {
        let d = tempfile::tempdir().unwrap();
        write_tiny_gguf(&d.path().join("tiny.gguf"), 4);
        write_many(&d.path().join("k"), 2);
        let mut flags = vec!["--strategy", "spaced:1", "--json", "--rehearse-below", "1.0"];
        flags.extend_from_slice(extra);
        let o = injector(d.path(), &run_args(&flags));
        assert!(o.status.success(), "{}", stderr(&o));
        let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let show = injector(
            d.path(),
            &[
                "ledger",
                "show",
                out["run"].as_str().unwrap(),
                "--ledger",
                "l.db",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        (v["steps"].as_array().unwrap().clone(), v.to_string())
    };
    let ((all, _), (one, shown)) = (per_step(&[]), per_step(&["--rehearse-prompts", "1"]));
    let rate = |s: &serde_json::Value| s["tokens"].as_f64().unwrap() / s["optimizer_steps"].as_f64().unwrap();
    assert_eq!(all[1]["rehearsed"], one[1]["rehearsed"]);
    assert_eq!(one[1]["rehearsed"].as_array().unwrap().len(), 1);
    assert_eq!(rate(&all[0]), rate(&one[0]));
    assert!(rate(&one[1]) < rate(&all[1]), "{} vs {}", rate(&one[1]), rate(&all[1]));
    assert!(
        shown.contains(r#"\"prompts\":1"#) || shown.contains(r#""prompts":1"#),
        "{shown}"
    );
}

/// `repair RUN` scores every fact at the run's weights and re-injects those below the threshold as
/// new steps with no facts of their own, each rehearsed fact recorded as fallen; the run then holds
/// them (or is scored again), and the weights move.
#[test]
fn repair_re_injects_the_facts_that_fell() {
    let d = small_workspace();
    let p = d.path();
    // Few optimizer steps: some facts stay below 1.0.
    let o = injector(
        p,
        &run_with(&["--lr", "0.05", "--alpha", "32", "--max-steps", "3", "--json"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run = out["run"].as_str().unwrap();
    let below: Vec<&serde_json::Value> = out["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["recall"].as_f64().unwrap() < 1.0)
        .collect();
    assert!(!below.is_empty(), "every fact at 1.0 after 3 steps: nothing to repair");
    let r = injector(
        p,
        &[
            "repair",
            run,
            "--below",
            "1.0",
            "--per-step",
            "2",
            "--ledger",
            "l.db",
            "--model",
            "tiny.gguf",
            "--device",
            "cpu",
            "--json",
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(rep["new_steps"].as_u64().unwrap() as usize, below.len().div_ceil(2));
    assert_ne!(rep["weights_hash"], out["weights_hash"]);
    let show = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    let steps = v["steps"].as_array().unwrap();
    let repaired: Vec<&serde_json::Value> = steps[3..].iter().collect();
    for s in &repaired {
        assert!(s["facts"].as_array().unwrap().is_empty(), "{s}");
        for why in s["rehearsal"].as_array().unwrap() {
            assert_eq!(why["reason"], "fell");
            assert!(why["recall"].as_f64().unwrap() < 1.0);
        }
    }
    // The facts are still three, each injected once.
    assert_eq!(rep["facts"].as_array().unwrap().len(), 3);
    // Bad input: a threshold out of range.
    let bad = injector(p, &["repair", run, "--below", "0", "--ledger", "l.db"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    // A run made with `--rehearse-below 0` (no fact counts as fallen) repairs nothing by default.
    let zero = injector(
        p,
        &run_with(&[
            "--lr",
            "0.05",
            "--alpha",
            "32",
            "--max-steps",
            "3",
            "--rehearse-below",
            "0",
            "--json",
        ]),
    );
    assert!(zero.status.success(), "{}", stderr(&zero));
    let zero: serde_json::Value = serde_json::from_str(&stdout(&zero)).unwrap();
    let o = injector(
        p,
        &["repair", zero["run"].as_str().unwrap(), "--ledger", "l.db", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["new_steps"], 0, "{rep}");
}

/// A repair step of more facts than `--mixed-batch` trains in epochs of shuffled mini-batches (an
/// optimizer step each, so more optimizer steps than the run's `--max-steps` allows one step) for at
/// most `--epochs`, and the repair's next, smaller step trains under the run's config again;
/// `--consolidate` puts every fact of the run in one step, the ones that held recorded as such.
/// Bad values exit 2.
#[test]
fn repair_consolidates_the_fallen_facts_in_epochs() {
    let d = many_workspace(5);
    let p = d.path();
    let o = injector(
        p,
        &run_with(&["--lr", "0.05", "--alpha", "32", "--max-steps", "2", "--json"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run = out["run"].as_str().unwrap();
    let fallen = out["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["recall"].as_f64().unwrap() < 1.0)
        .count();
    assert_eq!(
        fallen, 5,
        "after 2 optimizer steps a fact is at 1.0: the test needs all five below"
    );
    let repair = |extra: &[&str]| {
        let mut args = vec![
            "repair",
            run,
            "--below",
            "1",
            "--ledger",
            "l.db",
            "--model",
            "tiny.gguf",
            "--device",
            "cpu",
            "--json",
        ];
        args.extend_from_slice(extra);
        injector(p, &args)
    };
    for bad in [
        &["--epochs", "0"][..],
        &["--epochs", "10001"],
        &["--consolidate", "--per-step", "2"],
        &["--lr-scheduler", "step"],
        &["--mixed-batch", "0"],
        &["--consolidate", "--preserve", "-1"],
        &["--consolidate", "--preserve", "NaN"],
        // No step of one fact a step is a consolidation, so its settings would do nothing.
        &["--per-step", "1", "--no-null-space"],
        &["--per-step", "1", "--preserve", "8"],
        &["--per-step", "1", "--prompts", "2"],
        &["--consolidate", "--protect", "-0.5"],
        // The run has no interference penalty, so nothing recorded to protect.
        &["--consolidate", "--protect", "0.1"],
        // Five facts, mini-batches of 16 (and 8): no step of this repair can be a consolidation.
        &["--consolidate", "--no-null-space"],
        &["--per-step", "17", "--no-null-space", "--mixed-batch", "8"],
    ] {
        let o = repair(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
    // The refusal is the repair's own (clap's would exit 2 too): it says why.
    let o = repair(&["--per-step", "1", "--prompts", "2"]);
    assert!(
        stderr(&o).starts_with("error: --prompts sets a consolidation's training")
            && stderr(&o).contains("--per-step 1"),
        "{}",
        stderr(&o)
    );
    let steps = || -> Vec<serde_json::Value> {
        let show = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        v["steps"].as_array().unwrap().clone()
    };
    let opt = |s: &serde_json::Value| s["optimizer_steps"].as_i64().unwrap();
    // Steps of 3 and 2 facts, mini-batches of 2: the first a consolidation (2 optimizer steps an
    // epoch, at most 3 epochs), the second one step over both, capped by the run's --max-steps 2.
    let r = repair(&["--per-step", "3", "--mixed-batch", "2", "--epochs", "3"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let s = steps();
    assert_eq!(s.len(), 7);
    assert_eq!(s[5]["rehearsal"].as_array().unwrap().len(), 3);
    assert!(
        opt(&s[5]) % 2 == 0 && opt(&s[5]) > 2 && opt(&s[5]) <= 6,
        "{} optimizer steps",
        opt(&s[5])
    );
    assert!(
        opt(&s[6]) <= 2,
        "the step after a consolidation trained {} optimizer steps",
        opt(&s[6])
    );
    // The ledger says how the consolidation trained (its flags are not the run's config).
    assert_eq!(
        s[5]["consolidation"],
        serde_json::json!({"epochs": 3, "lr_scheduler": "cosine", "mixed_batch": 2, "preserve": 4.0, "null_space": 0.9, "protect": 0.0})
    );
    assert!(s[6].get("consolidation").is_none(), "{}", s[6]);
    // --consolidate: one step of all five facts, those at 1.0 now recorded as held.
    let r = repair(&[
        "--consolidate",
        "--epochs",
        "3",
        "--mixed-batch",
        "1",
        "--preserve",
        "16",
        "--no-null-space",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    let s = steps();
    assert_eq!(
        s[7]["consolidation"],
        serde_json::json!({"epochs": 3, "lr_scheduler": "cosine", "mixed_batch": 1, "preserve": 16.0, "null_space": 0.0, "protect": 0.0})
    );
    assert_eq!((rep["new_steps"].as_u64(), s.len()), (Some(1), 8), "{rep}");
    let why = s[7]["rehearsal"].as_array().unwrap();
    assert_eq!(why.len(), 5);
    for w in why {
        let fell = w["recall"].as_f64().unwrap() < 1.0;
        assert_eq!(w["reason"], if fell { "fell" } else { "held" }, "{w}");
    }
    assert!(
        opt(&s[7]) % 5 == 0 && opt(&s[7]) >= 5 && opt(&s[7]) <= 15,
        "{} optimizer steps",
        opt(&s[7])
    );
    // The plain listing says which steps were a consolidation and which rehearsed a few facts.
    let show = stdout(&injector(p, &["ledger", "show", run, "--ledger", "l.db"]));
    let row = |i: usize| {
        show.lines()
            .find(|l| l.trim_start().starts_with(&format!("{i}  ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row(5).contains("consolidation of 3 facts") && row(7).contains("consolidation of 5 facts"),
        "{show}"
    );
    assert!(row(6).contains("rehearsal of "), "{show}");
}

/// `run --consolidate` ends a run with the consolidation `repair RUN --below 1 --consolidate`
/// makes after it, in the same process: the same steps, settings and weights.
#[test]
fn run_consolidate_ends_where_run_then_repair_ends() {
    let d = many_workspace(5);
    let p = d.path();
    let base = [
        "run",
        "k",
        "--model",
        "tiny.gguf",
        "--device",
        "cpu",
        "--lr",
        "0.05",
        "--alpha",
        "32",
        "--max-steps",
        "2",
        "--json",
    ];
    let with = |ledger: &str, extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(&["--ledger", ledger]);
        args.extend_from_slice(extra);
        injector(p, &args)
    };
    for bad in [
        &["--consolidate", "--strategy", "mixed"][..],
        &["--consolidate-epochs", "3"],
        &["--consolidate", "--consolidate-epochs", "0"],
        &["--consolidate", "--consolidate-epochs", "10001"],
        &["--consolidate-prompts", "2"],
    ] {
        let o = with("bad.db", bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--consolidate"),
            "{bad:?}: the error names the flag: {}",
            stderr(&o)
        );
        assert!(!p.join("bad.db").exists(), "{bad:?} wrote a ledger");
    }
    // clap's refusal names the flag the prompts need.
    let o = with("bad.db", &["--consolidate-prompts", "2"]);
    assert!(
        stderr(&o).contains("required arguments were not provided: --consolidate "),
        "{}",
        stderr(&o)
    );
    let o = with(
        "one.db",
        &["--consolidate", "--consolidate-epochs", "3", "--mixed-batch", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let one: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let o = with("two.db", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let fallen = run["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["recall"].as_f64().unwrap() < 1.0)
        .count();
    assert!(
        fallen > 0,
        "after 2 optimizer steps a fact is below 1.0: the test needs one"
    );
    let args = [
        "repair",
        run["run"].as_str().unwrap(),
        "--below",
        "1",
        "--consolidate",
        "--epochs",
        "3",
        "--mixed-batch",
        "2",
    ];
    let mut args = args.to_vec();
    args.extend_from_slice(&[
        "--ledger",
        "two.db",
        "--model",
        "tiny.gguf",
        "--device",
        "cpu",
        "--json",
    ]);
    let o = injector(p, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let two: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        one["weights_hash"], two["weights_hash"],
        "one process and run + repair end at the same weights"
    );
    let steps = |ledger: &str, run: &str| -> Vec<serde_json::Value> {
        let show = injector(p, &["ledger", "show", run, "--ledger", ledger, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        v["steps"].as_array().unwrap().clone()
    };
    let (a, b) = (
        steps("one.db", one["run"].as_str().unwrap()),
        steps("two.db", run["run"].as_str().unwrap()),
    );
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    for k in [
        "facts",
        "rehearsal",
        "consolidation",
        "optimizer_steps",
        "tokens",
        "weights_hash",
    ] {
        assert_eq!(a[5][k], b[5][k], "{k}");
    }
    assert_eq!(a[5]["consolidation"]["epochs"], 3);
    // The run is finished: the same command again adds nothing.
    let o = with(
        "one.db",
        &["--consolidate", "--consolidate-epochs", "3", "--mixed-batch", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps("one.db", one["run"].as_str().unwrap()).len(), 6);
    // The capacity page names the closing consolidation as a repair's is, not as a setting.
    let capacity_page = |ledger: &str, run: &serde_json::Value| -> String {
        let args = [
            "--ledger",
            ledger,
            "--reports",
            "reports",
            "report",
            "--capacity",
            run.as_str().unwrap(),
        ];
        let c = injector(p, &args);
        assert!(c.status.success(), "{}", stderr(&c));
        std::fs::read_to_string(p.join(String::from_utf8_lossy(&c.stdout).lines().next().unwrap())).unwrap()
    };
    let page = capacity_page("one.db", &one["run"]);
    assert!(
        page.contains(" + consolidation (3 epochs)") && !page.contains("consolidate_epochs"),
        "{page}"
    );
    // One prompt of each fact an epoch, in turn: in the run and in a repair after it alike, for
    // fewer tokens than every prompt, recorded in the step and named on the capacity page.
    let o = with(
        "three.db",
        &[
            "--consolidate",
            "--consolidate-epochs",
            "3",
            "--mixed-batch",
            "2",
            "--consolidate-prompts",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let three: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_ne!(three["run"], one["run"], "the prompts are part of the run's key");
    let o = with("four.db", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = args.clone();
    let at = args.iter().position(|a| *a == "two.db").unwrap();
    args[at] = "four.db";
    args.extend_from_slice(&["--prompts", "1"]);
    let o = injector(p, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let four: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(three["weights_hash"], four["weights_hash"]);
    let (c, d) = (
        steps("three.db", three["run"].as_str().unwrap()),
        steps("four.db", run["run"].as_str().unwrap()),
    );
    for k in [
        "rehearsal",
        "consolidation",
        "optimizer_steps",
        "tokens",
        "weights_hash",
    ] {
        assert_eq!(c[5][k], d[5][k], "{k}");
    }
    assert_eq!(c[5]["consolidation"]["prompts"], 1);
    assert!(a[5]["consolidation"].get("prompts").is_none());
    // More prompts an epoch than any fact has trains as all of them, and is recorded so (with a
    // warning); the run's key keeps what was asked.
    let o = with(
        "five.db",
        &[
            "--consolidate",
            "--consolidate-epochs",
            "3",
            "--mixed-batch",
            "2",
            "--consolidate-prompts",
            "1000",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("is every prompt of its facts"), "{}", stderr(&o));
    let five: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_ne!(five["run"], one["run"]);
    assert_eq!(five["weights_hash"], one["weights_hash"]);
    let e = steps("five.db", five["run"].as_str().unwrap());
    assert_eq!(
        (&e[5]["tokens"], &e[5]["consolidation"]),
        (&a[5]["tokens"], &a[5]["consolidation"])
    );
    // Five facts in mini-batches of 16: the closing step is not a consolidation, and says the
    // prompts did nothing.
    let o = with(
        "six.db",
        &[
            "--consolidate",
            "--consolidate-epochs",
            "3",
            "--consolidate-prompts",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a consolidation: --consolidate-prompts 1 does nothing"),
        "{}",
        stderr(&o)
    );
    let tokens = |s: &serde_json::Value| s["tokens"].as_i64().unwrap();
    assert!(tokens(&c[5]) < tokens(&a[5]), "{} vs {}", c[5], a[5]);
    let page = capacity_page("three.db", &three["run"]);
    assert!(
        page.contains(" + consolidation (3 epochs, 1 prompt an epoch)") && !page.contains("consolidate_prompts"),
        "{page}"
    );
    // The run page says how the consolidation step trained, its prompts an epoch included.
    let page = std::fs::read_to_string(
        p.join("reports")
            .join(three["run"].as_str().unwrap())
            .join("index.html"),
    )
    .unwrap();
    assert!(page.contains("Step 5 was a consolidation: at most 3 epochs of 2-fact mini-batches, 1 training prompt of each fact an epoch,"), "{page}");
    // A run whose facts are all word-perfect at its end has no consolidation, and once finished it
    // is not scored again: the same command does no model work.
    // (One fact: its own step ends with it word-perfect.)
    let d1 = many_workspace(1);
    let p = d1.path();
    let again = || {
        // The run above's flags but its step limit.
        let mut args = base[..10].to_vec();
        args.extend_from_slice(&["--ledger", "held.db", "--json", "--consolidate"]);
        injector(p, &args)
    };
    let steps = |ledger: &str, run: &str| -> Vec<serde_json::Value> {
        let show = injector(p, &["ledger", "show", run, "--ledger", ledger, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        v["steps"].as_array().unwrap().clone()
    };
    let o = again();
    assert!(o.status.success(), "{}", stderr(&o));
    let held: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let n = steps("held.db", held["run"].as_str().unwrap()).len();
    let word_perfect = held["facts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["recall"].as_f64().unwrap() == 1.0);
    assert!(
        word_perfect && n == 1,
        "the test needs a run that ends with every fact at 1.0 ({n} steps): {held}"
    );
    let o = again();
    assert!(o.status.success(), "{}", stderr(&o));
    let second: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(second["new_steps"], 0);
    assert_eq!(
        second["fixed"]["tokenize"], 0.0,
        "a finished run was prepared again: {}",
        second["fixed"]
    );
    assert_eq!(steps("held.db", held["run"].as_str().unwrap()).len(), n);
}

/// `mixed` over more facts than `--mixed-batch` trains in epochs of shuffled mini-batches (one
/// optimizer step each, stopping only at an epoch's end) until every fact meets the threshold; with
/// fewer, one optimizer step covers every fact, as before.
#[test]
fn mixed_trains_in_epochs_of_mini_batches_at_scale() {
    let d = many_workspace(5);
    let p = d.path();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = run_with(&[
            "--lr",
            "0.05",
            "--alpha",
            "32",
            "--strategy",
            "mixed",
            "--json",
            "--threshold",
            "0.9",
        ]);
        args.extend_from_slice(extra);
        let o = injector(p, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        ledger_show(p, out["run"].as_str().unwrap())
    };
    // 5 facts in mini-batches of 2: 3 optimizer steps an epoch, at most 40 epochs.
    let epochs = run(&["--mixed-batch", "2", "--max-steps", "40"]);
    let steps = epochs["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    let opt = steps[0]["optimizer_steps"].as_i64().unwrap();
    assert!(opt % 3 == 0 && opt > 3, "{opt} optimizer steps");
    assert!(opt < 120, "the threshold was never met: {opt} optimizer steps");
    // Every fact met the threshold at the weights that were merged.
    for row in epochs["probes"].as_array().unwrap() {
        assert!(row["recall"].as_f64().unwrap() >= 0.9, "{row}");
    }
    // At most --mixed-batch facts: one optimizer step sees them all, up to --max-steps of them.
    let whole = run(&["--max-steps", "40"]);
    let opt = whole["steps"][0]["optimizer_steps"].as_i64().unwrap();
    assert!(opt <= 40, "{opt}");
}

/// `revert RUN --to-step N` takes the run back to exactly the weights recorded after step N (the
/// rebuilt weights' hash is checked first), keeps what it took back in the ledger, shows it in the
/// report; the run then goes on, and trains its facts back to the weights it had.
#[test]
fn revert_is_exact_and_the_run_goes_on() {
    let d = small_workspace();
    let p = d.path();
    let o = injector(p, &run_args(&["--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let first: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run = first["run"].as_str().unwrap().to_string();
    let show = |p: &std::path::Path| -> serde_json::Value {
        let s = injector(p, &["ledger", "show", &run, "--ledger", "l.db", "--json"]);
        serde_json::from_str(&stdout(&s)).unwrap()
    };
    let before = show(p);
    let after_step0 = before["steps"][0]["weights_hash"].clone();
    let revert = |to: &str| {
        injector(
            p,
            &[
                "revert",
                &run,
                "--to-step",
                to,
                "--ledger",
                "l.db",
                "--model",
                "tiny.gguf",
                "--device",
                "cpu",
                "--json",
            ],
        )
    };
    // Out of range: bad input, nothing changes.
    for bad in ["2", "-2", "7"] {
        let o = revert(bad);
        assert_eq!(o.status.code(), Some(2), "--to-step {bad}: {}", stderr(&o));
    }
    assert_eq!(show(p)["steps"].as_array().unwrap().len(), 3);
    let o = revert("0");
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["weights_hash"], after_step0);
    assert_eq!(r["steps_taken_back"], 2);
    let now = show(p);
    assert_eq!(now["steps"].as_array().unwrap().len(), 1);
    assert_eq!(now["run"]["weights_hash"], after_step0);
    assert_eq!(now["run"]["status"], "reverted");
    assert!(now["probes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["step"].as_i64().unwrap() <= 0));
    // The weights a query rebuilds are those of step 0 (replay checks the hash).
    let q = injector(
        p,
        &[
            "probe",
            "k",
            "--run",
            &run,
            "--ledger",
            "l.db",
            "--model",
            "tiny.gguf",
            "--json",
        ],
    );
    assert!(q.status.success(), "{}", stderr(&q));
    let page = std::fs::read_to_string(p.join("reports").join(&run).join("index.html")).unwrap();
    assert!(page.contains("id=reverts"));
    // Going on: the two facts are injected again, to the weights the run had before the revert.
    let again = injector(p, &run_args(&["--json"]));
    assert!(again.status.success(), "{}", stderr(&again));
    let again: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(again["run"], first["run"]);
    assert_eq!(again["new_steps"], 2);
    assert_eq!(again["weights_hash"], first["weights_hash"]);
    assert_eq!(show(p)["run"]["status"], "finished");
    // Back to the base model.
    let o = revert("-1");
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["weights_hash"], before["run"]["base_weights_hash"]);
}

/// `--base-dtype bf16` on the CPU: the run trains bf16 weights, every fact is put in, and it records
/// its type: `probe --run` replays it as bf16 without the flag, refuses another type by name (bad
/// input), and an f32 run of the same facts in the same ledger is another run, which records no type
/// and replays in f32 even where `auto` means bf16 (in bf16 by name it fails the weights hash check).
/// The default (`auto`) is the bf16 run on a CPU that multiplies bf16 natively, the f32 one elsewhere.
#[test]
fn a_bf16_run_on_the_cpu_records_its_type() {
    let d = small_workspace();
    let p = d.path();
    let o = injector(p, &run_args(&["--base-dtype", "bf16", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out["new_steps"], 3);
    for f in out["facts"].as_array().unwrap() {
        assert!(f["recall_at_step"].as_f64().unwrap() > 0.5, "{f}");
    }
    let run = out["run"].as_str().unwrap().to_string();
    let probe = |run: &str, extra: &[&str]| {
        let mut args = vec![
            "probe",
            "k",
            "--run",
            run,
            "--model",
            "tiny.gguf",
            "--ledger",
            "l.db",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        injector(p, &args)
    };
    let recorded = probe(&run, &[]);
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert!(probe(&run, &["--base-dtype", "bf16"]).status.success());
    let other = probe(&run, &["--base-dtype", "f32"]);
    assert_eq!(other.status.code(), Some(2), "{}", stderr(&other));
    assert!(stderr(&other).contains("was made with bf16"), "{}", stderr(&other));
    let f32_run = injector(p, &run_args(&["--base-dtype", "f32", "--json"]));
    assert!(f32_run.status.success(), "{}", stderr(&f32_run));
    let f32_out: serde_json::Value = serde_json::from_str(&stdout(&f32_run)).unwrap();
    let f32_id = f32_out["run"].as_str().unwrap().to_string();
    assert_ne!(f32_id, run);
    assert_eq!(f32_out["new_steps"], 3);
    let plain = probe(&f32_id, &[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    // A run recording no type replayed in bf16 by name: the weights hash check refuses it.
    let as_bf16 = probe(&f32_id, &["--base-dtype", "bf16"]);
    assert!(!as_bf16.status.success(), "{}", stderr(&as_bf16));
    assert!(stderr(&as_bf16).contains("the ledger recorded"), "{}", stderr(&as_bf16));
    // The default finds one of the two runs finished.
    let auto = injector(p, &run_args(&["--json"]));
    assert!(auto.status.success(), "{}", stderr(&auto));
    let auto: serde_json::Value = serde_json::from_str(&stdout(&auto)).unwrap();
    let expected = if injector::model::cpu_has_bf16() { &run } else { &f32_id };
    assert_eq!(
        (auto["run"].as_str().unwrap(), &auto["new_steps"]),
        (expected.as_str(), &serde_json::json!(0))
    );
}

/// `--protect` and `--lr-scheduler` on a run that goes on with a new fact: both are in the run's
/// recorded config (and so its key: the same flags find the run again), and the second invocation
/// (which starts by recording the earlier facts' inputs) trains the new fact in as the first did.
#[test]
fn a_protected_scheduled_run_goes_on_with_new_facts() {
    let d = small_workspace();
    let p = d.path();
    let args = run_args(&["--protect", "1", "--lr-scheduler", "linear", "--json"]);
    let first = injector(p, &args);
    assert!(first.status.success(), "{}", stderr(&first));
    let out: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    assert_eq!(out["new_steps"], 3);
    let run = out["run"].as_str().unwrap().to_string();
    std::fs::write(
        p.join("k/c.yaml"),
        "id: vex\nsubject: Vex\nanswer: Vex is green.\nprompts: [Vex?, What is Vex?]\nprobes: [Vex is which colour?]\n",
    )
    .unwrap();
    let second = injector(p, &args);
    assert!(second.status.success(), "{}", stderr(&second));
    let out: serde_json::Value = serde_json::from_str(&stdout(&second)).unwrap();
    assert_eq!(
        (out["run"].as_str().unwrap(), out["new_steps"].as_i64()),
        (run.as_str(), Some(1))
    );
    for f in out["facts"].as_array().unwrap() {
        assert!(f["recall_at_step"].as_f64().unwrap() > 0.5, "{f}");
    }
    let show = injector(p, &["ledger", "show", &run, "--ledger", "l.db", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    let config = shown["run"]["config"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| shown["run"]["config"].to_string());
    assert!(
        config.contains("\"protect\":1") && config.contains("\"lr_scheduler\":\"linear\""),
        "{config}"
    );
    assert!(!config.contains("protect_mean"), "{config}");

    // --protect-mean is another run (its key holds it) and trains; alone it is refused.
    let mean = injector(
        p,
        &run_args(&["--protect", "1", "--protect-mean", "--lr-scheduler", "linear", "--json"]),
    );
    assert!(mean.status.success(), "{}", stderr(&mean));
    let out: serde_json::Value = serde_json::from_str(&stdout(&mean)).unwrap();
    assert_ne!(out["run"].as_str().unwrap(), run);
    assert_eq!(out["new_steps"], 4);
    let alone = injector(p, &run_args(&["--protect-mean"]));
    assert_eq!(alone.status.code(), Some(2), "{}", stderr(&alone));
    assert!(
        stderr(&alone).contains("--protect-mean (train.protect_mean) must be set only with --protect above 0"),
        "{}",
        stderr(&alone)
    );
}
