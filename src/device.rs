//! `--device auto|cpu|cuda[:N]` parsing.
use crate::error::{Error, Result};
use tch::Device;

/// Resolves a device name; `auto` is the first GPU when one is visible, else the CPU.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda_count = || tch::Cuda::device_count() as usize;
    match s {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => parse_device("cuda:0"),
        _ => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::BadDevice(format!("unknown device '{s}': expected auto, cpu, cuda or cuda:N")))?;
            if n >= cuda_count() {
                return Err(Error::BadDevice(format!(
                    "device '{s}' is not available: this build sees {} CUDA device(s){}",
                    cuda_count(),
                    if tch::Cuda::is_available() {
                        ""
                    } else {
                        " (CPU build, or no GPU; see README 'GPU build')"
                    }
                )));
            }
            Ok(Device::Cuda(n))
        }
    }
}
