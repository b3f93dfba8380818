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
/// hex: each weight's name then its bytes (row-major, its own dtype), in name order.
///
/// Errors: a weight the adapters name is missing; no host buffer can be allocated.
pub fn weights_hash(model: &Llama, source_hash: &str, cfg: &TrainConfig) -> Result<String> {
    start_weights_hash(model, source_hash, cfg)?.wait()
}

/// At most this many bytes of GPU weights are copied to one page-locked snapshot and digested on
/// another thread ([`start_weights_hash`]); more (an 8B model's MLPs are ~11 GB) go through one
/// weight-sized buffer, digested in turn.
const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

/// A weights hash being made: [`weights_hash`]'s digest, running on its own thread over a host
/// snapshot of the weights, so that it overlaps the next step's training (the driver needs it only
/// when it commits the step). The weights may change once this returns.
pub struct PendingHash {
    state: Pending,
    /// Seconds the caller was held by the start (the copy).
    seconds: f64,
}

enum Pending {
    Ready(String),
    Digesting(std::thread::JoinHandle<(String, Tensor)>),
}

impl PendingHash {
    /// The hash, once its digest has finished. Errors: the digest thread panicked.
    pub fn wait(self) -> Result<String> {
        Ok(self.wait_timed()?.0)
    }

    /// [`wait`](Self::wait), with the seconds the caller was held in all (the copy and the wait).
    pub fn wait_timed(self) -> Result<(String, f64)> {
        let t = std::time::Instant::now();
        let hash = match self.state {
            Pending::Ready(h) => h,
            Pending::Digesting(handle) => {
                let (hash, snapshot) = handle
                    .join()
                    .map_err(|_| Error::Ledger("the weights hash's thread panicked".into()))?;
                SNAPSHOT.with(|s| *s.borrow_mut() = Some(snapshot));
                hash
            }
        };
        Ok((hash, self.seconds + t.elapsed().as_secs_f64()))
    }
}

/// Starts [`weights_hash`]. On a GPU (up to [`MAX_SNAPSHOT_BYTES`]) the weights are copied into one
/// page-locked snapshot here and digested on another thread; elsewhere the hash is made here.
///
/// Errors: as [`weights_hash`].
pub fn start_weights_hash(model: &Llama, source_hash: &str, cfg: &TrainConfig) -> Result<PendingHash> {
    let t = std::time::Instant::now();
    let mut keys: Vec<String> = adapter_shapes(model, &cfg.adalora)
        .iter()
        .map(|(l, p, _, _)| p.weight_key(*l))
        .collect();
    keys.sort();
    let weights: Vec<(String, Tensor)> = keys
        .into_iter()
        .map(|k| match model.weight(&k) {
            Some(w) => Ok((k, w)),
            None => Err(Error::Ledger(format!("no weight {k}"))),
        })
        .collect::<Result<_>>()?;
    let size = |w: &Tensor| w.numel() * w.kind().elt_size_in_bytes();
    let total: usize = weights.iter().map(|(_, w)| size(w)).sum();
    let state = if model.device() != Device::Cpu && total > 0 && total <= MAX_SNAPSHOT_BYTES {
        let snapshot = copy_to_snapshot(&weights, total)?;
        let spans: Vec<(String, usize, usize)> = {
            let mut at = 0;
            weights
                .iter()
                .map(|(k, w)| {
                    at += size(w);
                    (k.clone(), at - size(w), size(w))
                })
                .collect()
        };
        let source = source_hash.to_string();
        Pending::Digesting(std::thread::spawn(move || {
            let mut h = blake3::Hasher::new();
            h.update(source.as_bytes());
            // SAFETY: the snapshot is a contiguous uint8 CPU tensor of at least `total` bytes, owned
            // by this thread until it returns it, and nothing else writes it meanwhile.
            let data = unsafe { std::slice::from_raw_parts(snapshot.data_ptr() as *const u8, total) };
            for (k, at, n) in &spans {
                h.update(k.as_bytes());
                h.update_rayon(&data[*at..at + n]);
            }
            (h.finalize().to_hex().to_string(), snapshot)
        }))
    } else {
        let mut h = blake3::Hasher::new();
        h.update(source_hash.as_bytes());
        // The staging buffer is sized once, for the largest (growing it would leave each smaller
        // pinned block in libtorch's host cache).
        let largest = weights.iter().map(|(_, w)| size(w)).max();
        for (k, w) in &weights {
            h.update(k.as_bytes());
            hash_bytes(&mut h, w, largest.unwrap_or(0))?;
        }
        Pending::Ready(h.finalize().to_hex().to_string())
    };
    Ok(PendingHash {
        state,
        seconds: t.elapsed().as_secs_f64(),
    })
}

thread_local! {
    /// The page-locked host buffer GPU weights are copied through to be hashed (grown as needed):
    /// a copy into pinned memory runs at the bus's speed, one into pageable memory at a fraction
    /// of it (bench/NOTES.md item 25).
    static STAGING: RefCell<Option<Tensor>> = const { RefCell::new(None) };
    /// The page-locked snapshot of all hashed weights, while no digest holds it.
    static SNAPSHOT: RefCell<Option<Tensor>> = const { RefCell::new(None) };
}

/// Page-locked host memory of at least `bytes` bytes (pageable when none can be had), reusing
/// `slot`'s buffer when it is large enough. Errors: no host buffer can be allocated.
fn host_buffer(slot: &mut Option<Tensor>, bytes: usize) -> Result<Tensor> {
    if let Some(t) = slot.take().filter(|t| t.numel() >= bytes) {
        return Ok(t);
    }
    crate::cuda::pinned_empty(bytes as i64).or_else(|e| {
        tracing::warn!("hashing weights through pageable memory (slower): {e}");
        Ok(Tensor::f_empty([bytes as i64], (tch::Kind::Uint8, Device::Cpu))?)
    })
}

/// `weights` copied back to back into the reused page-locked snapshot (`total` bytes in all).
fn copy_to_snapshot(weights: &[(String, Tensor)], total: usize) -> Result<Tensor> {
    let snapshot = SNAPSHOT.with(|s| host_buffer(&mut s.borrow_mut(), total))?;
    let mut at = 0i64;
    for (_, w) in weights {
        at += copy_into(&snapshot, at, w).numel() as i64 * w.kind().elt_size_in_bytes() as i64;
    }
    Ok(snapshot)
}

/// Copies `w` into the bytes of `buf` (uint8, on the host) from byte `at` on, in `w`'s dtype and
/// shape; returns that view of `buf`.
fn copy_into(buf: &Tensor, at: i64, w: &Tensor) -> Tensor {
    let n = (w.numel() * w.kind().elt_size_in_bytes()) as i64;
    let mut dst = buf.narrow(0, at, n).view_dtype(w.kind()).view(w.size().as_slice());
    dst.copy_(w);
    dst
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
            let staging = host_buffer(&mut s, capacity.max(bytes))?;
            let dst = copy_into(&staging, 0, w);
            *s = Some(staging);
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
            "replaying run {} gives weights {} but the ledger recorded {} (a run replays only on \
             the kind of device and with the --base-dtype it was made with: {} here)",
            run.id,
            &now[..12],
            &last_hash[..12],
            crate::model::dtype_name(loaded.model.kind())
        )));
    }
    Ok(applied)
}
