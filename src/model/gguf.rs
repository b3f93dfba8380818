//! GGUF reader and writer (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).
//!
//! The reader checks every length and offset against the file before it trusts it: a truncated or
//! fuzzed file gives an error, never a panic or a huge allocation.
use super::quant::{dequantize, ggml_type_name, GgmlType};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// The most elements reserved ahead for a count read from the file.
const PREALLOCATE: usize = 1 << 16;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    /// An array with no elements, with the GGUF id of its element type (which an empty
    /// [`Value::Array`] cannot tell, and llama.cpp checks: `tokenizer.ggml.merges` must be strings).
    EmptyArray(u32),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, whatever its integer width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a float, from any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An array of strings (an [`Value::EmptyArray`] of strings when there are none).
    pub fn strings(items: Vec<String>) -> Value {
        if items.is_empty() {
            Value::EmptyArray(8)
        } else {
            Value::Array(items.into_iter().map(Value::Str).collect())
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            Value::EmptyArray(_) => Some(&[]),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Shape in PyTorch order (outermost first).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: metadata and tensor directory, data memory-mapped.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(format!(
                "truncated: needs {n} bytes at offset {}, {left} left",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N as u64)?.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("string at offset {} is not UTF-8", self.pos))
    }

    fn value(&mut self, ty: u32, depth: u32) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("metadata arrays nested too deeply".into());
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count beyond the bytes left is corrupt.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(format!("array of {n} elements at offset {} exceeds the file", self.pos));
                }
                if n == 0 {
                    return Ok(Value::EmptyArray(ety));
                }
                // Capacity grows with what is read: a count that is only bounded by the file's size
                // would reserve 32 bytes an element up front, gigabytes for a model file.
                let mut v = Vec::with_capacity((n as usize).min(PREALLOCATE));
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl Gguf {
    /// Opens and validates a GGUF file (header, metadata, tensor directory, data bounds).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::bad_model(path, format!("cannot open: {e}")))?;
        // SAFETY: the file is opened read-only and the map lives as long as `Gguf`; a file
        // changed underneath us is the same hazard every mmap-based model loader accepts.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::bad_model(path, format!("cannot map: {e}")))?;
        Self::parse(path, map).map_err(|msg| Error::bad_model(path, format!("not a valid GGUF file: {msg}")))
    }

    fn parse(path: &Path, map: memmap2::Mmap) -> std::result::Result<Self, String> {
        let mut c = Cursor { buf: &map, pos: 0 };
        if c.take(4)
            .map_err(|_| "file is shorter than the GGUF magic".to_string())?
            != MAGIC
        {
            return Err("bad magic (expected 'GGUF')".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version} (supported: 2, 3)"));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        if n_tensors > map.len() as u64 || n_kv > map.len() as u64 {
            return Err("tensor or metadata count exceeds the file size".into());
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0).map_err(|e| format!("metadata '{key}': {e}"))?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity((n_tensors as usize).min(PREALLOCATE));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()?;
            if nd == 0 || nd > 4 {
                return Err(format!("tensor '{name}' has {nd} dimensions"));
            }
            let dims = (0..nd).map(|_| c.u64()).collect::<std::result::Result<Vec<_>, _>>()?;
            let type_id = c.u32()?;
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                type_id,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        if align == 0 || !align.is_power_of_two() {
            return Err(format!("bad alignment {align}"));
        }
        let data_start = (c.pos as u64).div_ceil(align) * align;
        let data_len = (map.len() as u64).saturating_sub(data_start);
        for t in &tensors {
            // The format requires it, and llama.cpp refuses a file without it.
            if t.offset % align != 0 {
                return Err(format!(
                    "tensor '{}' offset {} is not a multiple of the alignment {align}",
                    t.name, t.offset
                ));
            }
            let numel = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("tensor '{}' element count overflows", t.name))?;
            if let Ok(ty) = GgmlType::from_id(t.type_id) {
                if t.dims[0] % ty.block_len() as u64 != 0 {
                    return Err(format!(
                        "tensor '{}' row length is not a whole number of blocks",
                        t.name
                    ));
                }
                let bytes = (numel / ty.block_len() as u64)
                    .checked_mul(ty.block_bytes() as u64)
                    .ok_or_else(|| format!("tensor '{}' size overflows", t.name))?;
                let end = t
                    .offset
                    .checked_add(bytes)
                    .ok_or_else(|| format!("tensor '{}' offset overflows", t.name))?;
                if end > data_len {
                    return Err(format!("truncated: tensor '{}' ends past the end of the file", t.name));
                }
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start: data_start as usize,
            map,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor directory entry by name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Decodes one tensor to f32, with its shape in PyTorch order.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<(Vec<f32>, Vec<i64>)> {
        let ty = GgmlType::from_id(info.type_id).map_err(|ty| Error::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ty,
        })?;
        let n = info.numel() as usize;
        let start = self.data_start + info.offset as usize;
        let len = n / ty.block_len() * ty.block_bytes();
        Ok((dequantize(ty, &self.map[start..start + len], n), info.shape()))
    }

    /// The raw bytes of one tensor (its blocks as stored).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let ty = GgmlType::from_id(info.type_id).map_err(|ty| Error::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ty,
        })?;
        let start = self.data_start + info.offset as usize;
        let len = info.numel() as usize / ty.block_len() * ty.block_bytes();
        Ok(&self.map[start..start + len])
    }

    /// The type name of a tensor, for messages.
    pub fn type_name(info: &TensorInfo) -> String {
        ggml_type_name(info.type_id)
    }
}

/// A tensor to write: raw blocks of a given GGML type id.
pub struct WriteTensor {
    pub name: String,
    /// ggml order, innermost first.
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

impl WriteTensor {
    /// An F32 tensor from values in PyTorch order with the given PyTorch shape.
    pub fn f32(name: &str, shape: &[i64], values: &[f32]) -> Self {
        WriteTensor {
            name: name.to_string(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            type_id: 0,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn write_str(w: &mut Vec<u8>, s: &str) {
    w.extend((s.len() as u64).to_le_bytes());
    w.extend(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) | Value::EmptyArray(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(w: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => w.push(*x),
        Value::I8(x) => w.push(*x as u8),
        Value::U16(x) => w.extend(x.to_le_bytes()),
        Value::I16(x) => w.extend(x.to_le_bytes()),
        Value::U32(x) => w.extend(x.to_le_bytes()),
        Value::I32(x) => w.extend(x.to_le_bytes()),
        Value::F32(x) => w.extend(x.to_le_bytes()),
        Value::Bool(x) => w.push(*x as u8),
        Value::Str(s) => write_str(w, s),
        Value::Array(items) => {
            let ety = items.first().map(value_type).unwrap_or(4);
            w.extend(ety.to_le_bytes());
            w.extend((items.len() as u64).to_le_bytes());
            for it in items {
                write_value(w, it);
            }
        }
        Value::EmptyArray(ety) => {
            w.extend(ety.to_le_bytes());
            w.extend(0u64.to_le_bytes());
        }
        Value::U64(x) => w.extend(x.to_le_bytes()),
        Value::I64(x) => w.extend(x.to_le_bytes()),
        Value::F64(x) => w.extend(x.to_le_bytes()),
    }
}

/// The alignment of tensor data in the files this module writes (GGUF's default, also written as
/// `general.alignment` by the exporter).
pub const ALIGNMENT: u64 = DEFAULT_ALIGNMENT;

/// A tensor's entry in the directory of a file to write: its data comes after the header, in the
/// same order, each tensor starting at a multiple of [`ALIGNMENT`].
pub struct TensorEntry {
    pub name: String,
    /// ggml order, innermost first.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// The size of its data in bytes.
    pub bytes: u64,
}

/// The bytes of a GGUF v3 file before its tensor data (magic, version, counts, metadata, tensor
/// directory, padding to the alignment), and each tensor's offset from the start of the data.
pub fn header(metadata: &[(String, Value)], tensors: &[TensorEntry]) -> (Vec<u8>, Vec<u64>) {
    let mut w = Vec::new();
    w.extend(MAGIC);
    w.extend(3u32.to_le_bytes());
    w.extend((tensors.len() as u64).to_le_bytes());
    w.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_str(&mut w, k);
        w.extend(value_type(v).to_le_bytes());
        write_value(&mut w, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        write_str(&mut w, &t.name);
        w.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            w.extend(d.to_le_bytes());
        }
        w.extend(t.type_id.to_le_bytes());
        w.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.bytes).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    w.resize((w.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize, 0);
    (w, offsets)
}

/// Writes a GGUF v3 file with the given metadata and tensors.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[WriteTensor]) -> std::io::Result<()> {
    let entries: Vec<TensorEntry> = tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            dims: t.dims.clone(),
            type_id: t.type_id,
            bytes: t.data.len() as u64,
        })
        .collect();
    let (mut w, offsets) = header(metadata, &entries);
    let data_start = w.len();
    for (t, off) in tensors.iter().zip(offsets) {
        w.resize(data_start + off as usize, 0);
        w.extend(&t.data);
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&w)?;
    f.sync_all()
}
