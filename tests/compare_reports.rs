//! `injector compare` and the reports on a tiny model: every strategy runs into one ledger, a finished
//! strategy is not run again, and the numbers on the pages are the ledger's numbers.
mod common;

use common::knowledge::write_many;
use common::*;

const TRAIN: [&str; 8] = [
    "--model",
    "tiny.gguf",
    "--ledger",
    "l.db",
    "--lr",
    "0.05",
    "--max-steps",
    "10",
];

fn compare(p: &std::path::Path, strategies: &str) -> serde_json::Value {
    let mut args = vec!["compare", "k", "--strategy", strategies, "--json", "--device", "cpu"];
    args.extend_from_slice(&TRAIN);
    let o = injector(p, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// The text of the first table cell after the header cell `th`, in the first row of table `id`.
fn cell(html: &str, table: &str, row: usize, col: usize) -> String {
    let t = &html[html.find(&format!("<table id={table}>")).unwrap()..];
    let t = &t[..t.find("</table>").unwrap()];
    let r = t.split("<tr>").nth(row + 2).unwrap();
    let c = r.split("<td").nth(col + 1).unwrap();
    let c = &c[c.find('>').unwrap() + 1..];
    let c = &c[..c.find("</td>").unwrap()];
    // Strip a link, if any.
    match c.find('>') {
        Some(i) if c.starts_with("<a") => c[i + 1..c.find("</a>").unwrap()].to_string(),
        _ => c.to_string(),
    }
}

#[test]
fn compare_runs_each_strategy_once_and_pages_show_ledger_numbers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 5);
    write_many(&p.join("k"), 5);
    let v = compare(p, "sequential,mixed,batch:2,replay:1");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let steps: Vec<i64> = runs.iter().map(|r| r["summary"]["steps"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![5, 1, 3, 5], "only the grouping differs between strategies");
    let id = v["comparison"].as_str().unwrap();
    let page = std::fs::read_to_string(p.join(format!("reports/compare-{id}.html"))).unwrap();
    for (i, r) in runs.iter().enumerate() {
        let s = &r["summary"];
        assert_eq!(cell(&page, "compare", i, 0), r["strategy"].as_str().unwrap());
        assert_eq!(cell(&page, "compare", i, 1), r["run"].as_str().unwrap());
        assert_eq!(
            cell(&page, "compare", i, 2),
            format!("{:.2}", s["final_recall"].as_f64().unwrap())
        );
        assert_eq!(
            cell(&page, "compare", i, 4),
            format!("{:.2}", s["final_free_recall"].as_f64().unwrap())
        );
        assert_eq!(
            cell(&page, "compare", i, 6),
            format!("{:.2}", s["locality"].as_f64().unwrap())
        );
        assert_eq!(
            cell(&page, "compare", i, 7),
            format!(
                "{:.2} ({:.2})",
                s["perplexity"].as_f64().unwrap(),
                s["base_perplexity"].as_f64().unwrap()
            )
        );
        assert_eq!(
            cell(&page, "compare", i, 11),
            s["optimizer_steps"].as_i64().unwrap().to_string()
        );
        let run_page =
            std::fs::read_to_string(p.join(format!("reports/{}/index.html", r["run"].as_str().unwrap()))).unwrap();
        assert_eq!(
            cell(&run_page, "summary", 0, 0),
            format!("{:.2}", s["final_recall"].as_f64().unwrap())
        );
    }
    // The ledger's own record of the sequential run agrees with the page's per-fact table.
    let seq = runs[0]["run"].as_str().unwrap();
    let show = injector(p, &["ledger", "show", seq, "--ledger", "l.db", "--json"]);
    let l: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    let last = l["steps"].as_array().unwrap().last().unwrap()["idx"].as_i64().unwrap();
    let first_fact = l["steps"][0]["facts"][0].as_str().unwrap();
    let recall = l["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["step"] == last && p["fact"] == first_fact)
        .unwrap()["recall"]
        .as_f64()
        .unwrap();
    let run_page = std::fs::read_to_string(p.join(format!("reports/{seq}/index.html"))).unwrap();
    assert_eq!(cell(&run_page, "facts", 0, 3), format!("{recall:.2}"));
    assert!(std::fs::read_to_string(p.join("reports/index.html"))
        .unwrap()
        .contains(&format!("compare-{id}.html")));

    // Again: every strategy is finished, so nothing trains, and the same comparison comes back.
    let t = std::time::Instant::now();
    let again = compare(p, "sequential,mixed,batch:2,replay:1");
    assert_eq!(again["comparison"], v["comparison"]);
    assert!(t.elapsed().as_secs_f64() < 30.0);
    // Reports rebuild from the ledger alone.
    std::fs::remove_dir_all(p.join("reports")).unwrap();
    let o = injector(p, &["report", "--ledger", "l.db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(p.join(format!("reports/compare-{id}.html"))).unwrap(),
        page
    );
}

/// `--jobs 2`: the strategies run at once in two `injector run` processes on one ledger and end
/// with the weights of the same strategies run one after another in one process.
#[test]
fn parallel_processes_give_the_weights_of_one_process() {
    let hashes = |jobs: Option<&str>| -> Vec<String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write_tiny_gguf(&p.join("tiny.gguf"), 5);
        write_many(&p.join("k"), 4);
        let mut args = vec![
            "compare",
            "k",
            "--strategy",
            "sequential,batch:2",
            "--json",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(&TRAIN);
        if let Some(j) = jobs {
            args.extend_from_slice(&["--jobs", j]);
        }
        let o = injector(p, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let id = v["comparison"].as_str().unwrap();
        assert!(p.join(format!("reports/compare-{id}.html")).exists());
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let run = r["run"].as_str().unwrap();
                let show = injector(p, &["ledger", "show", run, "--ledger", "l.db", "--json"]);
                let l: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
                assert_eq!(l["run"]["status"], "finished");
                l["run"]["weights_hash"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let one = hashes(None);
    let two = hashes(Some("2"));
    assert_eq!(one.len(), 2);
    assert_ne!(one[0], one[1], "the strategies end at different weights");
    assert_eq!(one, two);
}

/// A model that is not one: exit 2 and no ledger, in one process or in several.
#[test]
fn a_bad_model_leaves_no_ledger() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_many(&p.join("k"), 2);
    std::fs::write(p.join("junk.gguf"), b"not a model").unwrap();
    for jobs in [None, Some("2")] {
        let mut args = vec!["compare", "k", "--strategy", "sequential,mixed", "--model", "junk.gguf"];
        args.extend_from_slice(&["--ledger", "l.db", "--device", "cpu"]);
        if let Some(j) = jobs {
            args.extend_from_slice(&["--jobs", j]);
        }
        let o = injector(p, &args);
        assert_eq!(o.status.code(), Some(2), "{:?}: {}", jobs, stderr(&o));
        assert!(stderr(&o).contains("junk.gguf"), "{}", stderr(&o));
        assert!(!p.join("l.db").exists(), "{jobs:?}: a ledger was created for bad input");
    }
    // No processes at all is bad input too, not one process in disguise.
    let o = injector(
        p,
        &[
            "compare",
            "k",
            "--strategy",
            "sequential",
            "--jobs",
            "0",
            "--ledger",
            "l.db",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--jobs"), "{}", stderr(&o));
    assert!(!p.join("l.db").exists(), "--jobs 0: a ledger was created");
}

#[test]
fn generated_facts_are_valid_knowledge() {
    let d = tempfile::tempdir().unwrap();
    let o = injector(
        d.path(),
        &["facts", "generate", "--n", "120", "--seed", "3", "--out", "gen"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("120 facts"));
    assert_eq!(std::fs::read_dir(d.path().join("gen")).unwrap().count(), 3);
    let first = std::fs::read_to_string(d.path().join("gen/generated-000.yaml")).unwrap();
    let o = injector(
        d.path(),
        &["facts", "generate", "--n", "120", "--seed", "3", "--out", "gen"],
    );
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(d.path().join("gen/generated-000.yaml")).unwrap(),
        first,
        "deterministic"
    );
}
