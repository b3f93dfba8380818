//! Exporting a model's weights (a run's, rebuilt by replay) so that other programs can serve it:
//! the choices (format, dtype), the output folder's checks, and the all-or-nothing write (a
//! temporary folder beside the target, renamed onto it at the end), with each step's adapter in
//! peft's format when asked.
pub mod adapters;
pub mod gguf;
pub mod gguf_vocab;
pub mod hf;
pub mod safetensors;

pub use gguf::GgufType;

use crate::error::{Error, Result};
use crate::model::Loaded;
use std::path::{Path, PathBuf};
use tch::Kind;

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer files).
    Hf,
    /// A folder with one GGUF file for llama.cpp (`model.gguf`).
    Gguf,
}

impl Format {
    /// Parses `--format`.
    ///
    /// Errors: bad input naming the value and the formats there are.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "hf" => Ok(Format::Hf),
            "gguf" => Ok(Format::Gguf),
            other => Err(Error::BadInput(format!(
                "--format: unknown format '{other}' (supported: hf, gguf)"
            ))),
        }
    }
}

/// What an export writes and the type its weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Hf(Dtype),
    Gguf(GgufType),
}

impl Target {
    /// Parses `--format` and `--dtype` (absent: f32 for hf, f16 for gguf).
    ///
    /// Errors: bad input naming the flag, the value and what the format supports.
    pub fn parse(format: &str, dtype: Option<&str>) -> Result<Self> {
        Ok(match Format::parse(format)? {
            Format::Hf => Target::Hf(dtype.map_or(Ok(Dtype::F32), Dtype::parse)?),
            Format::Gguf => Target::Gguf(dtype.map_or(Ok(GgufType::DEFAULT), GgufType::parse)?),
        })
    }

    /// The `--dtype` name of the stored type.
    pub fn dtype_name(self) -> &'static str {
        match self {
            Target::Hf(d) => d.name(),
            Target::Gguf(t) => t.name(),
        }
    }
}

/// The floating-point type the exported weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    /// Parses `--dtype`.
    ///
    /// Errors: bad input naming the value and the types there are.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            "f16" => Ok(Dtype::F16),
            other => Err(Error::BadInput(format!(
                "--dtype: unknown type '{other}' for --format hf (supported: f32, bf16, f16)"
            ))),
        }
    }

    /// The `--dtype` name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// The tch kind of the stored values.
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        }
    }

    /// The name transformers gives the type in `config.json` (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
        }
    }
}

/// Checks that `out` can receive an export, before any work: it must not exist, or be an empty
/// folder, and the folder it goes in must take new files.
///
/// Errors: bad input naming `--out` — a file, a folder with something in it, or a place that
/// cannot be written.
pub fn check_out_dir(out: &Path) -> Result<()> {
    let refuse = |why: &str| Error::BadInput(format!("{}: --out {why}", out.display()));
    if out.exists() {
        if !out.is_dir() {
            return Err(refuse("is a file, not a folder"));
        }
        if std::fs::read_dir(out)?.next().is_some() {
            return Err(refuse("is a folder that is not empty (an export never overwrites)"));
        }
    }
    let parent = parent_of(out);
    crate::paths::check_dir_writable(&parent, "--out")
}

fn parent_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary folder an export of `out` is written into: beside it, hidden, named after it and
/// this process.
fn temp_dir_for(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    parent_of(out).join(format!(".{name}.partial-{}", std::process::id()))
}

/// Writes `loaded` to `out` as `target` says, and the steps of `adapters` under `out/adapters/`
/// (see [`adapters::write_steps`]): everything goes into a temporary folder beside `out`, which is
/// renamed onto `out` only once every file is written and synced, so `out` is either absent (or the
/// empty folder it was) or complete. Returns the bytes written.
///
/// Errors: what [`check_out_dir`] refuses (checked again here), a model or tokenizer the format
/// cannot hold (bad input), a stored adapter that cannot be read, or an I/O error — after which the
/// temporary folder is removed.
pub fn export(
    loaded: &Loaded,
    out: &Path,
    target: Target,
    trained: Option<&gguf::Trained>,
    adapters: Option<&adapters::Source>,
) -> Result<u64> {
    check_out_dir(out)?;
    std::fs::create_dir_all(parent_of(out))?;
    let tmp = temp_dir_for(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    let written = match target {
        Target::Hf(dtype) => hf::write_folder(&tmp, &loaded.model, &loaded.tokenizer, dtype),
        Target::Gguf(ty) => gguf::write_file(&tmp.join(GGUF_FILE), &loaded.model, &loaded.tokenizer, ty, trained),
    }
    .and_then(|()| match adapters {
        Some(src) => adapters::write_steps(&tmp.join("adapters"), src).map(drop),
        None => Ok(()),
    })
    .and_then(|()| folder_bytes(&tmp));
    let done = written.and_then(|bytes| {
        // Onto a new name, or onto the empty folder `out` was (rename(2) replaces an empty one).
        std::fs::rename(&tmp, out)?;
        sync_dir(&parent_of(out));
        Ok(bytes)
    });
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done
}

/// The name of the file a GGUF export writes in its folder.
pub const GGUF_FILE: &str = "model.gguf";

/// Total size of the files in `dir` and its folders.
fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            folder_bytes(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Makes the rename durable (best effort: not every file system syncs folders).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_dtypes_parse_and_refuse() {
        assert_eq!(Format::parse("hf").unwrap(), Format::Hf);
        assert_eq!(Format::parse("gguf").unwrap(), Format::Gguf);
        assert!(Format::parse("onnx").unwrap_err().is_bad_input());
        assert_eq!(Target::parse("hf", None).unwrap(), Target::Hf(Dtype::F32));
        assert_eq!(Target::parse("gguf", None).unwrap(), Target::Gguf(GgufType::F16));
        assert_eq!(Target::parse("gguf", Some("bf16")).unwrap().dtype_name(), "bf16");
        let e = Target::parse("hf", Some("q4_1")).unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("for --format hf"));
        assert_eq!(Dtype::parse("bf16").unwrap(), Dtype::Bf16);
        assert_eq!(Dtype::parse("f16").unwrap().kind(), Kind::Half);
        assert!(Dtype::parse("q4_1").unwrap_err().is_bad_input());
    }

    #[test]
    fn out_dir_must_be_absent_or_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_out_dir(&d.path().join("new")).is_ok());
        assert!(check_out_dir(d.path()).is_ok(), "an empty folder");
        std::fs::write(d.path().join("f"), "x").unwrap();
        assert!(check_out_dir(d.path()).unwrap_err().is_bad_input());
        assert!(check_out_dir(&d.path().join("f")).unwrap_err().is_bad_input());
    }

    #[test]
    fn temp_dir_is_beside_the_target() {
        let t = temp_dir_for(Path::new("a/b/out"));
        assert_eq!(t.parent().unwrap(), Path::new("a/b"));
        assert!(t.file_name().unwrap().to_string_lossy().starts_with(".out.partial-"));
        assert_eq!(parent_of(Path::new("out")), PathBuf::from("."));
    }
}
