//! A run's weights as state: the hash of every weight an adapter can change, and the replay of
//! committed steps onto the base (`base + Σ stored deltas`), checked against the hash the ledger
//! recorded. Resume, `query --run` and `probe --run` rebuild a run's weights this way.
use super::step::adapter_shapes;
use crate::adapter::merge;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::ledger::{Ledger, RunRow};
use crate::model::{Llama, Loaded};
use std::cell::RefCell;
use tch::{Device, Tensor};

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
    let weights: Vec<(String, Tensor)> = keys
        .into_iter()
        .map(|k| match model.weight(&k) {
            Some(w) => Ok((k, w)),
            None => Err(Error::Ledger(format!("no weight {k}"))),
        })
        .collect::<Result<_>>()?;
    // The staging buffer is sized once, for the largest (growing it would leave each smaller
    // pinned block in libtorch's host cache).
    let largest = weights.iter().map(|(_, w)| w.numel() * w.kind().elt_size_in_bytes()).max();
    for (k, w) in &weights {
        h.update(k.as_bytes());
        hash_bytes(&mut h, w, largest.unwrap_or(0))?;
    }
    Ok(h.finalize().to_hex().to_string())
}

thread_local! {
    /// The page-locked host buffer GPU weights are copied through to be hashed (grown as needed):
    /// a copy into pinned memory runs at the bus's speed, one into pageable memory at a fraction
    /// of it (bench/NOTES.md item 25).
    static STAGING: RefCell<Option<Tensor>> = const { RefCell::new(None) };
}

/// Adds the bytes of `w` (row-major, its own dtype) to `h`: on the CPU read in place, from a GPU
/// through [`STAGING`], allocated with at least `capacity` bytes. Errors: no host buffer can be allocated.
fn hash_bytes(h: &mut blake3::Hasher, w: &Tensor, capacity: usize) -> Result<()> {
    let bytes = w.numel() * w.kind().elt_size_in_bytes();
    if bytes == 0 {
        return Ok(());
    }
    let host = if w.device() == Device::Cpu {
        w.contiguous()
    } else {
        STAGING.with(|s| -> Result<Tensor> {
            let mut s = s.borrow_mut();
            if s.as_ref().is_none_or(|t| t.numel() < bytes) {
                let size = capacity.max(bytes) as i64;
                *s = Some(crate::cuda::pinned_empty(size).or_else(|e| {
                    tracing::warn!("hashing weights through pageable memory (slower): {e}");
                    Tensor::f_empty([size], (tch::Kind::Uint8, Device::Cpu))
                })?);
            }
            let staging = s.as_ref().expect("allocated above");
            let mut dst = staging.narrow(0, 0, bytes as i64).view_dtype(w.kind()).view(w.size().as_slice());
            dst.copy_(w);
            Ok(dst)
        })?
    };
    // SAFETY: `host` is a contiguous CPU tensor of `bytes` bytes that lives, unwritten, to the end of
    // this function (the staging buffer is only written by the next call on this thread).
    let data = unsafe { std::slice::from_raw_parts(host.data_ptr() as *const u8, bytes) };
    // Same digest as `update`, on every core.
    h.update_rayon(data);
    Ok(())
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
        merge::merge(&loaded.model, &merge::load(&dir, &s.delta_file)?, run.merge_on_device)?;
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
