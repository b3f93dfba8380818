//! A safetensors writer (format: <https://github.com/huggingface/safetensors>, "Format" in its
//! README): an 8-byte little-endian header length N, N bytes of JSON header — for each tensor its
//! `dtype`, `shape` and `data_offsets` `[begin, end)` into the byte buffer, plus an optional
//! `__metadata__` map of strings — padded with spaces so that the buffer starts 8-byte aligned, then
//! the tensors' little-endian bytes back to back, with no gaps.
use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::Path;
use tch::{Kind, Tensor};

/// The safetensors dtype string of a tch kind, for the kinds exports write.
///
/// Errors: bad input for any other kind.
pub fn dtype_name(kind: Kind) -> Result<&'static str> {
    match kind {
        Kind::Float => Ok("F32"),
        Kind::BFloat16 => Ok("BF16"),
        Kind::Half => Ok("F16"),
        other => Err(Error::BadInput(format!("safetensors: no dtype for {other:?}"))),
    }
}

/// The JSON header of `tensors` (name, shape, element kind) laid out in the given order, as bytes
/// padded with spaces to a multiple of 8.
///
/// Errors: a kind [`dtype_name`] does not know, or a name given twice.
pub fn header(tensors: &[(String, Vec<i64>, Kind)], metadata: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        map.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0usize;
    for (name, shape, kind) in tensors {
        let bytes = shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
        let entry = serde_json::json!({
            "dtype": dtype_name(*kind)?,
            "shape": shape,
            "data_offsets": [offset, offset + bytes],
        });
        if map.insert(name.clone(), entry).is_some() {
            return Err(Error::BadInput(format!("safetensors: tensor '{name}' given twice")));
        }
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(map).to_string().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    Ok(text)
}

/// Writes `tensors` (name, tensor; any device, already of the kind to store) to `path` in this
/// order, with `metadata` (transformers expects `format: pt`), and syncs the file.
///
/// Errors: an I/O error, or what [`header`] refuses.
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &[(&str, &str)]) -> Result<()> {
    let layout: Vec<(String, Vec<i64>, Kind)> = tensors.iter().map(|(n, t)| (n.clone(), t.size(), t.kind())).collect();
    let head = header(&layout, metadata)?;
    let file = std::fs::File::create(path)?;
    let mut w = BufWriter::new(file);
    w.write_all(&(head.len() as u64).to_le_bytes())?;
    w.write_all(&head)?;
    for (_, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let mut buf = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, t.numel())?;
        w.write_all(&buf)?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn header_lays_tensors_back_to_back_and_pads_to_eight() {
        let layout = vec![
            ("a".to_string(), vec![2, 3], Kind::Float),
            ("b".to_string(), vec![5], Kind::BFloat16),
        ];
        let h = header(&layout, &[("format", "pt")]).unwrap();
        assert_eq!(h.len() % 8, 0);
        let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
        assert_eq!(v["a"]["data_offsets"], serde_json::json!([0, 24]));
        assert_eq!(v["b"]["data_offsets"], serde_json::json!([24, 34]));
        assert_eq!(v["b"]["dtype"], "BF16");
        assert_eq!(v["__metadata__"]["format"], "pt");
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        let layout = vec![("a".to_string(), vec![1], Kind::Float); 2];
        assert!(header(&layout, &[]).is_err());
    }

    #[test]
    fn written_file_reads_back_with_libtorch() {
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
    }
}
