//! Where the embedded default model lives.
use std::path::PathBuf;

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
