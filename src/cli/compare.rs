//! `injector compare DIR --strategy a,b,...`: the same facts, base, seed and hyper-parameters under
//! several strategies, into one ledger, then the comparison report. With several GPUs visible, one
//! process per GPU (or `--jobs N` processes on any device); otherwise one strategy after another in
//! this process. Finished runs are taken from the ledger.
use super::progress::Bar;
use super::train_args::TrainArgs;
use super::Global;
use clap::Args;
use injector::config::{RunConfig, Strategy};
use injector::inject;
use injector::knowledge::load_dir;
use injector::ledger::Ledger;
use injector::report::{self, data::RunData, num};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The knowledge directory (or one YAML file).
    pub dir: PathBuf,
    /// Comma-separated strategies: sequential, mixed, batch:K, replay:K, spaced:K.
    #[arg(long, default_value = "sequential,mixed")]
    pub strategy: String,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    /// Strategies to run at once, each in its own `injector run` process writing to the same
    /// ledger. Default: one per visible GPU when several are visible and --device is auto or cuda
    /// (strategy i on GPU i mod N), otherwise 1 (one after another in this process).
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// One line on stderr when a strategy's run is done (in this process or a child).
fn announce(run: &str, strategy: &str, new_steps: usize, seconds: f64) {
    eprintln!("{run} ({strategy}): {new_steps} new steps, {seconds:.0}s");
}

pub fn run(a: CompareArgs, g: &Global) -> anyhow::Result<()> {
    let strategies: Vec<Strategy> = a.strategy.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let template = g.chat_template.as_deref();
    let device = injector::device::parse_device(&g.device)?;
    let recorded = injector::model::dtype_to_record(&g.base_dtype, device)?;
    let configs: Vec<RunConfig> = strategies
        .iter()
        .map(|s| {
            let mut c = a.train.run_config(Some(*s), g.seed)?;
            c.set_chat_template(template);
            c.base_dtype = recorded.clone();
            c.validate().map(|_| c)
        })
        .collect::<Result<_, _>>()?;
    let knowledge = load_dir(&a.dir)?;
    g.check_outputs()?;
    let model_path = g.model_path();
    let gpus = tch::Cuda::device_count() as usize;
    let per_gpu = gpus > 1 && matches!(g.device.as_str(), "auto" | "cuda");
    if a.jobs == Some(0) {
        return Err(injector::Error::BadInput("--jobs: expected at least 1".into()).into());
    }
    let jobs = a.jobs.unwrap_or(if per_gpu { gpus } else { 1 });
    let mut run_ids = Vec::new();
    if jobs > 1 && configs.len() > 1 {
        // Child processes, `jobs` at a time, all writing to the same WAL ledger. Each checks its
        // model before it creates the ledger, as `run` does, so bad input leaves nothing behind.
        let exe = std::env::current_exe()?;
        for chunk in configs.chunks(jobs) {
            let children: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let device = if per_gpu {
                        format!("cuda:{}", i % gpus)
                    } else {
                        g.device.clone()
                    };
                    let mut cmd = Command::new(&exe);
                    if !per_gpu && std::env::var_os("OMP_NUM_THREADS").is_none() {
                        // CPU processes side by side share the cores instead of each taking all.
                        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                        cmd.env("OMP_NUM_THREADS", (cores / jobs).max(1).to_string());
                    }
                    if let Some(t) = template {
                        cmd.args(["--chat-template", t]);
                    }
                    cmd.args(["run", &a.dir.display().to_string(), "--json", "-q"])
                        .args(["--config-json", &c.to_json()])
                        .args(["--device", &device, "--base-dtype", &g.base_dtype])
                        .args(["--ledger", &g.ledger.display().to_string()])
                        .args([
                            "--model",
                            &model_path.display().to_string(),
                            "--reports",
                            &g.reports.display().to_string(),
                        ])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                })
                .collect();
            // All of the chunk are running now; collect them in order.
            for ch in children {
                let out = ch?.wait_with_output()?;
                if !out.status.success() {
                    let msg = String::from_utf8_lossy(&out.stderr);
                    let msg = msg.trim().trim_start_matches("error: ").to_string();
                    if out.status.code() == Some(2) {
                        // The child's bad input is this command's bad input (exit 2).
                        return Err(injector::Error::BadInput(msg).into());
                    }
                    anyhow::bail!("a strategy's run failed: {msg}");
                }
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let run = v["run"].as_str().unwrap_or_default().to_string();
                if !g.quiet && !a.json {
                    announce(
                        &run,
                        v["strategy"].as_str().unwrap_or_default(),
                        v["new_steps"].as_u64().unwrap_or_default() as usize,
                        v["seconds"].as_f64().unwrap_or_default(),
                    );
                }
                run_ids.push(run);
            }
        }
    } else {
        let mut ledger: Option<Ledger> = None;
        for c in &configs {
            // A fresh base for every strategy; the first load also checks the model before the
            // ledger is created.
            let loaded = g.load(&model_path, device, &g.base_dtype, template)?;
            c.check_layers(loaded.model.cfg.num_hidden_layers)?;
            inject::plan::check_fit(&knowledge.facts, &loaded)?;
            if ledger.is_none() {
                ledger = Some(Ledger::open(&g.ledger)?);
            }
            let ledger = ledger.as_mut().expect("opened above");
            let mut bar = Bar::new(g.quiet, a.json);
            let out = inject::run(
                ledger,
                &loaded,
                &model_path.display().to_string(),
                &knowledge,
                c,
                &mut bar,
            )?;
            if !g.quiet && !a.json {
                announce(&out.run, &out.strategy, out.new_steps, out.seconds);
            }
            run_ids.push(out.run);
        }
    }
    let ledger = Ledger::open(&g.ledger)?;
    let id = blake3::hash(run_ids.join(",").as_bytes()).to_hex()[..8].to_string();
    ledger.add_comparison(&id, &run_ids)?;
    let page = report::write_compare(&ledger, &g.reports, &id)?;
    report::write_index(&ledger, &g.reports)?;
    let data: Vec<RunData> = run_ids
        .iter()
        .map(|r| RunData::load(&ledger, r))
        .collect::<Result<_, _>>()?;
    if a.json {
        let rows: Vec<_> = data
            .iter()
            .map(|d| serde_json::json!({"run": d.run.id, "strategy": d.run.strategy, "summary": d.summary()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"comparison": id, "report": page, "runs": rows}))?
        );
        return Ok(());
    }
    println!(
        "{:<12} {:<14} {:>7} {:>8} {:>6} {:>8} {:>9} {:>8} {:>6} {:>9}",
        "strategy", "run", "recall", "general", "free", "locality", "1st 1/4", "seconds", "opt", "tokens"
    );
    for d in &data {
        let s = d.summary();
        println!(
            "{:<12} {:<14} {:>7} {:>8} {:>6} {:>8} {:>9} {:>8.0} {:>6} {:>9}",
            d.run.strategy,
            d.run.id,
            num(Some(s.final_recall)),
            num(s.final_general),
            num(s.final_free_recall),
            num(s.locality),
            num(Some(s.first_quarter_recall)),
            s.wall_seconds,
            s.optimizer_steps,
            s.tokens
        );
    }
    println!("report: {}", page.display());
    Ok(())
}
