//! A run's weights as state: the hash of every weight an adapter can change, and the replay of
//! committed steps onto the base (`base + Σ stored deltas`), checked against the hash the ledger
//! recorded. Resume, `query --run` and `probe --run` rebuild a run's weights this way.
use super::step::adapter_shapes;
use crate::adapter::merge;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::ledger::{Ledger, RunRow};
use crate::model::{Llama, Loaded};

/// blake3 of the model source and every weight an adapter can change (all others never change), as
/// hex.
pub fn weights_hash(model: &Llama, source_hash: &str, cfg: &TrainConfig) -> Result<String> {
    let mut keys: Vec<String> = adapter_shapes(model, &cfg.adalora)
        .iter()
        .map(|(l, p, _, _)| p.weight_key(*l))
        .collect();
    keys.sort();
    let mut h = blake3::Hasher::new();
    h.update(source_hash.as_bytes());
    for k in keys {
        let w = model
            .weight(&k)
            .ok_or_else(|| Error::Ledger(format!("no weight {k}")))?;
        let w = w.to_device(tch::Device::Cpu).contiguous();
        let mut buf = vec![0u8; w.numel() * w.kind().elt_size_in_bytes()];
        w.copy_data_u8(&mut buf, w.numel());
        h.update(k.as_bytes());
        // Same digest as `update`, on every core.
        h.update_rayon(&buf);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Merges the committed steps of `run` (up to step `upto`, all when `None`) onto the loaded base
/// model and checks the resulting hash against the ledger's. Returns the number of steps applied.
/// Errors: a missing or unreadable factors file, or a hash that differs (the ledger and the
/// stored factors disagree).
pub fn replay(ledger: &Ledger, run: &RunRow, loaded: &Loaded, cfg: &TrainConfig, upto: Option<i64>) -> Result<usize> {
    let steps = ledger.steps(&run.id)?;
    let dir = ledger.deltas_dir();
    let mut applied = 0;
    let mut last_hash = run.base_weights_hash.clone();
    for s in steps.iter().filter(|s| upto.is_none_or(|u| s.idx <= u)) {
        merge::merge(&loaded.model, &merge::load(&dir, &s.delta_file)?)?;
        applied += 1;
        last_hash = s.weights_hash.clone();
    }
    let now = weights_hash(&loaded.model, &loaded.source_hash, cfg)?;
    if now != last_hash {
        return Err(Error::Ledger(format!(
            "replaying run {} gives weights {} but the ledger recorded {}",
            run.id,
            &now[..12],
            &last_hash[..12]
        )));
    }
    Ok(applied)
}
