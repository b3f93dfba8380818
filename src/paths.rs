//! Where the embedded default model lives, and the checks that the paths the tool writes to can be
//! written, made before any work.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// File name of the embedded model inside `models/`.
pub const EMBEDDED_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model: `$INJECTOR_MODEL`, else `models/<embedded>` in the current folder, else next
/// to the binary's checkout (`target/release/injector` -> `models/`).
pub fn default_model() -> PathBuf {
    if let Ok(p) = std::env::var("INJECTOR_MODEL") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("models").join(EMBEDDED_MODEL);
    if local.exists() {
        return local;
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let candidate = dir.join("models").join(EMBEDDED_MODEL);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    local
}

/// Checks that a file the tool will write (`--ledger`) can be written, before any work: an existing
/// one must be a file that opens for writing, and its folder — or the nearest existing folder above
/// it, when it is to be made — must take new files (SQLite's journal and the step factors go next
/// to the ledger). `flag` names the option in the message.
///
/// Errors: bad input `PATH: FLAG cannot be written: why`.
pub fn check_file_writable(path: &Path, flag: &str) -> Result<()> {
    let refuse = |why: String| Error::BadInput(format!("{}: {flag} cannot be written: {why}", path.display()));
    if path.is_dir() {
        return Err(refuse("it is a folder".into()));
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| refuse(e.to_string()))?;
    }
    let parent = path.parent().unwrap_or(Path::new(""));
    check_folder_takes_files(parent).map_err(refuse)
}

/// Checks that a folder the tool will write files into (`--reports`) can be written, before any
/// work: an existing folder must take new files; a new one must be possible to make under the
/// nearest existing folder above it.
///
/// Errors: bad input `PATH: FLAG cannot be written: why`.
pub fn check_dir_writable(path: &Path, flag: &str) -> Result<()> {
    let refuse = |why: String| Error::BadInput(format!("{}: {flag} cannot be written: {why}", path.display()));
    if path.exists() && !path.is_dir() {
        return Err(refuse("it is a file, not a folder".into()));
    }
    check_folder_takes_files(path).map_err(refuse)
}

/// Whether new files can be made in `dir`, or — when it does not exist yet — in the nearest existing
/// folder above it (where it would be made): tried by making and removing an empty file, the one
/// check that also holds for read-only mounts and for root. The reason when not.
fn check_folder_takes_files(dir: &Path) -> std::result::Result<(), String> {
    let existing = dir
        .ancestors()
        .map(|a| if a.as_os_str().is_empty() { Path::new(".") } else { a })
        .find(|a| a.exists())
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(format!("{} is a file, not a folder", existing.display()));
    }
    let probe = existing.join(format!(".injector-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("{}: {e}", existing.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Makes `path` through a temporary file beside it (`.NAME.tmp-PID`) that `write` fills and that is
/// then renamed into place: a reader never sees half a file, and a failure — a full disk, a
/// file-size limit — leaves neither the temporary file nor a partial `path`.
///
/// Errors: [`Error::Write`] naming `path` and the cause.
pub fn write_through_temp(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let failed = |e: &dyn std::fmt::Display| Error::Write {
        path: path.to_path_buf(),
        msg: format!("cannot write: {e}"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let out = write(&tmp).and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    out.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(&e)
    })
}

/// Writes `bytes` to `path` through a temporary file ([`write_through_temp`]).
///
/// Errors: [`Error::Write`] naming `path` and the cause.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_through_temp(path, |tmp| Ok(std::fs::write(tmp, bytes)?))
}
