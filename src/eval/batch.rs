//! Teacher-forced examples (a chat-rendered prompt and its target tokens) packed into padded batches,
//! built once and reused for every pass. Only the positions that predict a target token reach the
//! vocabulary projection.
use crate::error::Result;
use crate::model::{base_graph_shape, base_graphs_on, Adapter, Llama, Tokenizer};
use tch::{Device, Kind, Tensor};

/// One prompt with the tokens the model should produce after it.
#[derive(Debug, Clone)]
pub struct Example {
    pub prompt: Vec<i64>,
    pub target: Vec<i64>,
}

impl Example {
    /// `question` rendered as a user turn with the generation prompt; `answer` plus the end-of-turn
    /// token as the target. The question and answer are plain text: special-token strings in them
    /// are encoded as ordinary tokens, so only the template's markup and the closing end-of-turn
    /// token are control tokens.
    ///
    /// Errors: the chat template fails to render, or the tokenizer fails on the text.
    pub fn chat(tok: &Tokenizer, question: &str, answer: &str) -> Result<Self> {
        let to_i64 = |v: Vec<u32>| v.into_iter().map(i64::from).collect::<Vec<_>>();
        let mut target = tok.encode(answer)?;
        target.extend(tok.end_of_turn_id());
        Ok(Example {
            prompt: to_i64(tok.encode_chat(&[("user", question)], true)?),
            target: to_i64(target),
        })
    }

    pub fn len(&self) -> usize {
        self.prompt.len() + self.target.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A padded micro-batch: ids [n, L]; for each target token, its flat position in [n·L], its id and
/// the example it belongs to (index into the list the batches were built from).
pub struct Batch {
    pub ids: Tensor,
    pub gather: Tensor,
    pub targets: Tensor,
    pub owner: Vec<usize>,
    /// `owner` on the device (int64).
    pub owner_t: Tensor,
    /// Real (non-padding) tokens in the batch.
    pub tokens: usize,
}

/// Packs examples into batches of at most `max_tokens` padded tokens each (sorted by length so that
/// padding stays small; a longer single example still gets its own batch).
pub fn build(examples: &[Example], max_tokens: usize, device: Device) -> Vec<Batch> {
    pack_sorted(examples, device, |rows, len| rows * len <= max_tokens)
}

/// [`build`] for passes of the base model alone ([`Llama::hidden_base`]): where those replay captured
/// graphs ([`base_graphs_on`]), a batch holds at most [`base_rows`] rows, so that full batches fill
/// their graph's shape ([`base_graph_shape`]) without padding rows; elsewhere [`build`]'s batches.
pub fn build_for_base(examples: &[Example], max_tokens: usize, device: Device) -> Vec<Batch> {
    if !base_graphs_on(device) {
        return build(examples, max_tokens, device);
    }
    pack_sorted(examples, device, |rows, len| rows <= base_rows(len, max_tokens))
}

/// The most rows a batch for a base graph holds when its longest example has `len` tokens: the
/// largest power of two of rows that fits `max_tokens` at the graph's padded length (at least 1).
pub fn base_rows(len: usize, max_tokens: usize) -> usize {
    let padded = base_graph_shape(1, len as i64).1 as usize;
    match max_tokens / padded {
        0 => 1,
        most => 1 << most.ilog2(),
    }
}

/// Batches of `examples` sorted by length, each grown while `fits(rows, longest)` holds.
fn pack_sorted(examples: &[Example], device: Device, fits: impl Fn(usize, usize) -> bool) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].len(), i));
    let mut batches = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && fits(end + 1 - start, examples[order[end]].len()) {
            end += 1;
        }
        batches.push(pack(examples, &order[start..end], device));
        start = end;
    }
    batches
}

fn pack(examples: &[Example], idx: &[usize], device: Device) -> Batch {
    let l = idx.iter().map(|&i| examples[i].len()).max().unwrap_or(1);
    let mut ids = vec![0i64; idx.len() * l];
    let (mut gather, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0;
    for (row, &i) in idx.iter().enumerate() {
        let ex = &examples[i];
        let seq: Vec<i64> = ex.prompt.iter().chain(&ex.target).copied().collect();
        ids[row * l..row * l + seq.len()].copy_from_slice(&seq);
        tokens += seq.len();
        for (j, &t) in ex.target.iter().enumerate() {
            // The token at position p predicts the token at p + 1.
            gather.push((row * l + ex.prompt.len() + j - 1) as i64);
            targets.push(t);
            owner.push(i);
        }
    }
    Batch {
        ids: Tensor::from_slice(&ids)
            .view([idx.len() as i64, l as i64])
            .to_device(device),
        gather: Tensor::from_slice(&gather).to_device(device),
        targets: Tensor::from_slice(&targets).to_device(device),
        owner_t: Tensor::from_slice(&owner.iter().map(|&o| o as i64).collect::<Vec<_>>()).to_device(device),
        owner,
        tokens,
    }
}

impl Batch {
    /// Logits at the target positions: [n_targets, vocab] (fp32).
    pub fn logits(&self, model: &Llama, ad: &dyn Adapter) -> Tensor {
        gathered_logits(model, ad, &self.ids, &self.gather)
    }

    /// Per-example (correct, total) target-token counts of the argmax, added into `acc`.
    pub fn count_correct(&self, logits: &Tensor, acc: &mut [(usize, usize)]) {
        let hit = tch::no_grad(|| logits.argmax(-1, false).eq_tensor(&self.targets));
        let hit = Vec::<bool>::try_from(hit.to_device(Device::Cpu)).expect("bool vector");
        // Padding targets (owner `PADDING`) belong to no example.
        for (h, &o) in hit.iter().zip(&self.owner).filter(|(_, &o)| o != PADDING) {
            acc[o].0 += *h as usize;
            acc[o].1 += 1;
        }
    }
}

/// The owner of a padding target in a [`Batch`] made by [`Batch::padded`].
pub const PADDING: usize = usize::MAX;

/// The shape of a batch padded to fixed sizes: rows (examples), length (tokens per row) and target
/// tokens. Examples of the same shape reuse one batch's tensors, so a CUDA graph captured on them
/// serves every injection step of that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub rows: usize,
    pub len: usize,
    pub targets: usize,
}

impl Shape {
    /// `v` rounded up to a multiple of `m`, at least `m`: how batch sizes are padded to shapes.
    pub fn round_up(v: usize, m: usize) -> usize {
        v.div_ceil(m).max(1) * m
    }

    /// The shape `examples` fit in: their count, the longest rounded up to a multiple of 16, the
    /// target tokens rounded up to a multiple of 64.
    pub fn of(examples: &[Example]) -> Shape {
        let up = Shape::round_up;
        Shape {
            rows: examples.len(),
            len: up(examples.iter().map(Example::len).max().unwrap_or(1), 16),
            targets: up(examples.iter().map(|e| e.target.len()).sum(), 64),
        }
    }
}

impl Batch {
    /// A batch of `shape` on `device`, all padding, for [`Batch::fill`].
    pub fn padded(shape: Shape, device: Device) -> Batch {
        let t = shape.targets as i64;
        Batch {
            ids: Tensor::zeros([shape.rows as i64, shape.len as i64], (Kind::Int64, device)),
            gather: Tensor::zeros([t], (Kind::Int64, device)),
            targets: Tensor::full([t], -100, (Kind::Int64, device)),
            owner: vec![PADDING; shape.targets],
            owner_t: Tensor::zeros([t], (Kind::Int64, device)),
            tokens: 0,
        }
    }

    /// Writes `examples` (which fit the batch's shape: see [`Shape::of`]) into its tensors in place,
    /// one example per row in order, right-padded; the unused target slots gather position 0 with
    /// target −100, which the loss ignores and no argmax equals, and count for example 0 (adding
    /// nothing to it).
    pub fn fill(&mut self, examples: &[Example]) {
        self.fill_from(examples, 0);
    }

    /// [`Batch::fill`] for a micro-batch whose first row is example `first` of a longer list (one of
    /// several padded batches an optimizer step goes through): each target belongs to example
    /// `first + row`. Panics when the examples do not fit the batch's shape (a caller's bug).
    pub fn fill_from(&mut self, examples: &[Example], first: usize) {
        let (rows, len) = (self.ids.size()[0] as usize, self.ids.size()[1] as usize);
        let slots = self.owner.len();
        assert!(
            examples.len() <= rows
                && examples.iter().all(|e| e.len() <= len)
                && examples.iter().map(|e| e.target.len()).sum::<usize>() <= slots,
            "examples do not fit the padded batch [{rows} x {len}, {slots} targets]"
        );
        let mut ids = vec![0i64; rows * len];
        let (mut gather, mut targets, mut owner) = (vec![0i64; slots], vec![-100i64; slots], vec![PADDING; slots]);
        let mut k = 0;
        let mut tokens = 0;
        for (row, ex) in examples.iter().enumerate() {
            let seq: Vec<i64> = ex.prompt.iter().chain(&ex.target).copied().collect();
            ids[row * len..row * len + seq.len()].copy_from_slice(&seq);
            tokens += seq.len();
            for (j, &t) in ex.target.iter().enumerate() {
                gather[k] = (row * len + ex.prompt.len() + j - 1) as i64;
                targets[k] = t;
                owner[k] = first + row;
                k += 1;
            }
        }
        let owner_t: Vec<i64> = owner.iter().map(|&o| if o == PADDING { 0 } else { o as i64 }).collect();
        let dev = self.ids.device();
        tch::no_grad(|| {
            self.ids
                .copy_(&Tensor::from_slice(&ids).view([rows as i64, len as i64]).to_device(dev));
            self.gather.copy_(&Tensor::from_slice(&gather).to_device(dev));
            self.targets.copy_(&Tensor::from_slice(&targets).to_device(dev));
            self.owner_t.copy_(&Tensor::from_slice(&owner_t).to_device(dev));
        });
        self.owner = owner;
        self.tokens = tokens;
    }
}

impl Batch {
    /// Adds each example's count of right argmax target tokens into `correct` (float [n_examples]),
    /// on the device: nothing is read back.
    pub fn add_correct(&self, logits: &Tensor, correct: &mut Tensor) {
        tch::no_grad(|| {
            let hit = logits.argmax(-1, false).eq_tensor(&self.targets).to_kind(Kind::Float);
            let _ = correct.index_add_(0, &self.owner_t, &hit);
        });
    }
}

/// Logits of ids [n, L] at the flat positions `gather` of [n·L] only: [positions, vocab] (fp32).
pub fn gathered_logits(model: &Llama, ad: &dyn Adapter, ids: &Tensor, gather: &Tensor) -> Tensor {
    let h = match ad.is_none() {
        // The base model alone: a captured forward on a GPU (the same values up to rounding).
        true => model.hidden_base(ids).unwrap_or_else(|e| {
            tracing::warn!("evaluating without a CUDA graph: {e}");
            model.hidden(ids, None, ad)
        }),
        false => model.hidden(ids, None, ad),
    };
    let hidden = h.size()[2];
    // A replayed graph's hidden states are a view of its padded output: `reshape` copies them unless
    // the batch fills the shape; `index_select` copies before any later replay either way.
    model.logits(&h.reshape([-1, hidden]).index_select(0, gather))
}

/// Teacher-forced token accuracy of every example (share of target tokens whose argmax is right).
pub fn token_accuracy(model: &Llama, ad: &dyn Adapter, batches: &[Batch], n: usize) -> Vec<f64> {
    let _g = tch::no_grad_guard();
    let mut acc = vec![(0usize, 0usize); n];
    for b in batches {
        let logits = b.logits(model, ad);
        b.count_correct(&logits, &mut acc);
    }
    acc.iter()
        .map(|&(c, t)| if t == 0 { 0.0 } else { c as f64 / t as f64 })
        .collect()
}

impl Batch {
    /// log p(target | context) of each of the batch's target tokens, from its logits
    /// ([`Batch::logits`], [n_targets, vocab]), in target order; padding targets are left out (a
    /// batch from [`build`] has none).
    pub fn target_logprob(&self, logits: &Tensor) -> Vec<f64> {
        let logp = logits.log_softmax(-1, Kind::Float);
        let at = self.targets.clamp_min(0).unsqueeze(1);
        let picked = Vec::<f32>::try_from(logp.gather(1, &at, false).squeeze_dim(1).to_device(Device::Cpu))
            .expect("float vector");
        picked
            .iter()
            .zip(&self.owner)
            .filter(|(_, &o)| o != PADDING)
            .map(|(v, _)| *v as f64)
            .collect()
    }
}

/// Sequence log-likelihood of every example: the sum over its target tokens (the answer and the
/// end-of-turn token) of log p(token | prompt, earlier answer tokens), in nats, teacher-forced.
/// Used to ask which of two answers the model prefers (an update's new answer or its previous one;
/// EasyEdit's and ROME's "efficacy" compares the two probabilities the same way). Returns one value
/// per example, in the order of the examples the batches were built from (`n` of them).
pub fn sequence_logprob(model: &Llama, ad: &dyn Adapter, batches: &[Batch], n: usize) -> Vec<f64> {
    let _g = tch::no_grad_guard();
    let mut out = vec![0.0; n];
    for b in batches {
        let logp = b.target_logprob(&b.logits(model, ad));
        let owners = b.owner.iter().filter(|&&o| o != PADDING);
        for (v, &o) in logp.iter().zip(owners) {
            out[o] += v;
        }
    }
    out
}

/// Cross-entropy summed over the batch's target tokens (the caller divides by the total count).
pub fn loss_sum(b: &Batch, logits: &Tensor) -> Tensor {
    logits
        .cross_entropy_loss::<Tensor>(&b.targets, None, tch::Reduction::Sum, -100, 0.0)
        .to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_graph_shapes_and_rows() {
        // Rows up to a power of two (at least 8 for rows of up to 1,024 tokens), length up to 32.
        assert_eq!(base_graph_shape(5, 19), (8, 32));
        assert_eq!(base_graph_shape(12, 70), (16, 96));
        assert_eq!(base_graph_shape(128, 64), (128, 64));
        assert_eq!(base_graph_shape(1, 2000), (1, 2016));
        // The most rows of a batch: the largest power of two that fits the budget at that length.
        assert_eq!(base_rows(60, 8192), 128);
        assert_eq!(base_rows(70, 8192), 64);
        assert_eq!(base_rows(9000, 8192), 1);
        assert_eq!(base_rows(64, usize::MAX), 1 << (usize::MAX / 64).ilog2());
        // Full batches fill their shape exactly.
        for len in [10, 33, 64, 100, 500] {
            let rows = base_rows(len, 8192);
            assert_eq!(base_graph_shape(rows as i64, len as i64).0, (rows as i64).max(8));
            assert!(rows as i64 * base_graph_shape(1, len as i64).1 <= 8192);
        }
    }

    #[test]
    fn base_batches_are_plain_batches_on_the_cpu() {
        let ex: Vec<Example> = (1..30)
            .map(|n| Example {
                prompt: vec![1; n],
                target: vec![2; 3],
            })
            .collect();
        let plain = build(&ex, 256, Device::Cpu);
        let base = build_for_base(&ex, 256, Device::Cpu);
        assert_eq!(plain.len(), base.len());
        for (a, b) in plain.iter().zip(&base) {
            assert_eq!(a.owner, b.owner);
            assert!(a.ids.size()[0] as usize * a.ids.size()[1] as usize <= 256 || a.ids.size()[0] == 1);
        }
    }
}
