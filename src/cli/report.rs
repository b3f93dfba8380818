//! `injector report [RUN | --compare ID | --capacity RUN,RUN…]`: (re)render HTML from the ledger alone.
use super::Global;
use clap::Args;
use injector::ledger::Ledger;
use injector::report;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Render this run's page (default: every page the ledger can produce).
    pub run: Option<String>,
    /// Render this comparison's page.
    #[arg(long, conflicts_with = "run")]
    pub compare: Option<String>,
    /// Render the capacity page of these runs (comma-separated): their scores against their fact
    /// counts, per strategy (`bench/capacity.sh` makes the runs).
    #[arg(long, conflicts_with_all = ["run", "compare"], value_delimiter = ',')]
    pub capacity: Vec<String>,
}

pub fn run(a: ReportArgs, g: &Global) -> anyhow::Result<()> {
    if a.capacity.iter().any(|r| r.trim().is_empty()) {
        return Err(injector::Error::BadInput("--capacity: an empty run id (expected RUN,RUN,…)".into()).into());
    }
    injector::paths::check_dir_writable(&g.reports, "--reports")?;
    let ledger = Ledger::open_read_only(&g.ledger)?;
    let mut written = match (&a.run, &a.compare) {
        (Some(r), _) => vec![report::write_run(&ledger, &g.reports, r)?],
        (_, Some(c)) => vec![report::write_compare(&ledger, &g.reports, c)?],
        _ if !a.capacity.is_empty() => vec![report::write_capacity(&ledger, &g.reports, &a.capacity)?],
        _ => report::write_all(&ledger, &g.reports)?,
    };
    if a.run.is_some() || a.compare.is_some() || !a.capacity.is_empty() {
        written.push(report::write_index(&ledger, &g.reports)?);
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
