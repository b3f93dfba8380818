//! One process at a time on a run. Two processes given the same run at once — the same command
//! started twice, a resume beside the run — would both record it, or both train its next steps;
//! instead the second waits for the first and then finds its steps committed. An OS file lock
//! (`flock`) on a file beside the step factors: released when its process ends, however it ends,
//! so a killed run leaves nothing to clean up.
use super::Ledger;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};

/// Held while a process works on a run; dropping it lets the next one in.
pub struct RunLock {
    _file: File,
}

impl Ledger {
    /// Takes the lock of the run whose key is `key` (see [`crate::inject::plan::run_key`]), waiting,
    /// with a warning, while another process holds it.
    ///
    /// Errors: the lock file cannot be made or locked (bad input naming it).
    pub fn lock_run(&self, key: &str) -> Result<RunLock> {
        let dir = self.deltas_dir();
        let path = dir.join(format!("run-{}.lock", &key[..key.len().min(16)]));
        let cannot = |e: std::io::Error| Error::BadInput(format!("{}: cannot lock the run: {e}", path.display()));
        std::fs::create_dir_all(&dir).map_err(cannot)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                tracing::warn!(
                    "{}: another process is working on this run; waiting for it to finish",
                    self.path.display()
                );
                file.lock().map_err(cannot)?;
            }
            Err(TryLockError::Error(e)) => return Err(cannot(e)),
        }
        Ok(RunLock { _file: file })
    }
}
