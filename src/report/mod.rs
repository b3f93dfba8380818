//! HTML reports, rendered from the ledger alone: `reports/<run>/index.html`,
//! `reports/compare-<id>.html`, `reports/capacity-<id>.html` and `reports/index.html`.
pub mod capacity;
pub mod data;
pub mod html;
pub mod svg;

use crate::error::Result;
use crate::ledger::Ledger;
use data::RunData;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A number as the pages and the command line print it: two decimals, '-' when absent or not finite.
pub fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "-".into(),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::paths::write_atomic(path, text.as_bytes())
}

/// Writes one run's page; returns its path.
pub fn write_run(ledger: &Ledger, dir: &Path, run: &str) -> Result<PathBuf> {
    let d = RunData::load(ledger, run)?;
    let path = dir.join(&d.run.id).join("index.html");
    write_atomic(&path.with_file_name(RETENTION_CSV), &retention_csv(ledger, &d)?)?;
    write_atomic(&path, &html::run_page(&d))?;
    Ok(path)
}

/// The file beside a run's page with every score of every fact after every step.
pub const RETENTION_CSV: &str = "retention.csv";

/// One line per fact and step it was scored at: fact id, hash, its own step, the step scored after,
/// teacher-forced recall and generalisation, free recall and generalisation (empty where not
/// measured).
fn retention_csv(ledger: &Ledger, d: &RunData) -> Result<String> {
    let step_of: std::collections::HashMap<&str, (&str, i64)> = d
        .facts()
        .iter()
        .map(|f| (f.hash.as_str(), (f.id.as_str(), f.step)))
        .collect();
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    let mut out = String::from("fact,hash,injected_at,step,recall,general,free_recall,free_general\n");
    for p in ledger.probes(&d.run.id)? {
        let Some(&(id, at)) = step_of.get(p.fact.as_str()) else {
            continue;
        };
        // Ids are plain YAML scalars; quote them for CSV.
        let _ = writeln!(
            out,
            "\"{}\",{},{at},{},{:.4},{},{},{}",
            id.replace('"', "\"\""),
            p.fact,
            p.step,
            p.recall,
            opt(p.general),
            opt(p.free_recall),
            opt(p.free_general)
        );
    }
    Ok(out)
}

/// Writes a comparison page (and the pages of its runs); returns its path.
pub fn write_compare(ledger: &Ledger, dir: &Path, id: &str) -> Result<PathBuf> {
    let runs = ledger.comparison(id)?;
    let data: Vec<RunData> = runs.iter().map(|r| RunData::load(ledger, r)).collect::<Result<_>>()?;
    for r in &runs {
        write_run(ledger, dir, r)?;
    }
    let path = dir.join(format!("compare-{id}.html"));
    write_atomic(&path, &html::compare_page(id, &data))?;
    Ok(path)
}

/// Writes the capacity page of `runs` (and their pages) as `capacity-<id>.html`, the id the first 8
/// hex digits of blake3 over the sorted run ids (the strategies in the order their runs are given);
/// returns its path. Errors: an unknown run.
pub fn write_capacity(ledger: &Ledger, dir: &Path, runs: &[String]) -> Result<PathBuf> {
    let mut ids = runs.to_vec();
    ids.sort();
    ids.dedup();
    let id = blake3::hash(ids.join(",").as_bytes()).to_hex()[..8].to_string();
    // In the order given (the strategies' colours follow it), each once.
    let mut given: Vec<&String> = Vec::new();
    for r in runs {
        if !given.contains(&r) {
            given.push(r);
        }
    }
    let data: Vec<RunData> = given.iter().map(|r| RunData::load(ledger, r)).collect::<Result<_>>()?;
    for r in &ids {
        write_run(ledger, dir, r)?;
    }
    let path = dir.join(format!("capacity-{id}.html"));
    write_atomic(&path, &capacity::capacity_page(&id, &data))?;
    Ok(path)
}

/// Writes `index.html` listing every run and comparison in the ledger.
pub fn write_index(ledger: &Ledger, dir: &Path) -> Result<PathBuf> {
    let runs: Vec<RunData> = ledger
        .list_runs()?
        .iter()
        .map(|r| RunData::load(ledger, &r.id))
        .collect::<Result<_>>()?;
    let comps = ledger.comparisons()?;
    let path = dir.join("index.html");
    write_atomic(&path, &html::index_page(&runs, &comps))?;
    Ok(path)
}

/// Rewrites every page the ledger can produce.
pub fn write_all(ledger: &Ledger, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for r in ledger.list_runs()? {
        out.push(write_run(ledger, dir, &r.id)?);
    }
    for (id, _) in ledger.comparisons()? {
        out.push(write_compare(ledger, dir, &id)?);
    }
    out.push(write_index(ledger, dir)?);
    Ok(out)
}
