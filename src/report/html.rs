//! The HTML pages: one per run, one per comparison, and the index. Self-contained: inline CSS and
//! SVG, no script, no network.
use super::data::{Curve, RunData, Summary};
use super::num;
use super::svg::{esc, heat, heatmap, line_chart, stacked_bars, Series, PALETTE};
use crate::config::Proj;
use std::fmt::Write;

const CSS: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.best{font-weight:700;background:#e8f6e8}.meta{color:#555;font-size:.9em}
.chart{margin:6px 12px 6px 0;background:#fff}.chart .title{font-size:13px;font-weight:600}.chart .tick{font-size:10px;fill:#444}
.grid{display:flex;flex-wrap:wrap}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.8em}.gen{max-width:480px;text-align:left}
.verdict{background:#eef4fb;border-left:4px solid #1f77b4;padding:8px 12px}";

pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>{body}</body></html>\n",
        esc(title)
    )
}

fn mib(b: i64) -> String {
    format!("{:.0}", b as f64 / (1024.0 * 1024.0))
}

/// GPU memory in MiB, or "-" off a GPU.
fn gpu_mib(b: i64) -> String {
    if b > 0 {
        mib(b)
    } else {
        "-".into()
    }
}

fn summary_cells(s: &Summary) -> Vec<String> {
    vec![
        num(Some(s.final_recall)),
        num(s.final_general),
        num(s.final_free_recall),
        num(s.final_free_general),
        num(s.locality),
        perplexity_cell(s),
        num(Some(s.first_quarter_recall)),
        num(Some(s.recall_at_step)),
        format!("{:.1}", s.wall_seconds),
        s.optimizer_steps.to_string(),
        s.tokens.to_string(),
        mib(s.peak_rss_bytes),
        gpu_mib(s.peak_gpu_bytes),
    ]
}

/// The general check's perplexity after the run, with the base model's in brackets.
pub(super) fn perplexity_cell(s: &Summary) -> String {
    match (s.perplexity, s.base_perplexity) {
        (Some(p), Some(b)) => format!("{p:.2} ({b:.2})"),
        (Some(p), None) => format!("{p:.2}"),
        _ => "-".into(),
    }
}

const SUMMARY_HEAD: [&str; 13] = [
    "final recall",
    "final generalisation",
    "final free recall",
    "final free generalisation",
    "locality",
    "perplexity of the base model's answers (base)",
    "first-quarter retention",
    "recall right after its step",
    "wall seconds",
    "optimizer steps",
    "tokens",
    "peak RSS (MiB)",
    "peak GPU (MiB)",
];

/// Optimizer steps beyond which the loss chart shows one point per injection step.
const MAX_LOSS_POINTS: usize = 600;

/// Whether the loss charts of `runs` show one point per injection step (any run has more than
/// [`MAX_LOSS_POINTS`] optimizer steps: all of them on one axis would be a band of noise).
fn loss_per_step(runs: &[&RunData]) -> bool {
    runs.iter()
        .any(|d| d.steps.iter().map(|s| s.losses.len()).sum::<usize>() > MAX_LOSS_POINTS)
}

/// The training loss: with `per_step` each injection step's last loss (x: the injection step),
/// otherwise every optimizer step one after another (x: the optimizer step).
fn loss_series(d: &RunData, per_step: bool) -> Vec<(f64, f64)> {
    if per_step {
        return d
            .steps
            .iter()
            .filter_map(|s| s.losses.last().map(|&l| (s.idx as f64, l)))
            .collect();
    }
    let mut x = 0.0;
    let mut out = Vec::new();
    for s in &d.steps {
        for l in &s.losses {
            out.push((x, *l));
            x += 1.0;
        }
    }
    out
}

/// The loss chart's title and x label (see [`loss_series`]).
fn loss_axis(per_step: bool) -> (&'static str, &'static str) {
    if per_step {
        ("training loss at the end of each injection step", "injection step")
    } else {
        ("training loss (all steps, one after another)", "optimizer step")
    }
}

/// Heatmap of the unmasked rank per layer and module at the run's last step (fraction of init_r).
fn rank_chart(d: &RunData, title: &str) -> String {
    let Some(last) = d.steps.last() else {
        return String::new();
    };
    // Without a readable config, the largest rank seen stands in for init_r.
    let init_r = match &d.config {
        Some(c) => c.train.adalora.init_r as f64,
        None => last.rank_pattern.iter().map(|(_, r)| *r).max().unwrap_or(1).max(1) as f64,
    };
    let mut layers: Vec<usize> = Vec::new();
    let mut modules: Vec<String> = Vec::new();
    let mut val = std::collections::HashMap::new();
    for (key, rank) in &last.rank_pattern {
        let Some((l, p)) = Proj::parse_weight_key(key) else {
            continue;
        };
        if !layers.contains(&l) {
            layers.push(l);
        }
        if !modules.iter().any(|m| m == p.name()) {
            modules.push(p.name().to_string());
        }
        val.insert((l, p.name().to_string()), *rank as f64 / init_r);
    }
    layers.sort();
    let rows: Vec<String> = modules.clone();
    let cols: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    heatmap(title, &rows, &cols, |i, j| {
        val.get(&(layers[j], modules[i].clone())).copied()
    })
}

/// Rows and columns of a retention heatmap at most: larger runs are binned (facts by injection
/// order, checks by step).
const MAX_HEAT_ROWS: usize = 50;
const MAX_HEAT_COLS: usize = 60;

/// The fact × check heatmap of teacher-forced recall, or with `free` of free-decoding recall; facts
/// and checks binned beyond [`MAX_HEAT_ROWS`] × [`MAX_HEAT_COLS`], each cell the mean of what was
/// measured in it.
fn retention_chart(d: &RunData, title: &str, free: bool) -> String {
    let b = d.matrix.binned(&d.steps, MAX_HEAT_ROWS, MAX_HEAT_COLS, free);
    let title = if b.rows.len() < d.facts().len() {
        format!(
            "{title} — {} facts in {} groups by injection order, mean per cell",
            d.facts().len(),
            b.rows.len()
        )
    } else {
        title.to_string()
    };
    heatmap(&title, &b.rows, &b.cols, |i, j| b.cells[i][j])
}

/// Both retention heatmaps: teacher-forced shown, free decoding one click away (no script: a
/// `<details>` element), and the link to the whole matrix as CSV.
fn retention_charts(d: &RunData, title: &str, from_root: bool) -> String {
    let csv = if from_root {
        format!("{}/{}", esc(&d.run.id), super::RETENTION_CSV)
    } else {
        super::RETENTION_CSV.to_string()
    };
    format!(
        "{}<details><summary>free decoding (key-detail recall of greedy answers, where decoded)</summary>{}</details>\
         <p class=meta>Every score of every fact after every step: <a href=\"{csv}\">{}</a></p>",
        retention_chart(d, title, false),
        retention_chart(d, &format!("{title} — free decoding"), true),
        super::RETENTION_CSV
    )
}

/// The forgetting curve: recall against the number of steps since a fact's own, pooled over facts
/// and checks (teacher-forced and free).
fn forgetting_series(d: &RunData) -> (Curve, Curve) {
    d.matrix.forgetting(&d.steps, FORGETTING_BINS)
}

/// Points of a forgetting curve at most.
const FORGETTING_BINS: usize = 40;

/// Facts whose free answers carry another fact's details (at most `limit`).
fn collisions_table(d: &RunData, limit: usize) -> String {
    let rows = d.matrix.collisions(limit);
    if rows.is_empty() {
        return String::from("<p class=meta>No free answer carries another fact's details (or none was decoded).</p>");
    }
    let mut t = String::from(
        "<table id=collisions><tr><th class=l>fact</th><th>free recall</th><th class=l>its answer</th>\
         <th class=l>its free answer</th><th class=l>details it took from</th></tr>",
    );
    for c in rows {
        let _ = write!(
            t,
            "<tr><td class=l>{}</td><td>{}</td><td class='l gen'>{}</td><td class='l gen'>{}</td><td class=l>{}: {}</td></tr>",
            esc(&c.id),
            num(Some(c.free_recall)),
            esc(&c.answer),
            esc(&c.text),
            esc(&c.other),
            esc(&c.shared.join(", "))
        );
    }
    t.push_str("</table>");
    t
}

/// What the run rehearsed (replay and spaced strategies): how often, why (spaced), and the facts
/// rehearsed most, with their latest recall. Empty when nothing was rehearsed.
fn rehearsal_table(d: &RunData) -> String {
    use crate::ledger::Reason;
    let total: usize = d.steps.iter().map(|s| s.rehearsed.len()).sum();
    if total == 0 {
        return String::new();
    }
    let reasons: Vec<Reason> = d
        .steps
        .iter()
        .flat_map(|s| s.rehearsal.iter().map(|r| r.reason))
        .collect();
    let fell = reasons.iter().filter(|&&r| r == Reason::Fell).count();
    let held = reasons.iter().filter(|&&r| r == Reason::Held).count();
    let mut count: std::collections::HashMap<&str, usize> = Default::default();
    for h in d.steps.iter().flat_map(|s| &s.rehearsed) {
        *count.entry(h.as_str()).or_default() += 1;
    }
    let summaries = d.fact_summaries();
    let mut most: Vec<(&str, usize)> = count.into_iter().collect();
    most.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let consolidations: String = d
        .steps
        .iter()
        .filter_map(|s| s.consolidation.as_ref().map(|c| (s.idx, c)))
        .map(|(idx, c)| {
            let own = match (c.preserve, c.null_space, c.protect) {
                (Some(p), Some(n), Some(w)) => {
                    format!(", preservation weight {p}, null-space share {n}, interference penalty {w}")
                }
                _ => String::new(),
            };
            let prompts = match c.prompts {
                Some(1) => ", 1 training prompt of each fact an epoch".to_string(),
                Some(k) => format!(", {k} training prompts of each fact an epoch"),
                None => String::new(),
            };
            format!(
                " Step {idx} was a consolidation: at most {} epochs of {}-fact mini-batches{prompts}, learning rate {}{own}.",
                c.epochs,
                c.mixed_batch,
                c.lr_scheduler.name()
            )
        })
        .collect();
    let mut t = format!(
        "<h2>Rehearsal</h2><p class=meta>{total} rehearsals in {} steps{}.{consolidations}</p>\
         <table id=rehearsal><tr><th class=l>fact</th><th>step</th><th>rehearsed</th><th>final recall</th></tr>",
        d.steps.len(),
        if reasons.is_empty() {
            String::new()
        } else {
            let held_note = match held {
                0 => String::new(),
                n => format!(", {n} held but were trained with the facts that fell"),
            };
            format!(
                ": {fell} because the fact fell below the threshold, {} because its review was due{held_note}",
                reasons.len() - fell - held
            )
        }
    );
    for (h, n) in most.into_iter().take(10) {
        if let Some(f) = summaries.iter().find(|f| f.hash == h) {
            let _ = write!(
                t,
                "<tr><td class=l>{}</td><td>{}</td><td>{n}</td><td>{}</td></tr>",
                esc(&f.id),
                f.step,
                num(Some(f.recall))
            );
        }
    }
    t.push_str("</table>");
    t
}

/// The run's reverts: when, back to which step, what was taken back. Empty when none.
fn reverts_table(d: &RunData) -> String {
    if d.reverts.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "<h2>Reverts</h2><table id=reverts><tr><th>revert</th><th class=l>when</th><th>back to step</th>\
         <th>steps taken back</th><th class=l>weights after</th></tr>",
    );
    for r in &d.reverts {
        let _ = write!(
            t,
            "<tr><td>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td class=l>{}</td></tr>",
            r.idx,
            esc(&r.created),
            r.to_step,
            r.steps.len(),
            &r.weights_hash[..12.min(r.weights_hash.len())]
        );
    }
    t.push_str("</table><p class=meta>Steps after a revert were trained again from the weights it kept.</p>");
    t
}

fn generations_table(d: &RunData, limit: usize) -> String {
    let last = d.last_step().unwrap_or(-1);
    let mut t = String::from("<table><tr><th class=l>fact</th><th class=l>prompt</th><th class=l>before the run (base model)</th><th class=l>after the last step</th><th>F1</th></tr>");
    let mut n = 0;
    for f in d.facts() {
        let before = d.generations.iter().find(|g| g.fact == f.hash && g.step == -1);
        let after = d.generations.iter().find(|g| g.fact == f.hash && g.step == last);
        let Some(after) = after else { continue };
        let _ = write!(
            t,
            "<tr><td class=l>{}</td><td class='l gen'>{}</td><td class='l gen'>{}</td><td class='l gen'>{}</td><td>{}</td></tr>",
            esc(&f.id),
            esc(&after.prompt),
            esc(before.map(|g| g.text.as_str()).unwrap_or("-")),
            esc(&after.text),
            num(Some(after.f1))
        );
        n += 1;
        if n >= limit {
            break;
        }
    }
    t.push_str("</table>");
    t
}

/// The page of one run.
pub fn run_page(d: &RunData) -> String {
    let s = d.summary();
    let r = &d.run;
    let mut b = String::new();
    let _ = write!(b, "<h1>{} <small>({})</small></h1>", esc(&r.id), esc(&r.strategy));
    let _ = write!(
        b,
        "<p class=meta>model {} ({})<br>knowledge {} · {} facts · {} steps · status {} · created {} · weights {}</p>",
        esc(&r.model_path),
        &r.model_hash[..12.min(r.model_hash.len())],
        esc(&r.knowledge_dir),
        s.facts,
        s.steps,
        esc(&r.status),
        esc(&r.created),
        &r.weights_hash[..12.min(r.weights_hash.len())]
    );
    b.push_str("<h2>Summary</h2><table id=summary><tr>");
    for h in SUMMARY_HEAD {
        let _ = write!(b, "<th>{h}</th>");
    }
    b.push_str("</tr><tr>");
    for c in summary_cells(&s) {
        let _ = write!(b, "<td>{c}</td>");
    }
    b.push_str("</tr></table>");
    b.push_str("<h2>Facts</h2><table id=facts><tr><th class=l>fact</th><th>step</th><th>recall right after</th><th>final recall</th><th>final generalisation</th><th>free recall</th><th>free generalisation</th><th>previous answer</th><th>prefers new</th></tr>");
    let last = d.last_step().unwrap_or(-1);
    let stale = |at: i64| {
        if at == last {
            String::new()
        } else {
            format!(" <small>(step {at})</small>")
        }
    };
    for f in d.fact_summaries() {
        let _ = write!(
            b,
            "<tr><td class=l>{}{}</td><td>{}</td><td style='background:{}'>{}</td><td style='background:{}'>{}</td><td>{}</td><td style='background:{}'>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.id),
            f.superseded_by
                .as_ref()
                .map(|by| format!(" <small>(superseded by {})</small>", esc(by)))
                .unwrap_or_default(),
            f.step,
            heat(if f.recall_at_step.is_finite() { f.recall_at_step } else { 0.0 }),
            num(Some(f.recall_at_step)),
            heat(if f.recall.is_finite() { f.recall } else { 0.0 }),
            num(Some(f.recall)) + &stale(f.measured_at),
            num(f.general),
            f.free_recall.map(heat).unwrap_or_else(|| "none".into()),
            num(f.free_recall),
            num(f.free_general),
            num(f.previous),
            num(f.prefers_new)
        );
    }
    b.push_str("</table>");
    let (rec, gen) = d.curves();
    let (free_rec, _) = d.free_curves();
    let newest = d.matrix.newest(&d.steps);
    let loc: Vec<(f64, f64)> = d.locality.iter().map(|&(s, v)| (s as f64, v)).collect();
    b.push_str("<h2>Recall, generalisation and locality over steps</h2><div class=grid>");
    b.push_str(&line_chart(
        &[
            Series {
                name: "recall",
                color: PALETTE[0],
                points: rec,
            },
            Series {
                name: "generalisation",
                color: PALETTE[2],
                points: gen,
            },
            Series {
                name: "free recall",
                color: PALETTE[4],
                points: free_rec,
            },
            Series {
                name: "newest facts",
                color: PALETTE[9],
                points: newest,
            },
            Series {
                name: "locality",
                color: PALETTE[1],
                points: loc,
            },
        ],
        "at retention checks, mean over the facts injected so far; newest facts: right after their step",
        "step",
        Some((0.0, 1.0)),
    ));
    b.push_str(&line_chart(
        &[Series {
            name: "loss",
            color: PALETTE[3],
            points: loss_series(d, loss_per_step(&[d])),
        }],
        loss_axis(loss_per_step(&[d])).0,
        loss_axis(loss_per_step(&[d])).1,
        None,
    ));
    let (forget, forget_free) = forgetting_series(d);
    b.push_str(&line_chart(
        &[
            Series {
                name: "recall",
                color: PALETTE[0],
                points: forget,
            },
            Series {
                name: "free recall",
                color: PALETTE[4],
                points: forget_free,
            },
        ],
        "forgetting: recall against facts injected since (all facts, all checks)",
        "facts injected since",
        Some((0.0, 1.0)),
    ));
    b.push_str("</div><h2>Retention (fact × step, recall)</h2>");
    b.push_str(&retention_charts(
        d,
        "recall of each fact after each step (grey: not yet injected or not measured)",
        false,
    ));
    b.push_str("<h2>Collisions (free answers that carry another fact's details)</h2>");
    b.push_str(&collisions_table(d, 20));
    b.push_str(&rehearsal_table(d));
    b.push_str(&reverts_table(d));
    b.push_str("<h2>AdaLoRA rank pattern (last step)</h2>");
    b.push_str(&rank_chart(d, "unmasked rank / init_r per module and layer"));
    b.push_str("<h2>Time and memory per step</h2><table><tr><th>step</th><th>facts</th><th>optimizer steps</th><th>train s</th><th>eval s</th><th>tokens</th><th>peak RSS (MiB)</th><th>peak GPU (MiB)</th><th>locality</th><th>perplexity</th></tr>");
    let locs: std::collections::HashMap<i64, f64> = d.locality.iter().copied().collect();
    let ppl: std::collections::HashMap<i64, f64> = d.perplexity.iter().copied().collect();
    for st in &d.steps {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            st.idx,
            st.facts.len(),
            st.optimizer_steps,
            st.seconds,
            st.eval_seconds,
            st.tokens,
            mib(st.peak_rss_bytes),
            gpu_mib(st.peak_gpu_bytes),
            num(locs.get(&st.idx).copied()),
            ppl.get(&st.idx).map_or("-".into(), |p| format!("{p:.2}"))
        );
    }
    b.push_str("</table>");
    b.push_str(&phase_charts(d));
    b.push_str("<h2>Sample generations</h2>");
    b.push_str(&generations_table(d, 20));
    let _ = write!(
        b,
        "<h2>Config</h2><pre>{}</pre>",
        esc(&serde_json::from_str::<serde_json::Value>(&d.run.config)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| d.run.config.clone()))
    );
    page(&format!("injector {}", r.id), &b)
}

/// Bars per step (at most [`MAX_BARS`]: consecutive steps binned, each bar their mean) of where a
/// step's time went, and a table of each invocation's costs outside its steps.
fn phase_charts(d: &RunData) -> String {
    let timed: Vec<_> = d.steps.iter().filter(|s| s.phases.total() > 0.0).collect();
    if timed.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = timed[0].phases.named().iter().map(|(n, _)| *n).collect();
    let per_bar = timed.len().div_ceil(MAX_BARS);
    let bars: Vec<(String, Vec<f64>)> = timed
        .chunks(per_bar)
        .map(|c| {
            let label = match c {
                [one] => format!("step {}", one.idx),
                _ => format!("steps {}-{}", c[0].idx, c[c.len() - 1].idx),
            };
            let mean = (0..names.len())
                .map(|i| c.iter().map(|s| s.phases.named()[i].1).sum::<f64>() / c.len() as f64)
                .collect();
            (label, mean)
        })
        .collect();
    let mut b = String::from("<h2>Where the time went</h2><div class=grid>");
    let what = if per_bar > 1 {
        format!("mean of {per_bar} steps a bar")
    } else {
        "one bar a step".into()
    };
    b.push_str(&stacked_bars(
        &format!("seconds per step, by phase ({what})"),
        "step",
        &names,
        &bars,
    ));
    b.push_str("</div><table id=invocations><tr><th>invocation</th><th>started</th><th>steps</th><th>wall s</th>");
    let fixed = [
        "model load",
        "plan",
        "preservation",
        "projections",
        "before samples",
        "replay",
        "tokenize",
        "commits",
        "in steps",
    ];
    for h in fixed {
        let _ = write!(b, "<th>{h}</th>");
    }
    b.push_str("</tr>");
    for inv in &d.invocations {
        let f = &inv.fixed;
        let cells = [
            f.model_load,
            f.plan,
            f.preservation,
            f.projections,
            f.before,
            f.replay,
            f.tokenize,
            f.commit,
            inv.step_phases.total(),
        ];
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td>",
            inv.idx,
            esc(&inv.started),
            inv.steps,
            inv.seconds
        );
        for c in cells {
            let _ = write!(b, "<td>{c:.2}</td>");
        }
        b.push_str("</tr>");
    }
    b.push_str("</table>");
    b
}

/// Most bars in a chart of steps.
const MAX_BARS: usize = 60;

/// x = facts injected after each step, so strategies with different step counts line up.
fn by_facts(d: &RunData, points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut cum = std::collections::HashMap::new();
    let mut n = 0;
    for s in &d.steps {
        n += s.facts.len();
        cum.insert(s.idx, n as f64);
    }
    cum.insert(-1, 0.0);
    points
        .iter()
        .filter_map(|&(s, v)| cum.get(&(s as i64)).map(|&x| (x, v)))
        .collect()
}

/// The comparison page of several runs (strategies) on the same knowledge.
pub fn compare_page(id: &str, runs: &[RunData]) -> String {
    let sums: Vec<Summary> = runs.iter().map(RunData::summary).collect();
    let mut b = String::new();
    let _ = write!(b, "<h1>Comparison {}</h1>", esc(id));
    if let Some(r) = runs.first() {
        let _ = write!(
            b,
            "<p class=meta>knowledge {} · model {}</p>",
            esc(&r.run.knowledge_dir),
            esc(&r.run.model_path)
        );
    }
    // Best per column: highest for quality, lowest for cost.
    let cols: Vec<Vec<f64>> = sums
        .iter()
        .map(|s| {
            vec![
                s.final_recall,
                s.final_general.unwrap_or(f64::NAN),
                s.final_free_recall.unwrap_or(f64::NAN),
                s.final_free_general.unwrap_or(f64::NAN),
                s.locality.unwrap_or(f64::NAN),
                -s.perplexity.unwrap_or(f64::NAN),
                s.first_quarter_recall,
                s.recall_at_step,
                -s.wall_seconds,
                -(s.optimizer_steps as f64),
                -(s.tokens as f64),
                -(s.peak_rss_bytes as f64),
                if s.peak_gpu_bytes > 0 {
                    -(s.peak_gpu_bytes as f64)
                } else {
                    f64::NAN
                },
            ]
        })
        .collect();
    let best: Vec<f64> = (0..SUMMARY_HEAD.len())
        .map(|c| {
            cols.iter()
                .map(|r| r[c])
                .filter(|v| v.is_finite())
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    b.push_str("<table id=compare><tr><th class=l>strategy</th><th class=l>run</th>");
    for h in SUMMARY_HEAD {
        let _ = write!(b, "<th>{h}</th>");
    }
    b.push_str("</tr>");
    for ((d, s), row) in runs.iter().zip(&sums).zip(&cols) {
        let _ = write!(
            b,
            "<tr><td class=l>{}</td><td class=l><a href=\"{}/index.html\">{}</a></td>",
            esc(&d.run.strategy),
            esc(&d.run.id),
            esc(&d.run.id)
        );
        for (c, cell) in summary_cells(s).into_iter().enumerate() {
            let cls = if row[c].is_finite() && (row[c] - best[c]).abs() < 1e-12 && runs.len() > 1 {
                " class=best"
            } else {
                ""
            };
            let _ = write!(b, "<td{cls}>{cell}</td>");
        }
        b.push_str("</tr>");
    }
    b.push_str("</table>");
    b.push_str(&verdict(runs, &sums));
    b.push_str("<h2>Recall and locality as facts are added</h2><div class=grid>");
    let series = |f: &dyn Fn(&RunData) -> Vec<(f64, f64)>| -> Vec<(String, Vec<(f64, f64)>)> {
        runs.iter().map(|d| (d.run.strategy.clone(), f(d))).collect()
    };
    let recall = series(&|d| by_facts(d, &d.curves().0));
    let general = series(&|d| by_facts(d, &d.curves().1));
    let free = series(&|d| by_facts(d, &d.free_curves().0));
    let locality = series(&|d| by_facts(d, &d.locality.iter().map(|&(s, v)| (s as f64, v)).collect::<Vec<_>>()));
    let per_step = loss_per_step(&runs.iter().collect::<Vec<_>>());
    let loss = series(&|d| loss_series(d, per_step));
    let curves: Vec<(Curve, Curve)> = runs.iter().map(forgetting_series).collect();
    let forget: Vec<(String, Curve)> = runs
        .iter()
        .zip(&curves)
        .map(|(d, c)| (d.run.strategy.clone(), c.0.clone()))
        .collect();
    let forget_free: Vec<(String, Curve)> = runs
        .iter()
        .zip(&curves)
        .map(|(d, c)| (d.run.strategy.clone(), c.1.clone()))
        .collect();
    for (title, data, x, range) in [
        (
            "forgetting: recall against facts injected since (all facts, all checks)",
            &forget,
            "facts injected since",
            Some((0.0, 1.0)),
        ),
        (
            "forgetting, free decoding (where decoded)",
            &forget_free,
            "facts injected since",
            Some((0.0, 1.0)),
        ),
        (
            "mean recall of the facts injected so far",
            &recall,
            "facts injected",
            Some((0.0, 1.0)),
        ),
        (
            "mean generalisation of the facts injected so far",
            &general,
            "facts injected",
            Some((0.0, 1.0)),
        ),
        (
            "mean free-decoding recall (key details of greedy answers)",
            &free,
            "facts injected",
            Some((0.0, 1.0)),
        ),
        (
            "locality (unrelated prompts)",
            &locality,
            "facts injected",
            Some((0.0, 1.0)),
        ),
        (loss_axis(per_step).0, &loss, loss_axis(per_step).1, None),
    ] {
        let s: Vec<Series> = data
            .iter()
            .enumerate()
            .map(|(i, (n, p))| Series {
                name: n,
                color: PALETTE[i % PALETTE.len()],
                points: p.clone(),
            })
            .collect();
        b.push_str(&line_chart(&s, title, x, range));
    }
    b.push_str("</div><h2>Retention heatmaps (fact × step)</h2><div class=grid>");
    for d in runs {
        b.push_str(&retention_charts(d, &d.run.strategy, true));
    }
    b.push_str("</div><h2>Collisions (free answers that carry another fact's details)</h2>");
    for d in runs {
        let _ = write!(b, "<h3>{}</h3>", esc(&d.run.strategy));
        b.push_str(&collisions_table(d, 5));
    }
    b.push_str("<h2>AdaLoRA rank pattern (last step)</h2><div class=grid>");
    for d in runs {
        b.push_str(&rank_chart(d, &d.run.strategy));
    }
    b.push_str("</div><h2>Sample generations</h2>");
    for d in runs {
        let _ = write!(b, "<h3>{}</h3>", esc(&d.run.strategy));
        b.push_str(&generations_table(d, 4));
    }
    page(&format!("injector comparison {id}"), &b)
}

/// One sentence per question a reader has: which keeps the facts, which generalises, which leaves
/// the rest alone, at what cost.
fn verdict(runs: &[RunData], sums: &[Summary]) -> String {
    if runs.len() < 2 {
        return String::new();
    }
    let pick = |key: &dyn Fn(&Summary) -> f64| {
        let i = (0..sums.len())
            .max_by(|&a, &b| key(&sums[a]).total_cmp(&key(&sums[b])))
            .unwrap_or(0);
        (runs[i].run.strategy.clone(), key(&sums[i]))
    };
    let (rk, rv) = pick(&|s| s.final_recall);
    let (gk, gv) = pick(&|s| s.final_general.unwrap_or(f64::NAN));
    let (lk, lv) = pick(&|s| s.locality.unwrap_or(f64::NAN));
    let (tk, tv) = pick(&|s| -s.wall_seconds);
    format!(
        "<p class=verdict>Keeps the most facts: <b>{}</b> (final recall {:.2}). Generalises best: <b>{}</b> ({:.2}). \
         Leaves unrelated answers most intact: <b>{}</b> (locality {:.2}). Fastest: <b>{}</b> ({:.0} s).</p>",
        esc(&rk),
        rv,
        esc(&gk),
        gv,
        esc(&lk),
        lv,
        esc(&tk),
        -tv
    )
}

/// The index of all runs and comparisons.
pub fn index_page(runs: &[RunData], comparisons: &[(String, Vec<String>)]) -> String {
    let mut b = String::from("<h1>injector reports</h1><h2>Comparisons</h2><ul>");
    for (id, members) in comparisons {
        let _ = write!(
            b,
            "<li><a href=\"compare-{0}.html\">{0}</a>: {1}</li>",
            esc(id),
            esc(&members.join(", "))
        );
    }
    b.push_str("</ul><h2>Runs</h2><table><tr><th class=l>run</th><th class=l>strategy</th><th class=l>status</th><th>facts</th><th>final recall</th><th>final generalisation</th><th>final free recall</th><th>locality</th><th class=l>knowledge</th></tr>");
    for d in runs {
        let s = d.summary();
        let _ = write!(
            b,
            "<tr><td class=l><a href=\"{0}/index.html\">{0}</a></td><td class=l>{1}</td><td class=l>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7}</td><td class=l>{8}</td></tr>",
            esc(&d.run.id),
            esc(&d.run.strategy),
            esc(&d.run.status),
            s.facts,
            num(Some(s.final_recall)),
            num(s.final_general),
            num(s.final_free_recall),
            num(s.locality),
            esc(&d.run.knowledge_dir)
        );
    }
    b.push_str("</table>");
    page("injector reports", &b)
}
