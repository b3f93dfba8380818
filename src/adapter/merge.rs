//! Merging an adapter into the base weights, and the stored form of a step's update (its low-rank
//! factors), so that any state is `base + Σ deltas` and replays are exact.
use super::adalora::AdaLora;
use crate::error::{Error, Result};
use crate::model::Llama;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The low-rank update of one weight: ΔW = B · A · scale, A already multiplied by the masked E.
pub struct Factor {
    pub key: String,
    /// [r, in]
    pub a: Tensor,
    /// [out, r]
    pub b: Tensor,
    pub scale: f64,
    pub rank: i64,
}

impl Factor {
    /// Whether every value of both factors (and the scale) is finite.
    pub fn is_finite(&self) -> bool {
        self.scale.is_finite()
            && [&self.a, &self.b]
                .iter()
                .all(|t| t.isfinite().all().int64_value(&[]) != 0)
    }

    /// ΔW = scale · B·A: [out, in], fp32, on the factors' device.
    pub fn delta_weight(&self) -> Tensor {
        self.delta_weight_on(self.a.device())
    }

    /// [`delta_weight`](Self::delta_weight) computed on `device`: the factors (r·(in + out) values)
    /// travel there, not the product (in·out values). On a GPU this takes the merge from ~0.07 to
    /// ~0.02 s a step at 135M (bench/NOTES.md item 28).
    pub fn delta_weight_on(&self, device: tch::Device) -> Tensor {
        tch::no_grad(|| self.b.to_device(device).matmul(&self.a.to_device(device)) * self.scale)
    }
}

/// The factors of a trained adapter, on the CPU.
pub fn factors(ad: &AdaLora) -> Vec<Factor> {
    let scale = ad.scale();
    let ranks: std::collections::HashMap<String, i64> = ad.rank_pattern().into_iter().collect();
    tch::no_grad(|| {
        let mut out = Vec::new();
        for (gi, g) in ad.groups.iter().enumerate() {
            let ae = (ad.effective_a(gi) * &g.e).to_device(tch::Device::Cpu);
            let b = g.b.to_device(tch::Device::Cpu);
            for (slot, &l) in g.layers.iter().enumerate() {
                let key = g.proj.weight_key(l);
                let rank = ranks.get(&key).copied().unwrap_or(0);
                out.push(Factor {
                    a: ae.get(slot as i64).copy(),
                    b: b.get(slot as i64).copy(),
                    scale,
                    rank,
                    key,
                });
            }
        }
        out
    })
}

/// W += ΔW for every factor, in fp32 arithmetic (see [`Llama::add_to_weight`]), ΔW made on the
/// weights' device when `on_device` (the run's `merge_on_device`: its factors travel, not the
/// products), else on the factors' device (the host), as runs recorded before schema 6 did.
pub fn merge(model: &Llama, factors: &[Factor], on_device: bool) -> Result<()> {
    for f in factors {
        let delta = if on_device {
            f.delta_weight_on(model.device())
        } else {
            f.delta_weight()
        };
        model.add_to_weight(&f.key, &delta)?;
    }
    Ok(())
}

/// [`save`] on its own thread, so that the write overlaps the next step's training (the driver
/// needs the file's hash only when it commits the step). The thread writes its own host copy of
/// the factors.
pub fn save_in_background(dir: &Path, factors: &[Factor]) -> Saving {
    let host = |t: &Tensor| match t.device() {
        tch::Device::Cpu => t.copy(),
        _ => t.to_device(tch::Device::Cpu),
    };
    let host: Vec<Factor> = factors
        .iter()
        .map(|f| Factor {
            key: f.key.clone(),
            a: host(&f.a),
            b: host(&f.b),
            scale: f.scale,
            rank: f.rank,
        })
        .collect();
    let dir = dir.to_path_buf();
    Saving(Some(std::thread::spawn(move || save(&dir, &host))))
}

/// A factors file being written by [`save_in_background`]. Dropped unjoined (an error elsewhere),
/// it still waits for the write, so that the process never exits mid-write and leaves the
/// temporary file behind.
pub struct Saving(Option<std::thread::JoinHandle<Result<String>>>);

impl Saving {
    /// The file's hash, once written. Errors: as [`save`]; the thread panicked.
    pub fn join(mut self) -> Result<String> {
        let handle = self.0.take().expect("joined once");
        handle
            .join()
            .map_err(|_| Error::Ledger("the thread writing a step's factors panicked".into()))?
    }
}

impl Drop for Saving {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Writes factors to `dir/<blake3>.safetensors` (written to a temporary name, then renamed);
/// returns the hash.
///
/// Errors: [`Error::Write`] naming `dir` (a full disk, a file-size limit); the temporary file is
/// removed.
pub fn save(dir: &Path, factors: &[Factor]) -> Result<String> {
    // Numbered within the process: saves on other threads never share a temporary file.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}.safetensors", std::process::id()));
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for f in factors {
        named.push((format!("{}.A", f.key), f.a.shallow_clone()));
        named.push((format!("{}.B", f.key), f.b.shallow_clone()));
        named.push((format!("{}.scale", f.key), Tensor::from_slice(&[f.scale])));
    }
    let write = || -> Result<String> {
        std::fs::create_dir_all(dir)?;
        Tensor::write_safetensors(&named, &tmp)?;
        let hash = blake3::hash(&std::fs::read(&tmp)?).to_hex().to_string();
        std::fs::rename(&tmp, path_of(dir, &hash))?;
        Ok(hash)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Write {
            path: dir.to_path_buf(),
            msg: format!("cannot write a step's factors: {e}"),
        }
    })
}

pub fn path_of(dir: &Path, hash: &str) -> PathBuf {
    dir.join(format!("{hash}.safetensors"))
}

/// Reads the factors stored under `hash`, checking the content against the hash.
pub fn load(dir: &Path, hash: &str) -> Result<Vec<Factor>> {
    let path = path_of(dir, hash);
    let bytes = std::fs::read(&path).map_err(|e| Error::Ledger(format!("{}: {e}", path.display())))?;
    if blake3::hash(&bytes).to_hex().as_str() != hash {
        return Err(Error::Ledger(format!(
            "{}: content does not match its hash",
            path.display()
        )));
    }
    let tensors = Tensor::read_safetensors(&path)?;
    let mut by_key: std::collections::BTreeMap<String, (Option<Tensor>, Option<Tensor>, f64)> = Default::default();
    for (name, t) in tensors {
        let (key, part) = name
            .rsplit_once('.')
            .ok_or_else(|| Error::Ledger(format!("bad factor name {name}")))?;
        let e = by_key.entry(key.to_string()).or_insert((None, None, 0.0));
        match part {
            "A" => e.0 = Some(t),
            "B" => e.1 = Some(t),
            "scale" => e.2 = t.double_value(&[0]),
            _ => return Err(Error::Ledger(format!("bad factor name {name}"))),
        }
    }
    by_key
        .into_iter()
        .map(|(key, (a, b, scale))| match (a, b) {
            (Some(a), Some(b)) => {
                let rank = tch::no_grad(|| a.abs().sum_dim_intlist(1, false, Kind::Float).ne(0.0).sum(Kind::Int64))
                    .int64_value(&[]);
                Ok(Factor { key, a, b, scale, rank })
            }
            _ => Err(Error::Ledger(format!("{key}: incomplete factors"))),
        })
        .collect()
}
