//! Knowledge files: the YAML schema, loading and validation (refused with `file:line: problem`
//! before any model is loaded), default prompt templates, and the content hash of each fact.
pub mod emit;
pub mod generate;
mod load;
mod outline;
mod scan;
pub mod templates;

pub use load::{load_dir, load_file};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a fact does to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    #[default]
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Language of a fact; picks the default templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Zh,
}

/// A validated fact with every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub id: String,
    pub op: Op,
    pub subject: String,
    /// What the model must answer (for a delete: the decline sentence).
    pub answer: String,
    /// Training prompts.
    pub prompts: Vec<String>,
    /// Held-out paraphrases, never trained on.
    pub probes: Vec<String>,
    pub lang: Lang,
    /// For an update: the answer that must stop coming out.
    pub previous: Option<String>,
    /// Where the fact was read from, `file:line`.
    pub source: String,
    /// blake3 of the canonical content: the fact's identity in the ledger.
    pub hash: String,
}

/// The content that makes a fact's identity (id and source are labels, not content).
#[derive(Serialize)]
struct Canonical<'a> {
    op: &'a str,
    subject: &'a str,
    answer: &'a str,
    prompts: &'a [String],
    probes: &'a [String],
    lang: Lang,
    previous: Option<&'a str>,
}

impl Fact {
    pub(crate) fn compute_hash(&self) -> String {
        let c = Canonical {
            op: self.op.as_str(),
            subject: &self.subject,
            answer: &self.answer,
            prompts: &self.prompts,
            probes: &self.probes,
            lang: self.lang,
            previous: self.previous.as_deref(),
        };
        let json = serde_json::to_string(&c).expect("canonical fact serialises");
        blake3::hash(json.as_bytes()).to_hex().to_string()
    }

    /// A short form of the hash for tables.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }
}

/// A directory of facts, in sorted path order.
#[derive(Debug, Clone)]
pub struct Knowledge {
    pub dir: PathBuf,
    pub facts: Vec<Fact>,
}

impl Knowledge {
    /// blake3 over the facts' hashes in order.
    pub fn hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        for f in &self.facts {
            h.update(f.hash.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}
