//! The GGML block formats: dequantisation to f32 and quantisation from f32, following ggml's
//! reference code (ggml-quants.c, `dequantize_row_*` and `quantize_row_*_ref`, the functions
//! llama.cpp's own tools use to make model files). Pure functions over byte slices.
use half::{bf16, f16};
use rayon::prelude::*;

/// The GGML tensor types this loader decodes, with their on-disk ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    /// Maps a GGML type id to a decodable type; `Err` carries the type's name for the message.
    pub fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => return Err(ggml_type_name(other)),
        })
    }

    /// The on-disk type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// ggml's names for type ids, so an unsupported tensor is named in the error.
pub fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("#{id}"),
    };
    name.to_string()
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn dequant_block(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::BF16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = (q & 0x0f) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                out[j] = b[2 + j] as i8 as f32 * d;
            }
        }
    }
}

/// Decodes `n` elements of type `ty` from `bytes` (which must hold exactly their blocks).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    assert_eq!(n % bl, 0, "element count is not a whole number of blocks");
    assert_eq!(bytes.len(), n / bl * bb, "byte count does not match element count");
    let mut out = vec![0f32; n];
    // Chunks of many blocks keep rayon's overhead small next to the arithmetic.
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(bl * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(bb * BLOCKS_PER_TASK))
        .for_each(|(o, b)| {
            for (ob, bb_) in o.chunks_mut(bl).zip(b.chunks(bb)) {
                dequant_block(ty, bb_, ob);
            }
        });
    out
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// One block of `ty` from `x` (`ty.block_len()` values) into `out` (`ty.block_bytes()` bytes), as
/// ggml's `quantize_row_*_ref` makes it: the scale in f32, its reciprocal (0 for an all-zero
/// block) applied to each value, the scale and minimum stored as f16 (round to nearest even).
fn quant_block(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::F32 => out.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => put_f16(out, 0, x[0]),
        GgmlType::BF16 => out.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::Q8_0 => {
            // d = amax / 127; q = round(x / d), half away from zero (C's roundf).
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            for (o, v) in out[2..].iter_mut().zip(x) {
                *o = (v * id).round() as i8 as u8;
            }
        }
        GgmlType::Q4_0 => {
            // d = (the value of largest magnitude) / -8; q = min(15, trunc(x / d + 8.5)).
            let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
            for j in 0..16 {
                out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
            }
        }
        GgmlType::Q4_1 => {
            // d = (max - min) / 15, m = min; q = min(15, trunc((x - min) / d + 0.5)); the low
            // nibble of byte j is element j, the high nibble element j + 16.
            let (min, max) = x
                .iter()
                .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            put_f16(out, 2, min);
            let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
            for j in 0..16 {
                out[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
            }
        }
    }
}

/// Encodes `values` as type `ty` (their count must be a whole number of blocks): the bytes of a
/// GGUF tensor, row after row.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    assert_eq!(values.len() % bl, 0, "element count is not a whole number of blocks");
    let mut out = vec![0u8; values.len() / bl * bb];
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(bb * BLOCKS_PER_TASK)
        .zip(values.par_chunks(bl * BLOCKS_PER_TASK))
        .for_each(|(o, x)| {
            for (ob, xb) in o.chunks_mut(bb).zip(x.chunks(bl)) {
                quant_block(ty, xb, ob);
            }
        });
    out
}

/// Re-encodes `values` on the grid of `grid` — an encoding in `ty` (Q8_0, Q4_0 or Q4_1) of nearby
/// values, such as a model's weights before a small update — keeping each block's scale and minimum
/// and rounding each value to one of the two grid points around it at random, up with probability
/// equal to its distance from the lower one in steps (unbiased stochastic rounding: the expected
/// decoded value is the value itself, clamped to the block's range). Rounding to nearest gives back
/// `grid` wherever a value moved less than half a step, erasing such an update; this keeps it on
/// average. `seed` and the block's index choose the draws, so the bytes repeat for a seed.
pub fn requantize_stochastic(ty: GgmlType, grid: &[u8], values: &[f32], seed: u64) -> Vec<u8> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    assert!(
        matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1),
        "{ty:?} has no grid"
    );
    assert_eq!(values.len() % bl, 0, "element count is not a whole number of blocks");
    assert_eq!(grid.len(), values.len() / bl * bb, "grid does not match the values");
    let mut out = grid.to_vec();
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(bb * BLOCKS_PER_TASK)
        .zip(values.par_chunks(bl * BLOCKS_PER_TASK))
        .enumerate()
        .for_each(|(task, (o, x))| {
            for (i, (ob, xb)) in o.chunks_mut(bb).zip(x.chunks(bl)).enumerate() {
                let block = (task * BLOCKS_PER_TASK + i) as u64;
                let mut rng = crate::rng::SplitMix64(seed ^ block.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                // A value on a grid point (up to float rounding of the division) stays there.
                let mut code = |v: f32, lo: f32, hi: f32| {
                    let near = v.round();
                    let q = if (v - near).abs() < 1e-4 {
                        near
                    } else {
                        (v + rng.next_f64() as f32).floor()
                    };
                    q.clamp(lo, hi)
                };
                match ty {
                    GgmlType::Q8_0 => {
                        let d = f16_at(ob, 0);
                        if d != 0.0 {
                            for (o, v) in ob[2..].iter_mut().zip(xb) {
                                *o = code(v / d, -127.0, 127.0) as i8 as u8;
                            }
                        }
                    }
                    GgmlType::Q4_0 | GgmlType::Q4_1 => {
                        let (d, m, at) = match ty {
                            GgmlType::Q4_0 => (f16_at(ob, 0), -8.0 * f16_at(ob, 0), 2),
                            _ => (f16_at(ob, 0), f16_at(ob, 2), 4),
                        };
                        if d != 0.0 {
                            let mut q = |v: f32| code((v - m) / d, 0.0, 15.0) as u8;
                            for j in 0..16 {
                                ob[at + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                            }
                        }
                    }
                    _ => unreachable!(),
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1.0, nibbles 0..15 low, 15..0 high.
        let mut b = Vec::new();
        b.extend(f16::from_f32(0.5).to_le_bytes());
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let out = dequantize(GgmlType::Q4_1, &b, 32);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[15], 6.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
    }

    #[test]
    fn q8_0_signed() {
        let mut b = Vec::new();
        b.extend(f16::from_f32(0.25).to_le_bytes());
        for j in 0..32i32 {
            b.push((j - 16) as i8 as u8);
        }
        let out = dequantize(GgmlType::Q8_0, &b, 32);
        assert_eq!(out[0], -4.0);
        assert_eq!(out[31], 3.75);
    }

    #[test]
    fn unknown_type_is_named() {
        assert_eq!(GgmlType::from_id(12).unwrap_err(), "Q4_K");
        for id in [0, 1, 2, 3, 8, 30] {
            assert_eq!(GgmlType::from_id(id).unwrap().id(), id);
        }
    }

    /// Values of varied sign and scale, several blocks, with an all-zero block and a constant one.
    fn sample(n_blocks: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..32 * n_blocks)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i / 32) as f32)
            .collect();
        v[32..64].fill(0.0);
        v[64..96].fill(-0.75);
        v
    }

    #[test]
    fn q8_0_quantized_by_hand() {
        // amax = 127/128: d = 1/128 exactly, so x·(1/d) is exact and the halves show the rounding.
        let mut x = [0f32; 32];
        x[0] = 127.0 / 128.0;
        x[1] = -63.5 / 128.0; // half a step: away from zero
        x[2] = 0.5 / 128.0;
        x[3] = -0.25 / 128.0;
        let b = quantize(GgmlType::Q8_0, &x);
        assert_eq!(b.len(), 34);
        assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(1.0 / 128.0));
        assert_eq!(&b[2..6], &[127u8, (-64i8) as u8, 1, 0]);
        assert!(b[6..].iter().all(|&q| q == 0));
    }

    #[test]
    fn q4_1_quantized_by_hand() {
        // min -1, max 2: d = 0.2, element j = -1 + 0.2·(j mod 16); the low nibble of byte j is
        // element j, the high nibble element j + 16.
        let mut x: Vec<f32> = (0..32).map(|j| -1.0 + 0.2 * (j % 16) as f32).collect();
        x[31] = 2.0;
        let b = quantize(GgmlType::Q4_1, &x);
        assert_eq!(b.len(), 20);
        assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(0.2));
        assert_eq!(f16::from_le_bytes([b[2], b[3]]), f16::from_f32(-1.0));
        for j in 0..16 {
            assert_eq!(b[4 + j], (j as u8) | ((j as u8) << 4), "byte {j}");
        }
    }

    #[test]
    fn quantize_then_dequantize_is_within_half_a_step() {
        let x = sample(8);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let back = dequantize(ty, &quantize(ty, &x), x.len());
            for (xb, bb) in x.chunks(32).zip(back.chunks(32)) {
                let (lo, hi) = xb.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let amax = lo.abs().max(hi.abs());
                // Half a step (a whole one at q4_0's clamped end), plus the f16 rounding of the
                // scale (and of the minimum).
                let bound = match ty {
                    GgmlType::Q8_0 => amax / 127.0 * (0.5 + 128.0 / 1024.0),
                    GgmlType::Q4_0 => amax / 8.0 * (1.0 + 8.0 / 1024.0),
                    _ => (hi - lo) / 15.0 * (0.5 + 16.0 / 1024.0) + lo.abs() / 1024.0,
                } + 1e-7;
                for (a, b) in xb.iter().zip(bb) {
                    assert!((a - b).abs() <= bound, "{ty:?}: {a} -> {b} (bound {bound})");
                }
            }
            assert!(
                back[32..64].iter().all(|&v| v == 0.0),
                "{ty:?}: the zero block is exact"
            );
        }
    }

    #[test]
    fn float_types_round_once() {
        let x = sample(4);
        assert_eq!(dequantize(GgmlType::F32, &quantize(GgmlType::F32, &x), x.len()), x);
        let h = dequantize(GgmlType::F16, &quantize(GgmlType::F16, &x), x.len());
        let b = dequantize(GgmlType::BF16, &quantize(GgmlType::BF16, &x), x.len());
        for i in 0..x.len() {
            assert_eq!(h[i], f16::from_f32(x[i]).to_f32());
            assert_eq!(b[i], bf16::from_f32(x[i]).to_f32());
        }
    }

    #[test]
    fn stochastic_rounding_keeps_small_updates_on_average() {
        let base = sample(2048);
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
            let grid = quantize(ty, &base);
            let on_grid = dequantize(ty, &grid, base.len());
            // An update of a tenth of a step, up and down in turn (nearest rounding keeps half a step).
            let step = |b: &[f32]| {
                let (lo, hi) = b.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let amax = lo.abs().max(hi.abs());
                match ty {
                    GgmlType::Q8_0 => amax / 127.0,
                    GgmlType::Q4_0 => amax / 8.0,
                    _ => (hi - lo) / 15.0,
                }
            };
            let delta: Vec<f32> = on_grid
                .chunks(32)
                .flat_map(|b| {
                    let s = 0.1 * step(b);
                    (0..32).map(move |j| if j % 2 == 0 { s } else { -s })
                })
                .collect();
            let moved: Vec<f32> = on_grid.iter().zip(&delta).map(|(w, d)| w + d).collect();
            let nearest = dequantize(ty, &quantize(ty, &moved), base.len());
            let kept = |q: &[f32]| -> f64 {
                let dot: f64 = q
                    .iter()
                    .zip(&on_grid)
                    .zip(&delta)
                    .map(|((q, w), d)| ((q - w) * d) as f64)
                    .sum();
                dot / delta.iter().map(|d| (d * d) as f64).sum::<f64>()
            };
            let stochastic = requantize_stochastic(ty, &grid, &moved, 7);
            assert_eq!(stochastic.len(), grid.len());
            assert_eq!(
                stochastic,
                requantize_stochastic(ty, &grid, &moved, 7),
                "a seed repeats"
            );
            assert_ne!(stochastic, requantize_stochastic(ty, &grid, &moved, 8));
            let s = kept(&dequantize(ty, &stochastic, base.len()));
            assert!(
                kept(&nearest) < 0.5,
                "{ty:?}: nearest rounding loses most of it ({})",
                kept(&nearest)
            );
            assert!(
                (s - 1.0).abs() < 0.15,
                "{ty:?}: stochastic rounding keeps it on average ({s})"
            );
            // Values already on the grid stay where they are.
            assert_eq!(requantize_stochastic(ty, &grid, &on_grid, 7), grid, "{ty:?}");
        }
    }
}
