//! A step's adapter in peft's AdaLoRA format (peft 0.21, `tuners/adalora`): a folder with
//! `adapter_config.json` and `adapter_model.safetensors` that `PeftModel.from_pretrained` loads onto
//! the weights the step was trained on, and with which it computes the step's ΔW.
//!
//! peft's layer adds `x (A ⊙ E)ᵀ Bᵀ · lora_alpha / (ranknum + 1e-5)`, A [r, in], E [r, 1],
//! B [out, r]. A step's stored factors are (A', B, s) with ΔW = B A' s, where A' already holds the
//! masked E and any null-space projection (A' = (A P) ⊙ E) and s holds alpha / (init_r + 1e-5)
//! times the merge scale. They are written as
//! - `lora_A` = the rows of A' the allocator kept (the unmasked singular values), `lora_B` = the
//!   same columns of B;
//! - `lora_E` = c for every kept row, with c = s (ranknum + 1e-5) / lora_alpha, so that peft's
//!   product is B A' s (c is 1 up to rounding unless the merge was scaled);
//! - `rank_pattern`: per module, which of the init_r ranks are kept. peft shrinks each module to its
//!   kept ranks before loading and keeps ranknum = init_r for every module with at least one (the
//!   scaling "exactly as the previous"); a module with none is resized to rank 0 and adds nothing.
//!
//! Keys are peft's: `base_model.model.model.layers.{l}.mlp.gate_proj.lora_A` (parameters, so no
//! `.weight`); `ranknum` is not saved (peft rebuilds it).
use crate::adapter::merge::Factor;
use crate::config::{AdaLoraConfig, Proj};
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What every step's adapter of a run shares: the run's AdaLoRA settings and the model it names.
pub struct Settings {
    pub adalora: AdaLoraConfig,
    /// The optimizer steps of the budget schedule (peft refuses a config without one).
    pub total_step: i64,
    /// `base_model_name_or_path`: the model the run was made from.
    pub base_model: String,
}

/// One step's adapter in peft's form.
#[derive(Debug)]
pub struct PeftAdapter {
    pub config: Value,
    /// (peft key, tensor), f32 on the CPU.
    pub tensors: Vec<(String, Tensor)>,
}

/// peft's `ranknum + 1e-5` as its layer computes it: in f32.
fn peft_denominator(init_r: i64) -> f64 {
    (init_r as f32 + 1e-5f32) as f64
}

/// The module name of a stored factor's weight key (`model.layers.3.mlp.up_proj`), with its layer
/// and projection.
///
/// Errors: bad input for a key that is not an adaptable projection's weight.
fn module_of(key: &str) -> Result<(String, usize, Proj)> {
    let (layer, proj) = Proj::parse_weight_key(key)
        .ok_or_else(|| Error::BadInput(format!("export: '{key}' is not an adapted projection")))?;
    Ok((key.trim_end_matches(".weight").to_string(), layer, proj))
}

/// Which of the `r` rows of `a` [r, in] carry a rank: the non-zero ones (a masked E zeroes its row).
fn kept_rows(a: &Tensor) -> Result<Vec<bool>> {
    let nonzero = tch::no_grad(|| a.abs().sum_dim_intlist(1, false, Kind::Float).ne(0.0));
    Ok(Vec::<bool>::try_from(nonzero.to_device(Device::Cpu))?)
}

/// `target_modules` and `layers_to_transform` for the adapted sites: the projection names and the
/// layers when every projection is adapted in the same layers (peft matches `layers.{i}.`), else
/// every module's full name and no layer list.
fn targets(sites: &[(usize, Proj)]) -> (Value, Value) {
    let mut by_proj: BTreeMap<Proj, Vec<usize>> = BTreeMap::new();
    for &(l, p) in sites {
        by_proj.entry(p).or_default().push(l);
    }
    for layers in by_proj.values_mut() {
        layers.sort_unstable();
        layers.dedup();
    }
    let first = by_proj.values().next().cloned().unwrap_or_default();
    if by_proj.values().all(|l| *l == first) {
        let names: Vec<&str> = by_proj.keys().map(|p| p.name()).collect();
        return (json!(names), json!(first));
    }
    let mut full: Vec<String> = sites
        .iter()
        .map(|&(l, p)| p.weight_key(l).trim_end_matches(".weight").to_string())
        .collect();
    full.sort();
    full.dedup();
    (json!(full), Value::Null)
}

/// `adapter_config.json` for a step whose modules keep the ranks of `rank_pattern` (module key
/// `….lora_E` → init_r booleans), adapted at `sites`.
pub fn config_json(s: &Settings, sites: &[(usize, Proj)], rank_pattern: &BTreeMap<String, Vec<bool>>) -> Value {
    let c = &s.adalora;
    let (target_modules, layers) = targets(sites);
    let layers_pattern = if layers.is_null() { Value::Null } else { json!("layers") };
    // peft refuses a schedule with no budgeting phase; the value only matters for training.
    let total_step = s.total_step.max(c.tinit + c.tfinal + 1);
    json!({
        "peft_type": "ADALORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": s.base_model,
        "inference_mode": true,
        "target_modules": target_modules,
        "layers_to_transform": layers,
        "layers_pattern": layers_pattern,
        // peft's default: AdaLoRA ignores `r` (and warns when it is not 8); init_r is the rank.
        "r": 8,
        "init_r": c.init_r,
        "target_r": c.target_r,
        "lora_alpha": c.lora_alpha,
        // The exported factors are the merged update: no dropout, whatever the run trained with.
        "lora_dropout": 0.0,
        "tinit": c.tinit,
        "tfinal": c.tfinal,
        "deltaT": c.delta_t,
        "beta1": c.beta1,
        "beta2": c.beta2,
        "orth_reg_weight": c.orth_reg_weight,
        "total_step": total_step,
        "rank_pattern": rank_pattern,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "modules_to_save": null,
    })
}

/// The peft form of one step's stored `factors` (see the module's header for the mapping).
///
/// Errors: bad input for a factor of another rank than init_r or on a weight that is no projection,
/// or for settings with a zero alpha.
pub fn from_factors(s: &Settings, factors: &[Factor]) -> Result<PeftAdapter> {
    let c = &s.adalora;
    if c.lora_alpha <= 0.0 {
        return Err(Error::BadInput("export: lora_alpha must be positive".into()));
    }
    let mut tensors = Vec::with_capacity(3 * factors.len());
    let mut rank_pattern = BTreeMap::new();
    let mut sites = Vec::with_capacity(factors.len());
    for f in factors {
        let (module, layer, proj) = module_of(&f.key)?;
        if f.a.size().first() != Some(&c.init_r) {
            return Err(Error::BadInput(format!(
                "export: {} has rank {:?}, the run's init_r is {}",
                f.key,
                f.a.size().first(),
                c.init_r
            )));
        }
        let kept = kept_rows(&f.a)?;
        let idx: Vec<i64> = (0..kept.len() as i64).filter(|&i| kept[i as usize]).collect();
        let idx = Tensor::from_slice(&idx);
        let e = f.scale * peft_denominator(c.init_r) / c.lora_alpha;
        let (a, b) = tch::no_grad(|| {
            (
                f.a.to_kind(Kind::Float).index_select(0, &idx).contiguous(),
                f.b.to_kind(Kind::Float).index_select(1, &idx).contiguous(),
            )
        });
        let e = Tensor::full([idx.size()[0], 1], e, (Kind::Float, Device::Cpu));
        let key = |part: &str| format!("base_model.model.{module}.{part}");
        tensors.push((key("lora_A"), a));
        tensors.push((key("lora_B"), b));
        tensors.push((key("lora_E"), e));
        rank_pattern.insert(format!("{module}.lora_E"), kept);
        sites.push((layer, proj));
    }
    Ok(PeftAdapter {
        config: config_json(s, &sites, &rank_pattern),
        tensors,
    })
}

/// ΔW of every module of an adapter read back from its peft form, as peft's layer computes it:
/// `B (A ⊙ E) · lora_alpha / (ranknum + 1e-5)`, ranknum = init_r for a module with a kept rank.
/// Keyed by the weight's name (`model.layers.0.mlp.up_proj.weight`).
pub fn delta_weights(config: &Value, tensors: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let bad = |what: &str| Error::BadInput(format!("peft adapter: {what}"));
    let alpha = config["lora_alpha"].as_f64().ok_or_else(|| bad("no lora_alpha"))?;
    let init_r = config["init_r"].as_i64().ok_or_else(|| bad("no init_r"))?;
    let mut out = BTreeMap::new();
    for (name, a) in tensors {
        let Some(module) = name
            .strip_prefix("base_model.model.")
            .and_then(|n| n.strip_suffix(".lora_A"))
        else {
            continue;
        };
        let get = |part: &str| {
            tensors
                .get(&format!("base_model.model.{module}.{part}"))
                .ok_or_else(|| bad(&format!("{module} has no {part}")))
        };
        let (b, e) = (get("lora_B")?, get("lora_E")?);
        let d = tch::no_grad(|| b.matmul(&(a * e)) * (alpha / peft_denominator(init_r)));
        out.insert(format!("{module}.weight"), d);
    }
    Ok(out)
}

/// Every committed step of a run up to the exported one, to write as peft adapters beside the
/// weights (`export --adapters`).
pub struct Source {
    pub run: String,
    pub settings: Settings,
    /// The folder of stored factors (the ledger's deltas folder).
    pub deltas: PathBuf,
    /// (step index, hash of its factors file), in order.
    pub steps: Vec<(i64, String)>,
}

/// The note written beside the adapters: what each one applies on.
fn readme(src: &Source) -> String {
    format!(
        "# AdaLoRA adapters of injector run {run}\n\n\
         `step-<N>/` holds step N's adapter in peft's AdaLoRA format (`PeftModel.from_pretrained`).\n\
         A step's adapter was trained on, and applies on, the weights as they were before that step:\n\
         step 0's on the base model, step N's on the weights after step N-1\n\
         (`injector export {run} --step <N-1> --out DIR`; `--step -1` exports the base).\n\
         On those weights it gives the weights after step N (`merge_and_unload`).\n",
        run = src.run
    )
}

/// Writes the adapter of every step of `src` into `dir` (created) as `step-<N>/`, one step's
/// factors in memory at a time, with a README saying what each applies on. Returns how many.
///
/// Errors: an unreadable factors file or one that does not match its hash, or an I/O error.
pub fn write_steps(dir: &Path, src: &Source) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("README.md"), readme(src))?;
    for (step, hash) in &src.steps {
        let factors = crate::adapter::merge::load(&src.deltas, hash)?;
        let adapter = from_factors(&src.settings, &factors)?;
        let sub = dir.join(format!("step-{step}"));
        std::fs::create_dir(&sub)?;
        let applies_on = if *step == 0 {
            "base".to_string()
        } else {
            format!("step {}", step - 1)
        };
        let step_s = step.to_string();
        let meta = [
            ("injector.run", src.run.as_str()),
            ("injector.step", step_s.as_str()),
            ("injector.applies_on", applies_on.as_str()),
        ];
        write(&sub, &adapter, &meta)?;
    }
    Ok(src.steps.len())
}

/// Writes `adapter` into `dir` (which exists) as `adapter_config.json` and
/// `adapter_model.safetensors`, with `metadata` in the safetensors header beside `format: pt`.
///
/// Errors: an I/O error.
pub fn write(dir: &Path, adapter: &PeftAdapter, metadata: &[(&str, &str)]) -> Result<()> {
    let text = serde_json::to_string_pretty(&adapter.config).map_err(|e| Error::BadInput(format!("export: {e}")))?;
    std::fs::write(dir.join("adapter_config.json"), text + "\n")?;
    let mut meta = vec![("format", "pt")];
    meta.extend_from_slice(metadata);
    super::safetensors::write(&dir.join("adapter_model.safetensors"), &adapter.tensors, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            adalora: AdaLoraConfig {
                init_r: 3,
                lora_alpha: 8.0,
                ..AdaLoraConfig::default()
            },
            total_step: 10,
            base_model: "m".into(),
        }
    }

    /// A factor on `model.layers.{l}.mlp.up_proj` [out 4, in 5] of rank 3 whose row `masked` is zero.
    fn factor(l: usize, masked: i64, scale: f64) -> Factor {
        tch::manual_seed(l as i64);
        let a = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        let _ = a.get(masked).zero_();
        Factor {
            key: Proj::Up.weight_key(l),
            a,
            b: Tensor::randn([4, 3], (Kind::Float, Device::Cpu)),
            scale,
            rank: 2,
        }
    }

    #[test]
    fn peft_form_keeps_the_unmasked_ranks_and_gives_the_same_delta() {
        let s = settings();
        let scale = 8.0 / (3.0 + 1e-5) * 0.5; // a merge scale of 0.5
        let fs = [factor(0, 1, scale), factor(2, 0, scale)];
        let p = from_factors(&s, &fs).unwrap();
        let rp = &p.config["rank_pattern"];
        assert_eq!(rp["model.layers.0.mlp.up_proj.lora_E"], json!([true, false, true]));
        assert_eq!(rp["model.layers.2.mlp.up_proj.lora_E"], json!([false, true, true]));
        assert_eq!(p.config["target_modules"], json!(["up_proj"]));
        assert_eq!(p.config["layers_to_transform"], json!([0, 2]));
        let t: BTreeMap<String, Tensor> = p.tensors.into_iter().collect();
        assert_eq!(t["base_model.model.model.layers.0.mlp.up_proj.lora_A"].size(), [2, 5]);
        assert_eq!(t["base_model.model.model.layers.0.mlp.up_proj.lora_B"].size(), [4, 2]);
        assert_eq!(t["base_model.model.model.layers.0.mlp.up_proj.lora_E"].size(), [2, 1]);
        let e = t["base_model.model.model.layers.0.mlp.up_proj.lora_E"].double_value(&[0, 0]);
        assert!((e - 0.5).abs() < 1e-6, "E carries the merge scale: {e}");
        let d = delta_weights(&p.config, &t).unwrap();
        for f in &fs {
            let diff = (&d[&f.key] - f.delta_weight()).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{}: {diff}", f.key);
        }
    }

    #[test]
    fn sites_in_different_layers_per_projection_are_named_in_full() {
        let (names, layers) = targets(&[(0, Proj::Up), (1, Proj::Up), (1, Proj::Gate)]);
        assert_eq!(
            names,
            json!([
                "model.layers.0.mlp.up_proj",
                "model.layers.1.mlp.gate_proj",
                "model.layers.1.mlp.up_proj"
            ])
        );
        assert!(layers.is_null());
        let (names, layers) = targets(&[(1, Proj::Down), (1, Proj::Q)]);
        assert_eq!((names, layers), (json!(["q_proj", "down_proj"]), json!([1])));
    }

    #[test]
    fn a_factor_of_another_rank_or_site_is_refused() {
        let s = settings();
        let mut f = factor(0, 0, 1.0);
        f.key = "model.embed_tokens.weight".into();
        assert!(from_factors(&s, &[f]).unwrap_err().is_bad_input());
        let mut f = factor(0, 0, 1.0);
        f.a = Tensor::ones([4, 5], (Kind::Float, Device::Cpu));
        assert!(from_factors(&s, &[f]).unwrap_err().is_bad_input());
    }
}
