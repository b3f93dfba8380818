//! Library errors: one variant per case a user can hit. The CLI maps [`Error::is_bad_input`] to exit 2.
use std::path::PathBuf;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file or folder that cannot be read as a model (missing, truncated, corrupt).
    #[error("{}: {msg}", path.display())]
    BadModel { path: PathBuf, msg: String },
    /// A tensor type this loader does not decode.
    #[error("{}: tensor '{tensor}' has unsupported type {ty}", path.display())]
    UnsupportedTensorType { path: PathBuf, tensor: String, ty: String },
    /// An architecture other than the Llama family.
    #[error("{}: unsupported architecture '{arch}' (supported: llama, qwen2, mistral)", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    /// A `--device` value that is not auto, cpu, cuda or cuda:N, or a GPU that is not there.
    #[error("{0}")]
    BadDevice(String),
    /// Bad user input: a knowledge file, a flag value, a run id. The message names file and line.
    #[error("{0}")]
    BadInput(String),
    /// Training that stopped being a number: a loss or an update that is NaN or infinite. Nothing of
    /// the step is merged or committed; the run is marked failed.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// Something in the ledger that does not fit what was asked.
    #[error("ledger: {0}")]
    Ledger(String),
    /// A file that could not be written (a full disk, a quota, a file-size limit): nothing of it is
    /// left behind (see [`crate::paths::write_through_temp`]).
    #[error("{}: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the error is the user's input rather than a failure of the run (exit code 2 vs 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::BadModel { .. }
                | Error::UnsupportedTensorType { .. }
                | Error::UnsupportedArchitecture { .. }
                | Error::BadDevice(_)
                | Error::BadInput(_)
        )
    }

    pub(crate) fn bad_model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadModel {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
