//! Writing tensors as safetensors through Hugging Face's own `safetensors` crate (format:
//! <https://github.com/huggingface/safetensors>): tch tensors are copied to host bytes and handed to
//! its serializer with the file's `__metadata__`.
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::path::Path;
use tch::{Kind, Tensor};

/// The safetensors dtype of a tch kind, for the kinds exports write.
///
/// Errors: bad input for any other kind.
pub fn dtype_of(kind: Kind) -> Result<Dtype> {
    match kind {
        Kind::Float => Ok(Dtype::F32),
        Kind::BFloat16 => Ok(Dtype::BF16),
        Kind::Half => Ok(Dtype::F16),
        other => Err(Error::BadInput(format!("safetensors: no dtype for {other:?}"))),
    }
}

/// One tensor's host bytes, as the serializer reads them.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn of(t: &Tensor) -> Result<Self> {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        Ok(HostTensor {
            dtype: dtype_of(t.kind())?,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            bytes,
        })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` (name, tensor; any device, already of the kind to store) to `path`, with
/// `metadata` (transformers expects `format: pt`).
///
/// Errors: an I/O error, a kind [`dtype_of`] does not know, or a name given twice (bad input).
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &[(&str, &str)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(Error::BadInput(format!("safetensors: tensor '{name}' given twice")));
    }
    let host: Vec<(String, HostTensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), HostTensor::of(t)?)))
        .collect::<Result<_>>()?;
    let meta = Some(metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    safetensors::serialize_to_file(host.iter().map(|(n, t)| (n.as_str(), t)), meta, path)
        .map_err(|e| Error::Io(std::io::Error::other(format!("{}: {e}", path.display()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn a_name_given_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let twice = [("a".to_string(), t.shallow_clone()), ("a".to_string(), t)];
        assert!(write(&dir.path().join("m.safetensors"), &twice, &[]).is_err());
    }

    #[test]
    fn written_file_reads_back_with_libtorch_and_keeps_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let a = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([7], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        write(
            &path,
            &[("x.a".into(), a.shallow_clone()), ("x.b".into(), b.shallow_clone())],
            &[("format", "pt")],
        )
        .unwrap();
        let back: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        assert!(back["x.a"].equal(&a));
        assert!(back["x.b"].equal(&b));
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    }

    #[test]
    fn an_empty_tensor_is_written_with_its_shape() {
        // A peft module whose every rank was masked has lora_A of shape [0, in].
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let t = Tensor::zeros([0, 5], (Kind::Float, Device::Cpu));
        write(&path, &[("e".into(), t)], &[]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("e").unwrap().shape(), [0, 5]);
    }
}
