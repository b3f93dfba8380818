//! The reports at 1,000 facts (issue #15), on a ledger made synthetically (no training): three
//! strategies whose recall falls with a fact's age at different rates, retention checked every 50
//! steps on a sample of 50 and at the end on all, free answers at the end, some carrying another
//! fact's details. The comparison page renders in headless Chromium with no console message in
//! under 2 s, and its numbers are the ledger's. `INJECTOR_SCREENSHOT=FILE` keeps a screenshot.
mod common;

use common::*;
use injector::ledger::{Ledger, LocalityBase, ProbeRow, RunRow, StepPhases, StepRecord, StepRow};
use std::path::Path;
use std::process::Command;

const N: usize = 1000;

/// Recall of a fact of age `age` under a strategy that forgets at `rate` per step (deterministic
/// jitter from the fact's index).
fn recall(rate: f64, age: usize, i: usize) -> f64 {
    let jitter = ((i * 7919) % 13) as f64 / 100.0;
    (1.0 - rate * age as f64 - jitter).clamp(0.0, 1.0)
}

/// Records one synthetic run of the facts of `k` with forgetting `rate`; returns its id and its
/// final mean recall as written.
fn synthetic_run(l: &mut Ledger, k: &injector::knowledge::Knowledge, strategy: &str, rate: f64) -> (String, f64) {
    let id = format!("run-{}", strategy.replace(':', ""));
    let row = RunRow {
        id: id.clone(),
        key: id.clone(),
        created: String::new(),
        strategy: strategy.into(),
        config: injector::config::RunConfig {
            strategy: strategy.into(),
            retention_every: 50,
            retention_sample: 50,
            ..Default::default()
        }
        .to_json(),
        model_path: "synthetic".into(),
        model_hash: "0".repeat(64),
        knowledge_dir: "gen".into(),
        knowledge_hash: "0".into(),
        seed: 0,
        status: "running".into(),
        base_weights_hash: "0".repeat(64),
        weights_hash: "0".repeat(64),
        finished: None,
        merge_on_device: true,
    };
    let base = vec![LocalityBase {
        prompt: "p".into(),
        prompt_ids: vec![1],
        answer_ids: vec![2],
        answer: "a".into(),
    }];
    l.create_run(&row, &base).unwrap();
    l.add_facts(&id, &k.facts).unwrap();
    let mut last_mean = 0.0;
    for step in 0..N {
        let last = step + 1 == N;
        let check = last || (step + 1) % 50 == 0;
        // Own fact, then at checks the earlier ones: a fixed stride sample, all at the end.
        let mut scored = vec![step];
        if check {
            scored.extend(
                (0..step)
                    .filter(|i| last || i % (step / 50).max(1) == 0)
                    .take(if last { N } else { 50 }),
            );
        }
        let probes: Vec<ProbeRow> = scored
            .iter()
            .map(|&i| {
                let r = recall(rate, step - i, i);
                // The free answers at the end: facts below 0.8 carry the next fact's answer.
                let (free, detail) = if last {
                    let f = &k.facts[i];
                    let text = if r < 0.8 {
                        &k.facts[(i + 1) % N].answer
                    } else {
                        &f.answer
                    };
                    let v = if r < 0.8 { 0.0 } else { 1.0 };
                    let d = serde_json::json!({"recall": [r], "general": [r],
                        "free": {"recall_each": [{"text": text, "key": v, "f1": v}], "general_each": []}});
                    (Some(v), d.to_string())
                } else {
                    (None, serde_json::json!({"recall": [r], "general": [r]}).to_string())
                };
                ProbeRow {
                    step: step as i64,
                    fact: k.facts[i].hash.clone(),
                    recall: r,
                    general: Some(r),
                    previous: None,
                    free_recall: free,
                    free_general: None,
                    detail,
                }
            })
            .collect();
        if last {
            last_mean = probes.iter().map(|p| p.recall).sum::<f64>() / N as f64;
        }
        l.commit_step(&StepRecord {
            step: StepRow {
                run: id.clone(),
                idx: step as i64,
                facts: vec![k.facts[step].hash.clone()],
                rehearsed: vec![],
                optimizer_steps: 12,
                losses: (0..12).map(|s| 2.0 / (1.0 + s as f64)).collect(),
                seconds: 0.3,
                eval_seconds: 0.1,
                tokens: 800,
                peak_rss_bytes: 1 << 30,
                peak_gpu_bytes: 3 << 30,
                delta_file: "none".into(),
                rank_pattern: vec![],
                weights_hash: "0".repeat(64),
                created: String::new(),
                phases: StepPhases {
                    train: 0.3,
                    ..Default::default()
                },
                rehearsal: vec![],
                consolidation: None,
            },
            probes,
            generations: vec![],
            locality: check.then_some(0.9 - rate),
            perplexity: check.then_some(1.2 + rate),
        })
        .unwrap();
    }
    l.set_status(&id, "finished").unwrap();
    (id, last_mean)
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|c| Path::new(c).exists())
        .expect("Chromium is not installed: `bash setup.sh` installs it when run as root")
}

#[test]
fn a_1000_fact_comparison_page_reads_at_a_glance() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let g = injector(p, &["facts", "generate", "--n", "1000", "--seed", "1", "--out", "gen"]);
    assert!(g.status.success(), "{}", stderr(&g));
    let k = injector::knowledge::load_dir(&p.join("gen")).unwrap();
    assert_eq!(k.facts.len(), N);
    let mut l = Ledger::open(&p.join("l.db")).unwrap();
    let runs: Vec<(String, f64)> = [("sequential", 0.0006), ("spaced:2", 0.0001), ("replay:2", 0.0003)]
        .iter()
        .map(|(s, rate)| synthetic_run(&mut l, &k, s, *rate))
        .collect();
    let ids: Vec<String> = runs.iter().map(|r| r.0.clone()).collect();
    l.add_comparison("synthetic", &ids).unwrap();
    let page = injector::report::write_compare(&l, &p.join("reports"), "synthetic").unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    // The numbers are the ledger's: final recall per strategy (the table's third column).
    for (id, mean) in &runs {
        let row = &html[html.find(&format!(">{id}</a>")).unwrap()..];
        let cell = row.split("<td").nth(1).unwrap();
        assert!(cell.contains(&format!(">{mean:.2}<")), "{id}: {cell} vs {mean:.2}");
    }
    // Binned: at most 50 row labels per heatmap, and the forgetting curve and collisions are there.
    assert!(html.contains("1000 facts in 50 groups"));
    assert!(html.contains("forgetting: recall against facts injected since"));
    assert!(html.contains("id=collisions"));
    let csv = std::fs::read_to_string(p.join("reports").join(&ids[0]).join("retention.csv")).unwrap();
    // Both pages link to it where it is: from the reports' root and from beside it.
    assert!(html.contains(&format!("href=\"{}/retention.csv\"", ids[0])));
    let run_page = std::fs::read_to_string(p.join("reports").join(&ids[0]).join("index.html")).unwrap();
    assert!(run_page.contains("href=\"retention.csv\""));
    assert_eq!(csv.lines().count(), 1 + l.probes(&ids[0]).unwrap().len());
    assert!(html.len() < 3_000_000, "page of {} bytes", html.len());

    // The capacity page of the same runs (issue #12): seven charts (the general check's perplexity
    // the seventh), each run's final recall in its table, and the collisions' template overlap.
    drop(l);
    let c = injector(
        p,
        &[
            "--ledger",
            "l.db",
            "--reports",
            "reports",
            "report",
            "--capacity",
            &ids.join(","),
        ],
    );
    assert!(c.status.success(), "{}", stderr(&c));
    let cap_path = String::from_utf8_lossy(&c.stdout).lines().next().unwrap().to_string();
    assert!(cap_path.contains("capacity-"), "{cap_path}");
    let cap = std::fs::read_to_string(p.join(&cap_path)).unwrap();
    assert_eq!(cap.matches("<svg").count(), 7);
    assert!(cap.contains("general check: perplexity"));
    for (id, mean) in &runs {
        let row = &cap[cap.find(&format!(">{id}</a>")).unwrap()..];
        assert!(
            row.split("<td").nth(1).unwrap().contains(&format!(">{mean:.2}<")),
            "{id}"
        );
    }
    assert!(cap.contains("alike templates, colliding pairs"));
    let empty = injector(
        p,
        &["--ledger", "l.db", "--reports", "reports", "report", "--capacity", ","],
    );
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
    assert!(stderr(&empty).contains("--capacity: an empty run id"));

    // Seconds Chromium takes to load `url` and screenshot it: its own start included, so a blank
    // page is timed too and the difference is the page's.
    let render = |url: String, shot: &str| -> (f64, String) {
        let t = std::time::Instant::now();
        let out = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", p.join("profile").display()))
            .arg(format!("--screenshot={}", p.join(shot).display()))
            .arg("--window-size=1400,2400")
            .arg(url)
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(p.join("blank.html"), "<!doctype html><title>b</title>").unwrap();
    let (blank, _) = render(format!("file://{}", p.join("blank.html").display()), "blank.png");
    let (seconds, log) = render(format!("file://{}", page.display()), "shot.png");
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(
        seconds - blank < 2.0,
        "the page took {seconds:.2} s against {blank:.2} s for a blank one"
    );
    eprintln!("page {seconds:.2} s, blank {blank:.2} s; {} kB", html.len() / 1024);
    if let Ok(keep) = std::env::var("INJECTOR_SCREENSHOT") {
        std::fs::copy(p.join("shot.png"), keep).unwrap();
    }
}
