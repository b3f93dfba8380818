//! HTML reports, rendered from the ledger alone: `reports/<run>/index.html`,
//! `reports/compare-<id>.html` and `reports/index.html`.
pub mod data;
pub mod html;
pub mod svg;

use crate::error::Result;
use crate::ledger::Ledger;
use data::RunData;
use std::path::{Path, PathBuf};

/// A number as the pages and the command line print it: two decimals, '-' when absent or not finite.
pub fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "-".into(),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("html.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes one run's page; returns its path.
pub fn write_run(ledger: &Ledger, dir: &Path, run: &str) -> Result<PathBuf> {
    let d = RunData::load(ledger, run)?;
    let path = dir.join(&d.run.id).join("index.html");
    write_atomic(&path, &html::run_page(&d))?;
    Ok(path)
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
