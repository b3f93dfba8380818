//! A run's weights as state: the hash of every weight an adapter can change, and the replay of
//! committed steps onto the base (`base + Σ stored deltas`), checked against the hash the ledger
//! recorded. Resume, `query --run` and `probe --run` rebuild a run's weights this way.
use super::step::adapter_shapes;
use crate::adapter::merge;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::ledger::{Ledger, RunRow};
use crate::model::{Llama, Loaded};
use tch::{Device, Tensor};

/// blake3 of the model source and every weight an adapter can change (all others never change), as
/// hex: the source hash, then per weight (sorted by key) its key and its bytes in memory order.
/// On a GPU the weights come to the host in one copy (flattened and concatenated on the device), not
/// one synchronising copy each; the digest is the same.
/// Errors: a weight the adapter shapes name but the model lacks (a ledger error).
pub fn weights_hash(model: &Llama, source_hash: &str, cfg: &TrainConfig) -> Result<String> {
    let mut keys: Vec<String> = adapter_shapes(model, &cfg.adalora)
        .iter()
        .map(|(l, p, _, _)| p.weight_key(*l))
        .collect();
    keys.sort();
    let weights: Vec<Tensor> = keys
        .iter()
        .map(|k| model.weight(k).ok_or_else(|| Error::Ledger(format!("no weight {k}"))))
        .collect::<Result<_>>()?;
    let one_kind = weights.windows(2).all(|w| w[0].kind() == w[1].kind());
    let host: Vec<Tensor> = if model.device().is_cuda() && one_kind && !weights.is_empty() {
        let flat: Vec<Tensor> = weights.iter().map(|w| w.reshape([-1])).collect();
        let all = Tensor::cat(&flat, 0).to_device(Device::Cpu);
        let mut at = 0;
        weights
            .iter()
            .map(|w| {
                let n = w.numel() as i64;
                at += n;
                all.narrow(0, at - n, n)
            })
            .collect()
    } else {
        weights.iter().map(|w| w.to_device(Device::Cpu).contiguous()).collect()
    };
    let mut h = blake3::Hasher::new();
    h.update(source_hash.as_bytes());
    for (k, w) in keys.iter().zip(&host) {
        h.update(k.as_bytes());
        // Same digest as `update`, on every core.
        h.update_rayon(host_bytes(w));
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The bytes of a contiguous host tensor, borrowed.
fn host_bytes(t: &Tensor) -> &[u8] {
    assert!(t.device() == Device::Cpu && t.is_contiguous());
    let len = t.numel() * t.kind().elt_size_in_bytes();
    if len == 0 {
        return &[];
    }
    // SAFETY: `t` is a contiguous CPU tensor of `len` bytes from its data pointer, and the slice
    // borrows `t`, so the storage outlives it; nothing writes to it while it is hashed.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::inject::step::tests::tiny_model;

    /// The digest of [`weights_hash`] is the one of hashing each weight's bytes as copied out one by
    /// one (the first implementation, which every recorded ledger hash came from).
    #[test]
    fn weights_hash_is_the_digest_of_each_weights_bytes() {
        let model = tiny_model();
        let train = TrainConfig::default();
        let mut keys: Vec<String> = adapter_shapes(&model, &train.adalora)
            .iter()
            .map(|(l, p, _, _)| p.weight_key(*l))
            .collect();
        keys.sort();
        let mut h = blake3::Hasher::new();
        h.update(b"src");
        for k in &keys {
            let w = model.weight(k).unwrap().to_device(Device::Cpu).contiguous();
            let mut buf = vec![0u8; w.numel() * w.kind().elt_size_in_bytes()];
            w.copy_data_u8(&mut buf, w.numel());
            h.update(k.as_bytes());
            h.update(&buf);
        }
        assert_eq!(
            weights_hash(&model, "src", &train).unwrap(),
            h.finalize().to_hex().to_string()
        );
    }
}
