//! splitmix64: a small seedable generator, so sampled answers and generated facts repeat for a seed.

/// The splitmix64 generator (Steele, Lea and Flood, "Fast splittable pseudorandom number generators").
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `k` distinct items of `pool` (all of them when it has fewer), drawn without replacement by a
/// xorshift64 generator seeded from `seed` and `stream` (an injection step's index, say), so the same
/// arguments always draw the same items. Used for the replay strategy's rehearsed facts and for the
/// fixed sample of retention checks.
pub fn sample_distinct(pool: &[String], k: usize, seed: u64, stream: i64) -> Vec<String> {
    let mut pool: Vec<String> = pool.to_vec();
    let mut state = seed ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::new();
    while out.len() < k && !pool.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(pool.swap_remove((state % pool.len() as u64) as usize));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_samples_repeat_for_a_seed() {
        let pool: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        let a = sample_distinct(&pool, 2, 7, 3);
        assert_eq!(a, sample_distinct(&pool, 2, 7, 3));
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert_eq!(sample_distinct(&pool[..1], 2, 7, 3).len(), 1);
        assert_eq!(sample_distinct(&pool, 9, 7, 3).len(), 5);
        // The values the replay strategy drew before this function existed (same generator).
        assert_eq!(sample_distinct(&pool, 2, 7, 3), ["f4", "f0"]);
    }
}
