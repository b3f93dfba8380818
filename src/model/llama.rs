//! Llama-family decoder on tch: RMSNorm, RoPE (theta, llama3 scaling), grouped-query attention through
//! `scaled_dot_product_attention`, SwiGLU MLP, tied or untied embeddings, optional qkv bias (Qwen2).
//!
//! Paper: Touvron et al., "LLaMA" (arXiv:2302.13971); reference implementation: Hugging Face
//! transformers `models/llama/modeling_llama.py`. Field names follow the checkpoint keys.
//!
//! The base weights live in one frozen `VarStore`; training code adds low-rank updates through the
//! [`Adapter`] trait, so `forward` stays `&self` and the type system says what trains.
use super::config::Config;
use crate::error::{Error, Result};
use std::collections::HashMap;
use tch::{nn, Device, Kind, Tensor};

pub use crate::config::Proj;

/// A low-rank (or any) additive update to the projections: `y = W x + delta(x)`.
pub trait Adapter {
    /// The extra output of projection `proj` of layer `layer` for input `x: [.., in] -> [.., out]`.
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor>;

    /// Called once at the start of each forward with the activations' kind: an adapter whose
    /// per-layer factors come from stacked parameters can derive them all at once here (one kernel
    /// per tensor, one gradient kernel back, instead of one per layer) and return the adapter that
    /// serves this forward's `delta` calls.
    fn prepare(&self, _kind: Kind) -> Option<Box<dyn Adapter + '_>> {
        None
    }

    /// Whether this adapter adds nothing (the base model alone): such forwards may replay a graph
    /// captured on the base weights ([`Llama::hidden_base`]).
    fn is_none(&self) -> bool {
        false
    }
}

/// The base model alone.
pub struct NoAdapter;

impl Adapter for NoAdapter {
    fn delta(&self, _: usize, _: Proj, _: &Tensor) -> Option<Tensor> {
        None
    }

    fn is_none(&self) -> bool {
        true
    }
}

/// Per-layer key/value cache for generation, kept outside the model.
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
}

impl Cache {
    pub fn new(cfg: &Config) -> Self {
        Cache {
            kv: (0..cfg.num_hidden_layers).map(|_| None).collect(),
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.kv
            .first()
            .and_then(|e| e.as_ref())
            .map(|(k, _)| k.size()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A key/value cache of fixed shape, for decoding steps that a CUDA graph can capture once and
/// replay: per layer K and V of [b, kv_heads, cap, head_dim], the absolute position the next token
/// is written at (int64 [1], on the device, advanced in place) and each row's left padding (int64
/// [b]). A step writes its token's K and V at `pos` and row i attends to positions `pad[i] ..= pos`,
/// so every step has the same shapes and reads its position from the device. Positions past `pos`
/// hold stale values that the mask hides.
pub struct FixedCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// The absolute position of the next token, int64 [1].
    pub pos: Tensor,
    pad: Tensor,
    /// 0..cap, int64 [1, 1, cap]: the key positions the mask compares against.
    keys: Tensor,
}

impl FixedCache {
    /// The cache a prefill of `t` positions left (its K and V copied to the front), `cap` ≥ t
    /// positions in all, the next token at position t. `pad`: int64 [b], each row's left padding.
    ///
    /// Errors: an empty cache (no prefill), or `cap` below the prefill's length.
    pub fn from_prefill(cache: &Cache, pad: &Tensor, cap: i64) -> Result<Self> {
        let t = cache.len();
        if t == 0 || cap < t {
            return Err(Error::Torch(tch::TchError::Torch(format!(
                "a fixed cache of {cap} positions after a prefill of {t}"
            ))));
        }
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (pk, pv) in cache.kv.iter().flatten() {
            let (b, h, _, d) = pk.size4()?;
            for (src, dst) in [(pk, &mut k), (pv, &mut v)] {
                let buf = Tensor::zeros([b, h, cap, d], (src.kind(), src.device()));
                buf.narrow(2, 0, t).copy_(src);
                dst.push(buf);
            }
        }
        let dev = pad.device();
        Ok(FixedCache {
            k,
            v,
            pos: Tensor::from_slice(&[t]).to_device(dev),
            pad: pad.shallow_clone(),
            keys: Tensor::arange(cap, (Kind::Int64, dev)).view([1, 1, cap]),
        })
    }
}

/// The caches of a forward, all layers.
enum Caches<'a> {
    Off,
    Grow(&'a mut Cache),
    Fixed(&'a FixedCache),
}

/// Where one layer's keys and values go: nowhere (training, scoring), appended to a growing
/// [`Cache`] slot, or written at the position of a [`FixedCache`].
enum Kv<'a> {
    Off,
    Grow(&'a mut Option<(Tensor, Tensor)>),
    Fixed {
        k: &'a Tensor,
        v: &'a Tensor,
        pos: &'a Tensor,
    },
}

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Normalises in fp32 like the reference, then casts back. On a GPU, libtorch's fused kernel
    /// (fp32 arithmetic inside; one kernel each way instead of eight).
    fn forward(&self, x: &Tensor) -> Tensor {
        if x.device().is_cuda() {
            let n = x.size().last().copied().unwrap_or(1);
            return x.rms_norm(&[n][..], Some(&self.weight), Some(self.eps));
        }
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        (xf * (var + self.eps).rsqrt()).to_kind(kind) * &self.weight
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: i64,
    n_kv_head: i64,
    head_dim: i64,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// The decoder with its frozen weights.
pub struct Llama {
    pub cfg: Config,
    /// The base weights under their Hugging Face names, frozen.
    pub vs: nn::VarStore,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Tensor,
    /// fp32 copies of edited weights when the base is stored in lower precision, so merges
    /// accumulate in fp32 instead of rounding each update away in bf16.
    masters: std::sync::Mutex<HashMap<String, Tensor>>,
    /// [`hidden_base`](Llama::hidden_base)'s captured forwards, by padded shape.
    base_graphs: std::sync::Mutex<HashMap<(i64, i64), BaseGraph>>,
}

/// A teacher-forced forward of the base model captured as a CUDA graph for one padded shape: its
/// input ids [rows, len] (rewritten before each replay) and its output, the final hidden states
/// [rows, len, hidden] in the graph's pool (rewritten by each replay).
struct BaseGraph {
    graph: crate::cuda::Graph,
    ids: Tensor,
    hidden: Tensor,
}

/// Whether [`Llama::hidden_base`] replays captured forwards on `device`: a GPU of a CUDA build,
/// unless `INJECTOR_GRAPH_EVAL=0` (or `INJECTOR_CUDA_GRAPHS=0`) asks for eager forwards.
pub fn base_graphs_on(device: Device) -> bool {
    crate::cuda::available(device) && std::env::var("INJECTOR_GRAPH_EVAL").as_deref() != Ok("0")
}

/// The padded shape [`Llama::hidden_base`] replays a [b, t] batch in: rows up to a power of two
/// (at least 8 for rows of up to 1,024 tokens), length up to a multiple of 32, so that a run's
/// evaluation batches fall in a few shapes, each captured once.
pub fn base_graph_shape(b: i64, t: i64) -> (i64, i64) {
    let len = (t.max(1) + 31) / 32 * 32;
    let rows = (b.max(1) as u64).next_power_of_two() as i64;
    // Short rows share shapes of at least 8; a long one (beyond 1,024 tokens) is not padded to 8.
    (if len <= 1024 { rows.max(8) } else { rows }, len)
}

fn proj(layer: usize, p: Proj, lin: &Linear, x: &Tensor, ad: &dyn Adapter) -> Tensor {
    let y = lin.forward(x);
    match ad.delta(layer, p, x) {
        Some(d) => y + d,
        None => y,
    }
}

/// Rotary embedding `x·cos + rotate_half(x)·sin`, x: [b, h, t, d]. rotate_half(x) = [-x₂, x₁] is
/// the two halves swapped (one `flip` over a [.., 2, d/2] view, in place of narrow/neg/cat) times
/// [-1, 1], folded into the signed `sin` table of [`rotary_tables`]: three kernels each way, and
/// none of them copies the transposed heads into another layout first.
fn rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let (b, h, t, d) = x.size4().expect("rotary input is [b, h, t, d]");
    let swapped = x.view([b, h, t, 2, d / 2]).flip([3]).view([b, h, t, d]);
    (x * cos).addcmul(&swapped, signed_sin)
}

/// Inverse RoPE frequencies, with Llama 3 frequency-dependent scaling when configured.
pub fn rope_inv_freq(cfg: &Config) -> Vec<f32> {
    let d = cfg.head_dim;
    let mut inv: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    if let Some(s) = &cfg.rope_scaling {
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= s.factor;
            } else if wavelen >= high_wavelen {
                let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
            }
        }
    }
    inv.into_iter().map(|f| f as f32).collect()
}

/// Angles [.., d/2] -> the rotary tables [.., d] of [`rotary`]: cos of [θ, θ] and sin of [-θ, θ].
fn rotary_tables(freqs: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let (cos, sin) = (freqs.cos(), freqs.sin());
    let cos = Tensor::cat(&[&cos, &cos], -1).to_kind(kind);
    let sin = Tensor::cat(&[&(-&sin), &sin], -1).to_kind(kind);
    (cos, sin)
}

/// [b, kv_heads, t, d] -> [b, kv_heads * rep, t, d], each head repeated `rep` times in place.
fn repeat_kv(x: &Tensor, rep: i64) -> Tensor {
    let (b, h, t, d) = x.size4().expect("kv is [b, h, t, d]");
    x.unsqueeze(2)
        .expand([b, h, rep, t, d], false)
        .reshape([b, h * rep, t, d])
}

/// What attention needs of the positions of a forward: the rotary tables ([t, d], or [b, 1, t, d]
/// per row; `sin` with its first half negated, see [`rotary`]) and, for left-padded rows, the
/// boolean mask [b, 1, t, past + t] of visible keys.
struct Positions {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

impl Attention {
    /// x: [b, t, hidden] -> [b, t, hidden]
    fn forward(&self, layer: usize, x: &Tensor, pos: &Positions, kv: Kv, ad: &dyn Adapter) -> Tensor {
        let (cos, sin) = (&pos.cos, &pos.sin);
        let (b, t, _) = x.size3().expect("attention input is [b, t, h]");
        let heads = |y: Tensor, n: i64| y.view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = heads(proj(layer, Proj::Q, &self.q_proj, x, ad), self.n_head);
        let k = heads(proj(layer, Proj::K, &self.k_proj, x, ad), self.n_kv_head);
        let v = heads(proj(layer, Proj::V, &self.v_proj, x, ad), self.n_kv_head);
        let q = rotary(&q, cos, sin);
        let k = rotary(&k, cos, sin);
        let (k, v, past) = match kv {
            Kv::Grow(slot) => {
                let (k, v, past) = match slot.take() {
                    Some((pk, pv)) => {
                        let past = pk.size()[2];
                        (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2), past)
                    }
                    None => (k, v, 0),
                };
                *slot = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v, past)
            }
            Kv::Fixed { k: kb, v: vb, pos: at } => {
                // In place, so that a captured graph's replays write the caller's buffers.
                let (mut kb, mut vb) = (kb.shallow_clone(), vb.shallow_clone());
                let _ = kb.index_copy_(2, at, &k);
                let _ = vb.index_copy_(2, at, &v);
                (kb, vb, 0)
            }
            Kv::Off => (k, v, 0),
        };
        // libtorch's CPU SDPA with `enable_gqa` is ~100x slower than on repeated heads (measured:
        // 505 µs vs 5 µs a call at SmolLM2's decode shape), so heads are repeated there. With a
        // padding mask (batched generation) they are repeated too: mask and grouped heads together
        // is the less travelled kernel path, and generation is not where the time goes.
        let rep = self.n_head / self.n_kv_head;
        let gqa = rep > 1 && x.device().is_cuda() && pos.mask.is_none();
        let (k, v) = if rep > 1 && !gqa {
            (repeat_kv(&k, rep), repeat_kv(&v, rep))
        } else {
            (k, v)
        };
        let y = if let Some(m) = &pos.mask {
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, None, gqa)
        } else if t == 1 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, gqa)
        } else if past == 0 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, gqa)
        } else {
            // New tokens attend to all cached positions and causally among themselves.
            let mask = Tensor::ones([t, past + t], (Kind::Bool, x.device())).tril(past);
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, gqa)
        };
        let y = y.transpose(1, 2).contiguous().view([b, t, self.n_head * self.head_dim]);
        proj(layer, Proj::O, &self.o_proj, &y, ad)
    }
}

impl Mlp {
    fn forward(&self, layer: usize, x: &Tensor, ad: &dyn Adapter) -> Tensor {
        let g = proj(layer, Proj::Gate, &self.gate_proj, x, ad);
        let u = proj(layer, Proj::Up, &self.up_proj, x, ad);
        proj(layer, Proj::Down, &self.down_proj, &crate::cuda::swiglu(&g, &u), ad)
    }
}

/// Weights by Hugging Face name, consumed while the model is built.
pub type Weights = HashMap<String, Tensor>;

fn take(w: &mut Weights, root: &nn::Path, name: &str, shape: &[i64], kind: Kind) -> Result<Tensor> {
    let t = w
        .remove(name)
        .ok_or_else(|| Error::BadInput(format!("model is missing tensor '{name}'")))?;
    if t.size() != shape {
        return Err(Error::BadInput(format!(
            "tensor '{name}' has shape {:?}, expected {shape:?}",
            t.size()
        )));
    }
    let mut p = root.clone();
    let parts: Vec<&str> = name.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        p = p / *part;
    }
    // `add` keeps the tensor's own kind; `var_copy` would make an fp32 variable (the store's
    // default kind) and silently run a bf16 model in fp32.
    let t = t.to_device(root.device()).to_kind(kind).contiguous();
    Ok(p.add(parts[parts.len() - 1], t, false))
}

impl Llama {
    /// Builds the model from weights under Hugging Face names, on `device` with weights of `kind`.
    pub fn new(cfg: &Config, mut w: Weights, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let (h, i) = (cfg.hidden_size as i64, cfg.intermediate_size as i64);
        let (nh, nkv, hd) = (
            cfg.num_attention_heads as i64,
            cfg.num_key_value_heads as i64,
            cfg.head_dim as i64,
        );
        let embed_tokens = take(
            &mut w,
            &root,
            "model.embed_tokens.weight",
            &[cfg.vocab_size as i64, h],
            kind,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let mut lin = |p: Proj, out: i64, inp: i64, bias: bool| -> Result<Linear> {
                let key = p.weight_key(l);
                let weight = take(&mut w, &root, &key, &[out, inp], kind)?;
                let bias = if bias {
                    Some(take(&mut w, &root, &key.replace(".weight", ".bias"), &[out], kind)?)
                } else {
                    None
                };
                Ok(Linear { weight, bias })
            };
            let ab = cfg.attention_bias;
            let self_attn = Attention {
                q_proj: lin(Proj::Q, nh * hd, h, ab)?,
                k_proj: lin(Proj::K, nkv * hd, h, ab)?,
                v_proj: lin(Proj::V, nkv * hd, h, ab)?,
                o_proj: lin(Proj::O, h, nh * hd, false)?,
                n_head: nh,
                n_kv_head: nkv,
                head_dim: hd,
            };
            let mlp = Mlp {
                gate_proj: lin(Proj::Gate, i, h, false)?,
                up_proj: lin(Proj::Up, i, h, false)?,
                down_proj: lin(Proj::Down, h, i, false)?,
            };
            let mut norm = |name: &str| -> Result<RmsNorm> {
                let weight = take(&mut w, &root, &format!("model.layers.{l}.{name}.weight"), &[h], kind)?;
                Ok(RmsNorm {
                    weight,
                    eps: cfg.rms_norm_eps,
                })
            };
            let input_layernorm = norm("input_layernorm")?;
            let post_attention_layernorm = norm("post_attention_layernorm")?;
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                input_layernorm,
                post_attention_layernorm,
            });
        }
        let norm = RmsNorm {
            weight: take(&mut w, &root, "model.norm.weight", &[h], kind)?,
            eps: cfg.rms_norm_eps,
        };
        let lm_head = if cfg.tie_word_embeddings {
            w.remove("lm_head.weight");
            embed_tokens.shallow_clone()
        } else {
            take(&mut w, &root, "lm_head.weight", &[cfg.vocab_size as i64, h], kind)?
        };
        vs.freeze();
        let inv_freq = Tensor::from_slice(&rope_inv_freq(cfg)).to_device(device);
        Ok(Llama {
            cfg: cfg.clone(),
            vs,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            masters: Default::default(),
            base_graphs: Default::default(),
        })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The kind of the base weights (bf16 on CUDA; on the CPU as loaded: `--base-dtype`).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// A base weight by Hugging Face name (shares storage: in-place edits change the model).
    pub fn weight(&self, name: &str) -> Option<Tensor> {
        // One lookup: `VarStore::variables` would clone the whole map (every name and tensor
        // handle), ~60 µs a call on SmolLM2, and a step looks up every adapted weight several
        // times (bench/NOTES.md item 34).
        let vars = self.vs.variables_.lock().expect("variables lock");
        vars.named_variables.get(name).map(Tensor::shallow_clone)
    }

    /// Every base weight's Hugging Face name, sorted (`lm_head.weight` only when it is not tied).
    pub fn weight_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.vs.variables().into_keys().collect();
        names.sort();
        names
    }

    /// A base weight by Hugging Face name as fp32 on the CPU: the fp32 master copy where merges
    /// kept one (lower-precision weights on CUDA), else the weight itself, so exports carry the
    /// merged deltas at full precision.
    pub fn weight_f32(&self, name: &str) -> Option<Tensor> {
        let masters = self.masters.lock().expect("masters lock");
        let t = masters
            .get(name)
            .map(Tensor::shallow_clone)
            .or_else(|| self.weight(name))?;
        Some(tch::no_grad(|| t.to_device(Device::Cpu).to_kind(Kind::Float)))
    }

    /// W += delta (fp32 arithmetic; kept in an fp32 master copy when the weights are lower precision).
    pub fn add_to_weight(&self, name: &str, delta: &Tensor) -> Result<()> {
        let w = self
            .weight(name)
            .ok_or_else(|| Error::BadInput(format!("model has no weight '{name}'")))?;
        tch::no_grad(|| {
            let delta = delta.to_device(w.device()).to_kind(Kind::Float);
            let mut w = w;
            if w.kind() == Kind::Float {
                let _ = w.g_add_(&delta);
            } else {
                let mut masters = self.masters.lock().expect("masters lock");
                let master = masters
                    .entry(name.to_string())
                    .or_insert_with(|| w.to_kind(Kind::Float));
                let _ = master.g_add_(&delta);
                w.copy_(master);
            }
        });
        Ok(())
    }

    /// A model of `cfg` with random weights (N(0, 0.02), norms 1) made directly on `device`, for
    /// speed measurements where the values do not matter.
    pub fn random(cfg: &Config, device: Device, kind: Kind) -> Result<Self> {
        let mut w = Weights::new();
        let (h, i, v) = (
            cfg.hidden_size as i64,
            cfg.intermediate_size as i64,
            cfg.vocab_size as i64,
        );
        let (q, kv) = (
            (cfg.num_attention_heads * cfg.head_dim) as i64,
            (cfg.num_key_value_heads * cfg.head_dim) as i64,
        );
        let rnd = |shape: &[i64]| Tensor::randn(shape, (kind, device)) * 0.02;
        w.insert("model.embed_tokens.weight".into(), rnd(&[v, h]));
        w.insert("model.norm.weight".into(), Tensor::ones([h], (kind, device)));
        if !cfg.tie_word_embeddings {
            w.insert("lm_head.weight".into(), rnd(&[v, h]));
        }
        for l in 0..cfg.num_hidden_layers {
            for (p, shape) in [
                (Proj::Q, [q, h]),
                (Proj::K, [kv, h]),
                (Proj::V, [kv, h]),
                (Proj::O, [h, q]),
                (Proj::Gate, [i, h]),
                (Proj::Up, [i, h]),
                (Proj::Down, [h, i]),
            ] {
                w.insert(p.weight_key(l), rnd(&shape));
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(
                    format!("model.layers.{l}.{n}.weight"),
                    Tensor::ones([h], (kind, device)),
                );
            }
        }
        Llama::new(cfg, w, device, kind)
    }

    /// ids: [b, t] (positions start at the cache length) -> final hidden states [b, t, hidden]
    pub fn hidden(&self, ids: &Tensor, cache: Option<&mut Cache>, ad: &dyn Adapter) -> Tensor {
        self.hidden_padded(ids, cache, None, ad)
    }

    /// [`hidden`](Self::hidden) of `ids` [b, t] (right-padded rows, no cache) at the base weights,
    /// no adapter: [b, t, hidden]. On a GPU of a CUDA build the forward runs as a CUDA graph
    /// captured once per padded shape ([`base_graph_shape`]) and replayed after (merges edit the
    /// weights in place, so the graph reads the current weights); a forward of SmolLM2 is ~1,000
    /// small kernels whose launches cost more than their arithmetic at evaluation's batch sizes
    /// (bench/NOTES.md item 33). The rows and positions of the padding compute values nothing
    /// reads: a row attends only to its own earlier positions. The result lives in the graph's
    /// memory and holds until the next `hidden_base` of the same padded shape, on any thread: use
    /// it before then (work queued on the same stream, as every eager use is, is ordered before the
    /// replay). Each shape's graph keeps its own memory pool for the model's lifetime (a run uses a
    /// few shapes; rows are padded to 8 even where 8 rows of a long example exceed the evaluation
    /// budget). Eager elsewhere, or with `INJECTOR_GRAPH_EVAL=0`.
    ///
    /// Errors: a failed capture or replay.
    pub fn hidden_base(&self, ids: &Tensor) -> Result<Tensor> {
        if !base_graphs_on(self.device()) {
            return Ok(self.hidden(ids, None, &NoAdapter));
        }
        let _guard = tch::no_grad_guard();
        let (b, t) = ids.size2()?;
        let shape = base_graph_shape(b, t);
        let mut graphs = self.base_graphs.lock().expect("base graphs lock");
        let g = match graphs.entry(shape) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // Captured on a side stream, after one eager forward of the shape (libtorch's
                // handles and workspaces are made outside the capture).
                let _stream = crate::cuda::SideStream::unless_inside(self.device())?;
                let input = Tensor::zeros([shape.0, shape.1], (Kind::Int64, self.device()));
                drop(self.hidden(&input, None, &NoAdapter));
                let (graph, hidden) = crate::cuda::Graph::capture(|| self.hidden(&input, None, &NoAdapter))?;
                e.insert(BaseGraph {
                    graph,
                    ids: input,
                    hidden,
                })
            }
        };
        // Only the batch's own [b, t] corner is written: what the padding holds from earlier
        // batches (valid token ids) reaches no position that is read.
        g.ids.narrow(0, 0, b).narrow(1, 0, t).shallow_clone().copy_(ids);
        g.graph.replay()?;
        Ok(g.hidden.narrow(0, 0, b).narrow(1, 0, t))
    }

    /// [`hidden`](Self::hidden) for rows of different lengths, left-padded: `pad[i]` (int64 [b])
    /// leading positions of row i are padding. Positions count from each row's first real token and
    /// no real token attends to padding, so each row's hidden states are those of the row alone.
    pub fn hidden_padded(
        &self,
        ids: &Tensor,
        cache: Option<&mut Cache>,
        pad: Option<&Tensor>,
        ad: &dyn Adapter,
    ) -> Tensor {
        let (_, t) = ids.size2().expect("ids are [b, t]");
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let dev = ids.device();
        let pos = Tensor::arange_start(past, past + t, (Kind::Float, dev));
        let kind = self.kind();
        let (cos, sin, mask) = match pad {
            None => {
                let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0);
                let (cos, sin) = rotary_tables(&freqs, kind);
                (cos, sin, None)
            }
            Some(pad) => {
                // Per-row positions [b, t] -> rotary tables [b, 1, t, d].
                let padf = pad.to_kind(Kind::Float).unsqueeze(1);
                let rows = (pos.unsqueeze(0) - &padf).clamp_min(0.0);
                let freqs = rows.unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
                let (cos, sin) = rotary_tables(&freqs.unsqueeze(1), kind);
                // Query q (absolute q_abs = past + q) sees key k when pad <= k <= q_abs; a padding
                // query also sees itself, so that no row of the softmax is empty.
                let q_abs = Tensor::arange_start(past, past + t, (Kind::Int64, dev)).view([1, t, 1]);
                let k_abs = Tensor::arange(past + t, (Kind::Int64, dev)).view([1, 1, -1]);
                let real = k_abs
                    .le_tensor(&q_abs)
                    .logical_and(&k_abs.ge_tensor(&pad.view([-1, 1, 1])));
                let mask = real.logical_or(&k_abs.eq_tensor(&q_abs)).unsqueeze(1);
                (cos, sin, Some(mask))
            }
        };
        let pos = Positions { cos, sin, mask };
        let caches = match cache {
            Some(c) => Caches::Grow(c),
            None => Caches::Off,
        };
        self.layers_forward(ids, &pos, ad, caches)
    }

    /// One decoding step on a [`FixedCache`]: ids [b, 1], the tokens at position `cache.pos`, ->
    /// final hidden states [b, 1, hidden]. Each row's hidden state is the one
    /// [`hidden_padded`](Self::hidden_padded) gives with the same left padding and a growing cache.
    /// Launches only kernels whose shapes are fixed and reads nothing back to the host, so a CUDA
    /// graph can capture it; it does not advance `cache.pos` (the caller does, in place).
    pub fn decode_fixed(&self, ids: &Tensor, cache: &FixedCache, ad: &dyn Adapter) -> Tensor {
        let kind = self.kind();
        // Row positions count from each row's first real token: [b] -> tables [b, 1, 1, d].
        let rows = (&cache.pos - &cache.pad).to_kind(Kind::Float);
        let freqs = rows.view([-1, 1, 1]) * self.inv_freq.view([1, 1, -1]);
        let (cos, sin) = rotary_tables(&freqs.unsqueeze(1), kind);
        // Row i sees keys pad[i] ..= pos: [b, 1, 1, cap].
        let mask = cache
            .keys
            .le_tensor(&cache.pos)
            .logical_and(&cache.keys.ge_tensor(&cache.pad.view([-1, 1, 1])))
            .unsqueeze(1);
        let pos = Positions {
            cos,
            sin,
            mask: Some(mask),
        };
        self.layers_forward(ids, &pos, ad, Caches::Fixed(cache))
    }

    /// Embedding, the decoder layers (their keys and values kept in `caches`) and the final norm.
    // `x = x + a`, not `x += a`: an in-place add would overwrite a tensor autograd saved for backward.
    #[allow(clippy::assign_op_pattern)]
    fn layers_forward(&self, ids: &Tensor, pos: &Positions, ad: &dyn Adapter, mut caches: Caches) -> Tensor {
        let prepared = ad.prepare(self.kind());
        let ad: &dyn Adapter = prepared.as_deref().unwrap_or(ad);
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        for (l, layer) in self.layers.iter().enumerate() {
            let kv = match &mut caches {
                Caches::Off => Kv::Off,
                Caches::Grow(c) => Kv::Grow(&mut c.kv[l]),
                Caches::Fixed(c) => Kv::Fixed {
                    k: &c.k[l],
                    v: &c.v[l],
                    pos: &c.pos,
                },
            };
            let a = layer
                .self_attn
                .forward(l, &layer.input_layernorm.forward(&x), pos, kv, ad);
            x = x + a;
            let m = layer.mlp.forward(l, &layer.post_attention_layernorm.forward(&x), ad);
            x = x + m;
        }
        self.norm.forward(&x)
    }

    /// hidden: [.., hidden] -> logits [.., vocab] in fp32
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float)
    }

    /// ids: [b, t] -> logits [b, t, vocab]
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut Cache>, ad: &dyn Adapter) -> Tensor {
        self.logits(&self.hidden(ids, cache, ad))
    }
}
