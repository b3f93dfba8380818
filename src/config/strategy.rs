//! How facts are grouped into injection steps. Every strategy sees the same facts in the same order with the
//! same hyper-parameters; only the grouping differs.
use crate::error::Error;
use crate::rng;
use std::fmt;
use std::str::FromStr;

/// A grouping of facts into injection steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// K facts per step, merged after each (`sequential` is K = 1).
    Batch(usize),
    /// All facts in one training run, one merge.
    Mixed,
    /// One fact per step, rehearsing K earlier facts in each, drawn at random.
    Replay(usize),
    /// One fact per step, rehearsing up to K earlier facts chosen by retention: those measured below
    /// the threshold first, then those whose review is due, at intervals that double while a fact
    /// holds (spaced repetition), within a token budget (`inject::schedule`).
    Spaced(usize),
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::BadInput(format!(
                "unknown strategy '{s}': expected sequential, mixed, batch:K, replay:K or spaced:K (K at least 1)"
            ))
        };
        let k = |v: &str| v.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(bad);
        match s.trim() {
            "sequential" => Ok(Strategy::Batch(1)),
            "mixed" => Ok(Strategy::Mixed),
            other => match other.split_once(':') {
                Some(("batch", n)) => Ok(Strategy::Batch(k(n)?)),
                Some(("replay", n)) => Ok(Strategy::Replay(k(n)?)),
                Some(("spaced", n)) => Ok(Strategy::Spaced(k(n)?)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Strategy::Batch(1) => write!(f, "sequential"),
            Strategy::Batch(k) => write!(f, "batch:{k}"),
            Strategy::Mixed => write!(f, "mixed"),
            Strategy::Replay(k) => write!(f, "replay:{k}"),
            Strategy::Spaced(k) => write!(f, "spaced:{k}"),
        }
    }
}

impl Strategy {
    /// Splits `n` facts (in order) into the steps' groups.
    pub fn groups(&self, n: usize) -> Vec<Vec<usize>> {
        let size = match self {
            Strategy::Batch(k) => *k,
            Strategy::Mixed => n.max(1),
            Strategy::Replay(_) | Strategy::Spaced(_) => 1,
        };
        (0..n).collect::<Vec<_>>().chunks(size).map(<[usize]>::to_vec).collect()
    }

    /// Earlier facts to rehearse at a step: K of `earlier`, drawn by [`rng::sample_distinct`] seeded
    /// with the run's seed and the step index, so a resumed run rehearses the same ones.
    pub fn rehearse(&self, earlier: &[String], seed: u64, step: i64) -> Vec<String> {
        let Strategy::Replay(k) = self else { return Vec::new() };
        rng::sample_distinct(earlier, *k, seed, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_group() {
        let s: Strategy = "batch:4".parse().unwrap();
        assert_eq!(s.groups(10).iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!("sequential".parse::<Strategy>().unwrap().groups(3).len(), 3);
        assert_eq!(
            "mixed".parse::<Strategy>().unwrap().groups(5),
            vec![vec![0, 1, 2, 3, 4]]
        );
        assert_eq!("replay:2".parse::<Strategy>().unwrap().to_string(), "replay:2");
        let spaced: Strategy = "spaced:3".parse().unwrap();
        assert_eq!((spaced.to_string().as_str(), spaced.groups(4).len()), ("spaced:3", 4));
        assert!("spaced:0".parse::<Strategy>().is_err());
        assert!("batch:0".parse::<Strategy>().is_err());
        assert!("random".parse::<Strategy>().is_err());
    }

    #[test]
    fn rehearsal_is_deterministic_and_distinct() {
        let s = Strategy::Replay(2);
        let earlier: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        let a = s.rehearse(&earlier, 7, 3);
        assert_eq!(a, s.rehearse(&earlier, 7, 3));
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert!(Strategy::Batch(1).rehearse(&earlier, 7, 3).is_empty());
        assert_eq!(s.rehearse(&earlier[..1], 7, 3).len(), 1);
    }
}
