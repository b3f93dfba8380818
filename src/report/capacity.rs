//! The capacity page (`reports/capacity-<id>.html`, issue #12): the source article's second question,
//! how many facts the model holds before new ones push old ones out. Runs of several strategies on
//! generated fact sets of several sizes N, plotted against N, and whether the facts that give way
//! collide with similar keys: the collision pairs of each strategy's largest run, with how alike the
//! two facts' templates are against any two facts of that run.
use super::data::{RunData, Summary};
use super::html::page;
use super::num;
use super::svg::{esc, line_chart_ticks, Series, PALETTE};
use crate::eval::metrics::key_details;
use crate::eval::retention::FactInfo;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

/// Two facts' templates are "alike" from this word overlap on (see [`template_similarity`]).
pub const ALIKE: f64 = 0.5;

/// The words of an answer that are not its subject's nor its key details (names, numbers): its
/// template, as a set of lowercase words ("is a salt mine in opened by").
fn template(f: &FactInfo) -> HashSet<String> {
    let drop: HashSet<String> = key_details(&f.answer, &f.subject)
        .iter()
        .chain(std::iter::once(&f.subject))
        .flat_map(|d| words(d))
        .collect();
    words(&f.answer)
        .filter(|w| !drop.contains(w) && !w.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

/// Lowercase words: runs of letters and digits.
fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Jaccard overlap of two facts' [`template`]s, in [0, 1]: 1 when both answers say the same around
/// their names and numbers ("X is a salt mine in Y, opened in 1685 by Z" and "W is a salt mine in V,
/// opened in 1711 by U"), near 0 for different kinds of fact.
pub fn template_similarity(a: &FactInfo, b: &FactInfo) -> f64 {
    jaccard(&template(a), &template(b))
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// What the collisions of one run say about similar keys (from its latest free answers; a run
/// with none decoded has none to say: [`key_collisions`] gives `None`).
pub struct KeyCollisions {
    /// Facts whose free answers carry another fact's details, and the facts of the run.
    pub colliding: usize,
    pub facts: usize,
    /// Share of colliding pairs whose templates are alike (≥ [`ALIKE`]; `None` without pairs), and
    /// the same share over every pair of the run's facts.
    pub alike_colliding: Option<f64>,
    pub alike_any: f64,
}

/// [`KeyCollisions`] of a run, from [`Matrix::collisions`](crate::eval::retention::Matrix::collisions).
pub fn key_collisions(d: &RunData) -> Option<KeyCollisions> {
    d.summary().final_free_recall?;
    let facts = &d.matrix.facts;
    let templates: Vec<HashSet<String>> = facts.iter().map(template).collect();
    let index: BTreeMap<&str, usize> = facts.iter().enumerate().map(|(i, f)| (f.id.as_str(), i)).collect();
    let pairs: Vec<(usize, usize)> = d
        .matrix
        .collisions(usize::MAX)
        .iter()
        .filter_map(|c| Some((*index.get(c.id.as_str())?, *index.get(c.other.as_str())?)))
        .collect();
    let alike = |i: usize, j: usize| jaccard(&templates[i], &templates[j]) >= ALIKE;
    let alike_colliding = pairs.iter().filter(|&&(i, j)| alike(i, j)).count() as f64 / pairs.len().max(1) as f64;
    // Every pair up to 2,000 facts (2 M pairs); above, the pairs of the first 2,000.
    let n = facts.len().min(2000);
    let (mut same, mut all) = (0usize, 0usize);
    for i in 0..n {
        for j in i + 1..n {
            same += alike(i, j) as usize;
            all += 1;
        }
    }
    Some(KeyCollisions {
        colliding: pairs.len(),
        facts: facts.len(),
        alike_colliding: (!pairs.is_empty()).then_some(alike_colliding),
        alike_any: same as f64 / all.max(1) as f64,
    })
}

/// Config fields that only say how a run was measured, not what it trained: left out of
/// [`variant`].
const MEASUREMENT_ONLY: [&str; 5] = [
    "retention_every",
    "retention_sample",
    "free_every",
    "free_decoding",
    "eval_batch_tokens",
];

/// Leaf values of a config's JSON by dotted path (`train.adalora.init_r`; an array is a leaf).
fn leaves(v: &serde_json::Value, path: &str, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(x, &p, out);
            }
        }
        other => {
            out.insert(path.to_string(), other.clone());
        }
    }
}

/// `v` with the leaf at dotted `path` set to `x` (objects made on the way).
fn with_leaf(mut v: serde_json::Value, path: &str, x: serde_json::Value) -> serde_json::Value {
    let mut at = &mut v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, k) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = serde_json::Value::Object(Default::default());
        }
        let m = at.as_object_mut().expect("made an object above");
        if i + 1 == parts.len() {
            m.insert(k.to_string(), x);
            break;
        }
        at = m.entry(k.to_string()).or_insert(serde_json::Value::Null);
    }
    v
}

/// A run's strategy and the settings it trained with that differ from the defaults (how it was
/// measured aside), e.g. `spaced:8 rehearsal.prompts=1`, `mixed lr_scheduler="cosine"`: the
/// capacity page groups runs by it, so runs of one strategy with other settings are other series.
/// A config that does not parse gives the strategy alone. Steps a repair added (no facts of their
/// own) are not in the config, so they are named after it: ` + consolidation` when one of them was
/// (with its epochs when not the default 12, its prompts an epoch when it left some out, and its preservation
/// settings where they differ from the run's, e.g. ` + consolidation (preserve=16, no null-space)`),
/// else ` + repair`; a run's own
/// closing consolidation (`consolidate_epochs`) is named the same way, not as a setting.
pub fn variant(r: &RunData) -> String {
    let c = r.config.clone().unwrap_or_default();
    let tail = repaired(&r.steps, c.mixed_batch, &c.train);
    // A run's own closing consolidation (`run --consolidate`) is named by the tail, as a repair's
    // is, not as a setting of the run.
    let mut own = r.config.clone();
    if let Some(o) = own.as_mut().filter(|_| tail.starts_with(" + consolidation")) {
        (o.consolidate_epochs, o.consolidate_prompts) = (0, 0);
    }
    variant_of(&r.run.strategy, own.as_ref()) + &tail
}

/// What [`variant`] adds for a run's repair steps ("" when it has none) under the run's training
/// settings `t`. A consolidation is recorded as one since schema 8; before, a repair step of more
/// facts than the run's `mixed_batch` was one.
fn repaired(steps: &[crate::ledger::StepRow], mixed_batch: usize, t: &crate::config::TrainConfig) -> String {
    let consolidation = |s: &crate::ledger::StepRow| {
        s.consolidation.is_some() || (s.facts.is_empty() && s.rehearsed.len() > mixed_batch)
    };
    let Some(first) = steps.iter().find(|s| consolidation(s)) else {
        return match steps.iter().any(|s| s.facts.is_empty()) {
            true => " + repair".into(),
            false => String::new(),
        };
    };
    let mut own = Vec::new();
    if let Some(c) = &first.consolidation {
        if c.epochs != crate::config::CONSOLIDATE_EPOCHS {
            own.push(format!("{} epochs", c.epochs));
        }
        if let Some(k) = c.prompts {
            own.push(format!("{k} prompt{} an epoch", if k == 1 { "" } else { "s" }));
        }
        if let Some(p) = c.preserve.filter(|p| *p != t.preserve) {
            own.push(format!("preserve={p}"));
        }
        if c.null_space == Some(0.0) && t.null_space > 0.0 {
            own.push("no null-space".into());
        }
        if let Some(w) = c.protect.filter(|w| *w != t.protect) {
            own.push(format!("protect={w}"));
        }
    }
    match own.is_empty() {
        true => " + consolidation".into(),
        false => format!(" + consolidation ({})", own.join(", ")),
    }
}

/// [`variant`] of a run of `strategy` recorded with `config`. A setting counts when its value, put
/// into the default config, makes another config (a field serialised at its default, which the
/// default config leaves out, does not).
pub fn variant_of(strategy: &str, config: Option<&crate::config::RunConfig>) -> String {
    use crate::config::RunConfig;
    let Some(c) = config else {
        return strategy.to_string();
    };
    let base = RunConfig {
        strategy: c.strategy.clone(),
        ..RunConfig::default()
    };
    let json = |c: &RunConfig| serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
    let (mut mine, base_json) = (BTreeMap::new(), json(&base));
    leaves(&json(c), "", &mut mine);
    let mut theirs = BTreeMap::new();
    leaves(&base_json, "", &mut theirs);
    let mut out = c.strategy.clone();
    for (k, v) in &mine {
        if theirs.get(k) == Some(v) || MEASUREMENT_ONLY.contains(&k.as_str()) {
            continue;
        }
        let changed = serde_json::from_value::<RunConfig>(with_leaf(base_json.clone(), k, v.clone()))
            .map_or(true, |other| other != base);
        if changed {
            let short = k
                .strip_prefix("train.adalora.")
                .or(k.strip_prefix("train."))
                .unwrap_or(k);
            let _ = write!(out, " {short}={v}");
        }
    }
    out
}

/// The capacity page of `runs` (any order; grouped by [`variant`], plotted against their fact counts).
pub fn capacity_page(id: &str, runs: &[RunData]) -> String {
    let sums: Vec<Summary> = runs.iter().map(RunData::summary).collect();
    let variants: Vec<String> = runs.iter().map(variant).collect();
    let mut strategies: Vec<&str> = Vec::new();
    for v in &variants {
        if !strategies.contains(&v.as_str()) {
            strategies.push(v);
        }
    }
    let mut ns: Vec<usize> = sums.iter().map(|s| s.facts).collect();
    ns.sort_unstable();
    ns.dedup();
    // Facts on a log scale, ticked at each N.
    let ticks: Vec<(f64, String)> = ns.iter().map(|&n| ((n.max(1) as f64).log10(), n.to_string())).collect();
    let chart = |title: &str, get: &dyn Fn(&Summary) -> Option<f64>| -> String {
        let series: Vec<Series> = strategies
            .iter()
            .enumerate()
            .map(|(k, st)| {
                let mut points: Vec<(f64, f64)> = variants
                    .iter()
                    .zip(&sums)
                    .filter(|(v, _)| v.as_str() == *st)
                    .filter_map(|(_, s)| Some(((s.facts.max(1) as f64).log10(), get(s)?)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name: st,
                    color: PALETTE[k % PALETTE.len()],
                    points,
                }
            })
            .collect();
        // Shares on 0–1; a perplexity (≥ 1) on its own scale.
        let range = if title.starts_with("general check") {
            None
        } else {
            Some((0.0, 1.0))
        };
        line_chart_ticks(&series, title, "facts injected (log scale)", range, &ticks)
    };
    let mut b = String::new();
    let _ = write!(b, "<h1>Capacity {}</h1>", esc(id));
    b.push_str(
        "<p class=meta>Each point is one run: its strategy (and any training setting it changed from the \
         defaults) on N generated facts (<code>injector facts generate \
         --n N</code>), every score after the run's last step, averaged over its facts. Teacher-forced token \
         accuracy (recall, generalisation) beside free decoding's key-detail recall (the share of an \
         answer's names and numbers that the greedy answer gives). The general check is the perplexity of the \
         base model's own answers to the locality prompts at the run's final weights (the base model's own \
         in brackets in the table). Made by <code>bench/capacity.sh</code>.</p>",
    );
    b.push_str("<div class=charts>");
    b.push_str(&chart("final recall (teacher-forced)", &|s| Some(s.final_recall)));
    b.push_str(&chart("final recall (free decoding)", &|s| s.final_free_recall));
    b.push_str(&chart("generalisation (teacher-forced)", &|s| s.final_general));
    b.push_str(&chart("generalisation (free decoding)", &|s| s.final_free_general));
    b.push_str(&chart("locality", &|s| s.locality));
    b.push_str(&chart("general check: perplexity (lower is better)", &|s| s.perplexity));
    b.push_str(&chart("first quarter's recall (teacher-forced)", &|s| {
        Some(s.first_quarter_recall)
    }));
    b.push_str("</div>");
    b.push_str(
        "<table><tr><th>N</th><th class=l>strategy and settings</th><th class=l>run</th><th>recall</th><th>free recall</th>\
         <th>generalisation</th><th>free generalisation</th><th>locality</th><th>perplexity (base)</th><th>first quarter</th>\
         <th>tokens</th><th>wall s</th></tr>",
    );
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&i| (sums[i].facts, strategies.iter().position(|s| *s == variants[i])));
    for i in order {
        let (r, s) = (&runs[i], &sums[i]);
        let _ = write!(
            b,
            "<tr><td>{}</td><td class=l>{}</td><td class=l><a href=\"{}/index.html\">{}</a></td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
            s.facts,
            esc(&variants[i]),
            esc(&r.run.id),
            esc(&r.run.id),
            num(Some(s.final_recall)),
            num(s.final_free_recall),
            num(s.final_general),
            num(s.final_free_general),
            num(s.locality),
            super::html::perplexity_cell(s),
            num(Some(s.first_quarter_recall)),
            s.tokens,
            s.wall_seconds
        );
    }
    b.push_str("</table>");
    // Collisions in each strategy's largest run.
    let _ = write!(
        b,
        "<h2>Collisions: similar keys?</h2><p class=meta>In each strategy's largest run: the facts whose free \
         answers carry at least two key details of another fact, and how often the two facts' answer templates \
         are alike (word overlap around their names and numbers ≥ {ALIKE}) against any two facts of the run. \
         The partner is the fact whose details the answer carries most, and the kinds of details a fact has \
         follow its template, so alike partners are favoured by how pairs are found: the any-pair share is a \
         floor, not the share chance alone would give. The run pages list the pairs.</p><table><tr><th class=l>strategy</th><th>N</th><th>colliding facts</th>\
         <th>alike templates, colliding pairs</th><th>alike templates, any pair</th></tr>"
    );
    for st in &strategies {
        let Some(((r, _), _)) = runs
            .iter()
            .zip(&sums)
            .zip(&variants)
            .filter(|(_, v)| v.as_str() == *st)
            .max_by_key(|((_, s), _)| s.facts)
        else {
            continue;
        };
        let _ = match key_collisions(r) {
            Some(k) => write!(
                b,
                "<tr><td class=l><a href=\"{}/index.html\">{}</a></td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.run.id),
                esc(st),
                k.facts,
                k.colliding,
                k.facts,
                num(k.alike_colliding),
                num(Some(k.alike_any))
            ),
            None => write!(
                b,
                "<tr><td class=l><a href=\"{}/index.html\">{}</a></td><td>{}</td><td colspan=3>no free answers decoded</td></tr>",
                esc(&r.run.id),
                esc(st),
                r.matrix.facts.len()
            ),
        };
    }
    b.push_str("</table>");
    page(&format!("capacity {id}"), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of one strategy with other training settings are told apart; how a run was measured
    /// (the retention cadence) is not a setting.
    #[test]
    fn a_variant_names_the_settings_changed_from_the_defaults() {
        use crate::config::{LrScheduler, RunConfig};
        let mut c = RunConfig {
            strategy: "spaced:8".into(),
            ..RunConfig::default()
        };
        assert_eq!(variant_of("spaced:8", Some(&c)), "spaced:8");
        c.retention_every = 50;
        c.retention_sample = 50;
        assert_eq!(variant_of("spaced:8", Some(&c)), "spaced:8");
        c.rehearsal.prompts = 1;
        c.rehearsal.below = 1.0;
        assert_eq!(
            variant_of("spaced:8", Some(&c)),
            "spaced:8 rehearsal.below=1.0 rehearsal.prompts=1"
        );
        let mut m = RunConfig {
            strategy: "mixed".into(),
            ..RunConfig::default()
        };
        m.train.lr_scheduler = LrScheduler::Cosine;
        m.train.adalora.init_r = 48;
        assert_eq!(variant_of("mixed", Some(&m)), "mixed init_r=48 lr_scheduler=\"cosine\"");
        assert_eq!(variant_of("mixed", None), "mixed");
    }

    /// A run that a repair went on with is another series than the run alone.
    #[test]
    fn repair_steps_name_their_own_series() {
        use crate::config::LrScheduler;
        use crate::ledger::{Consolidation, StepRow};
        let t = crate::config::TrainConfig::default();
        let mut steps = vec![StepRow::for_tests(0, vec!["f0".into()], vec![])];
        assert_eq!(repaired(&steps, 16, &t), "");
        steps.push(StepRow::for_tests(1, vec![], vec!["f0".into()]));
        assert_eq!(repaired(&steps, 16, &t), " + repair");
        steps[1].consolidation = Some(Consolidation {
            epochs: 12,
            lr_scheduler: LrScheduler::Cosine,
            mixed_batch: 16,
            preserve: Some(t.preserve),
            null_space: Some(t.null_space),
            protect: Some(t.protect),
            prompts: None,
        });
        assert_eq!(repaired(&steps, 16, &t), " + consolidation");
        // Its own preservation settings make another series.
        let own = steps[1].consolidation.as_mut().unwrap();
        (own.preserve, own.null_space) = (Some(16.0), Some(0.0));
        assert_eq!(
            repaired(&steps, 16, &t),
            " + consolidation (preserve=16, no null-space)"
        );
        steps[1].consolidation.as_mut().unwrap().epochs = 20;
        assert_eq!(
            repaired(&steps, 16, &t),
            " + consolidation (20 epochs, preserve=16, no null-space)"
        );
        steps[1].consolidation.as_mut().unwrap().prompts = Some(4);
        assert_eq!(
            repaired(&steps, 16, &t),
            " + consolidation (20 epochs, 4 prompts an epoch, preserve=16, no null-space)"
        );
        steps[1].consolidation.as_mut().unwrap().epochs = 12;
        // Recorded before schema 8: more facts than a mini-batch.
        steps[1].consolidation = None;
        steps[1].rehearsed = (0..17).map(|i| format!("f{i}")).collect();
        assert_eq!(repaired(&steps, 16, &t), " + consolidation");
    }

    fn fact(subject: &str, answer: &str) -> FactInfo {
        FactInfo {
            hash: String::new(),
            id: subject.into(),
            subject: subject.into(),
            answer: answer.into(),
            step: 0,
        }
    }

    #[test]
    fn templates_of_one_kind_are_alike_and_of_two_kinds_are_not() {
        let mine = fact(
            "the Veldar Salt Mine",
            "The Veldar Salt Mine is a salt mine in Kessan, opened in 1685 by Mara Tor.",
        );
        let mine2 = fact(
            "the Ostel Salt Mine",
            "The Ostel Salt Mine is a salt mine in Quilrin, opened in 1711 by Ansel Bra.",
        );
        let bridge = fact(
            "the Moran Bridge",
            "The Moran Bridge is a copper bridge over the river Ysk in Darnholt, built in 1911.",
        );
        assert!(
            template_similarity(&mine, &mine2) >= 0.99,
            "{}",
            template_similarity(&mine, &mine2)
        );
        assert!(
            template_similarity(&mine, &bridge) < ALIKE,
            "{}",
            template_similarity(&mine, &bridge)
        );
        assert!(template(&mine).contains("opened") && !template(&mine).contains("kessan"));
    }
}
