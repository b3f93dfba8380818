//! A deterministic GGUF mutation test. The tiny model's valid GGUF file is walked field by field
//! (header counts, key and string lengths, value and array types, array lengths, metadata values,
//! tensor dimensions, types and offsets) and mutated: each field set to values chosen to break it,
//! the file truncated at many lengths, bytes flipped, inserted and deleted at seeded random places.
//! Every mutant is loaded in-process; a mutant that loads must also run a forward pass. None may
//! panic or hang: each either loads or is refused as bad input naming the file.
mod common;

use common::*;
use injector::model::{load, NoAdapter};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// What a field of the file holds, for choosing the values that break it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Version,
    Count,
    StrLen,
    ValueType,
    ArrayType,
    ArrayLen,
    U32Value,
    F32Value,
    NDims,
    Dim,
    TensorType,
    Offset,
}

/// One field of the valid file: where it lies, how wide it is, and a name for messages.
#[derive(Clone, Debug)]
struct Field {
    at: usize,
    width: usize,
    kind: Kind,
    name: String,
}

/// Reads the valid file's layout (the writer's own format: GGUF v3, little-endian).
struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
}

impl Walker<'_> {
    fn u32(&mut self, kind: Kind, name: &str) -> u32 {
        let v = u32::from_le_bytes(self.b[self.pos..self.pos + 4].try_into().unwrap());
        self.fields.push(Field {
            at: self.pos,
            width: 4,
            kind,
            name: name.into(),
        });
        self.pos += 4;
        v
    }

    fn u64(&mut self, kind: Kind, name: &str) -> u64 {
        let v = u64::from_le_bytes(self.b[self.pos..self.pos + 8].try_into().unwrap());
        self.fields.push(Field {
            at: self.pos,
            width: 8,
            kind,
            name: name.into(),
        });
        self.pos += 8;
        v
    }

    fn string(&mut self, name: &str) -> String {
        let n = self.u64(Kind::StrLen, &format!("{name} length")) as usize;
        let s = String::from_utf8(self.b[self.pos..self.pos + n].to_vec()).unwrap();
        self.pos += n;
        s
    }

    fn value(&mut self, ty: u32, name: &str) {
        match ty {
            0 | 1 | 7 => self.pos += 1,
            2 | 3 => self.pos += 2,
            4 | 5 => {
                self.u32(Kind::U32Value, name);
            }
            6 => {
                self.u32(Kind::F32Value, name);
            }
            10..=12 => self.pos += 8,
            8 => {
                self.string(name);
            }
            9 => {
                let ety = self.u32(Kind::ArrayType, &format!("{name} element type"));
                let n = self.u64(Kind::ArrayLen, &format!("{name} length"));
                for i in 0..n {
                    self.value(ety, &format!("{name}[{i}]"));
                }
            }
            other => panic!("type {other} in the valid file"),
        }
    }
}

/// The fields of the valid file, and where its tensor data starts.
fn layout(b: &[u8]) -> (Vec<Field>, usize) {
    let mut w = Walker {
        b,
        pos: 4,
        fields: Vec::new(),
    };
    w.u32(Kind::Version, "version");
    let n_tensors = w.u64(Kind::Count, "tensor count");
    let n_kv = w.u64(Kind::Count, "metadata count");
    for _ in 0..n_kv {
        let key = w.string("key");
        let ty = w.u32(Kind::ValueType, &format!("{key} type"));
        w.value(ty, &key);
    }
    for _ in 0..n_tensors {
        let name = w.string("tensor name");
        let nd = w.u32(Kind::NDims, &format!("{name} dimensions"));
        for i in 0..nd {
            w.u64(Kind::Dim, &format!("{name} dim {i}"));
        }
        w.u32(Kind::TensorType, &format!("{name} type"));
        w.u64(Kind::Offset, &format!("{name} offset"));
    }
    let data = w.pos.div_ceil(32) * 32;
    (w.fields, data)
}

/// Values that break a field holding `v`.
fn breaking_values(f: &Field, v: u64, file_len: u64) -> Vec<u64> {
    let big = [1 << 31, 1 << 32, 1 << 62, 1 << 63, u64::MAX];
    let near = [0, 1, v.wrapping_sub(1), v.wrapping_add(1), v.wrapping_mul(2)];
    let f32s = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0, 1e30, 1e-30];
    let mut out: Vec<u64> = match f.kind {
        Kind::Version => vec![0, 1, 2, 4, u32::MAX as u64],
        Kind::Count | Kind::StrLen | Kind::ArrayLen => [&near[..], &big, &[file_len]].concat(),
        Kind::ValueType | Kind::ArrayType => (0..=13).chain([99, u32::MAX as u64]).collect(),
        Kind::U32Value => [&near[..], &[1 << 16, 1 << 31, u32::MAX as u64]].concat(),
        Kind::F32Value => f32s.iter().map(|x| x.to_bits() as u64).collect(),
        Kind::NDims => (0..=5).chain([u32::MAX as u64]).collect(),
        Kind::Dim => [&near[..], &[32, 33, 3 << 30], &big].concat(),
        Kind::TensorType => (0..=40).chain([1000, u32::MAX as u64]).collect(),
        Kind::Offset => [&near[..], &[v.wrapping_add(32), v.wrapping_sub(32), file_len], &big].concat(),
    };
    // A 4-byte field takes the low half; duplicates and the value itself are no mutation.
    if f.width == 4 {
        out.iter_mut().for_each(|x| *x &= u32::MAX as u64);
    }
    out.sort();
    out.dedup();
    out.retain(|&x| x != v);
    out
}

fn read_field(b: &[u8], f: &Field) -> u64 {
    let mut le = [0u8; 8];
    le[..f.width].copy_from_slice(&b[f.at..f.at + f.width]);
    u64::from_le_bytes(le)
}

fn with_field(b: &[u8], f: &Field, v: u64) -> Vec<u8> {
    let mut m = b.to_vec();
    m[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
    m
}

/// splitmix64, seeded: the same mutants on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every mutant of `valid`, described.
fn mutants(valid: &[u8]) -> Vec<(String, Vec<u8>)> {
    let (fields, data_start) = layout(valid);
    let len = valid.len();
    let mut out = Vec::new();
    // The token list has 259 strings: a sample of their lengths stands for the rest.
    let mut tokens_seen = 0;
    for f in &fields {
        if f.name.starts_with("tokenizer.ggml.t") && f.name.contains('[') {
            tokens_seen += 1;
            if tokens_seen % 16 != 1 {
                continue;
            }
        }
        let v = read_field(valid, f);
        for x in breaking_values(f, v, len as u64) {
            out.push((format!("{} = {x:#x} (was {v:#x})", f.name), with_field(valid, f, x)));
        }
    }
    let mut rng = Rng(0x1234_5678);
    // Truncations: every 37 bytes of the header, and across the data.
    for n in (0..data_start)
        .step_by(37)
        .chain((data_start..len).step_by((len - data_start) / 40))
    {
        out.push((format!("truncated to {n} bytes"), valid[..n].to_vec()));
    }
    // Random bytes, mostly in the header where they change meaning rather than a weight.
    for i in 0..400 {
        let mut m = valid.to_vec();
        let span = if i % 4 == 3 { len } else { data_start };
        let k = 1 + rng.below(8);
        let mut at = Vec::new();
        for _ in 0..k {
            let p = rng.below(span);
            m[p] = rng.next() as u8;
            at.push(p);
        }
        out.push((format!("bytes at {at:?} replaced"), m));
    }
    // A byte inserted or deleted in the header shifts everything after it.
    for i in 0..100 {
        let mut m = valid.to_vec();
        let p = rng.below(data_start);
        let what = if i % 2 == 0 {
            m.insert(p, rng.next() as u8);
            "inserted"
        } else {
            m.remove(p);
            "deleted"
        };
        out.push((format!("a byte {what} at {p}"), m));
    }
    // Bytes appended: a file longer than its tensors is fine, but must not confuse the reader.
    out.push(("64 kB appended".into(), [valid, &vec![0xAB; 1 << 16]].concat()));
    out
}

/// What loading a mutant came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Refused,
    Loaded,
    /// An error that is not bad input, or does not name the file.
    WrongError(String),
    Panicked(String),
}

/// Loads the file at `path` (and, when it loads, runs one forward pass), catching panics.
fn try_load(path: &Path) -> Outcome {
    let r = catch_unwind(AssertUnwindSafe(|| match load(path, Device::Cpu) {
        Ok(m) => {
            let ids = m.tokenizer.encode_chat(&[("user", "hi")], true).unwrap_or_default();
            let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            if !ids.is_empty() {
                let _ = tch::no_grad(|| {
                    m.model
                        .forward(&Tensor::from_slice(&ids).unsqueeze(0), None, &NoAdapter)
                });
            }
            Outcome::Loaded
        }
        Err(e) if e.is_bad_input() && e.to_string().contains(&path.display().to_string()) => Outcome::Refused,
        Err(e) => Outcome::WrongError(e.to_string()),
    }));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::Panicked(msg.lines().next().unwrap_or("").to_string())
    })
}

/// Loads every mutant in a worker thread, failing the test when one takes longer than a loader
/// ever should (a hang: the worker is abandoned).
fn load_all(dir: &Path, mutants: Vec<(String, Vec<u8>)>) -> Vec<(String, Outcome)> {
    let n = mutants.len();
    let done = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let path = dir.join("mutant.gguf");
    let names: Vec<String> = mutants.iter().map(|(d, _)| d.clone()).collect();
    let worker = {
        let (done, results) = (done.clone(), results.clone());
        std::thread::spawn(move || {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            for (desc, bytes) in mutants {
                std::fs::write(&path, &bytes).unwrap();
                let o = try_load(&path);
                results.lock().unwrap().push((desc, o));
                done.fetch_add(1, Ordering::SeqCst);
            }
            std::panic::set_hook(hook);
        })
    };
    let (mut last, mut since) = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let now = done.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "mutant {now} ({}) hangs the loader",
            names[now]
        );
    }
    worker.join().unwrap();
    Arc::try_unwrap(results).unwrap().into_inner().unwrap()
}

/// The valid tiny file with field `name` set to `v`, written to `dir/name.gguf`.
fn with_named_field(dir: &Path, name: &str, v: u64) -> std::path::PathBuf {
    let valid_path = dir.join("valid.gguf");
    write_tiny_gguf(&valid_path, 5);
    let valid = std::fs::read(&valid_path).unwrap();
    let (fields, _) = layout(&valid);
    let f = fields.iter().find(|f| f.name == name).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, with_field(&valid, f, v)).unwrap();
    path
}

/// Mutants that once panicked, each as found.
#[test]
fn mutants_that_panicked_are_refused() {
    let d = tempfile::tempdir().unwrap();
    // A Q or K projection whose rows do not split into the heads (31 of 32) panicked in the
    // reshape that undoes llama.cpp's row order.
    for (name, v) in [("blk.0.attn_q.weight dim 1", 31), ("blk.1.attn_k.weight dim 1", 0x21)] {
        let path = with_named_field(d.path(), name, v);
        let e = load(&path, Device::Cpu).err().expect("refused");
        assert!(e.is_bad_input(), "{e}");
        assert!(e.to_string().contains("has shape"), "{e}");
    }
}

#[test]
fn mutated_gguf_files_load_or_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let valid_path = d.path().join("valid.gguf");
    write_tiny_gguf(&valid_path, 5);
    let valid = std::fs::read(&valid_path).unwrap();
    assert_eq!(try_load(&valid_path), Outcome::Loaded);
    let all = mutants(&valid);
    let t = Instant::now();
    let results = load_all(d.path(), all);
    let count = |f: &dyn Fn(&Outcome) -> bool| results.iter().filter(|(_, o)| f(o)).count();
    let refused = count(&|o| *o == Outcome::Refused);
    let loaded = count(&|o| *o == Outcome::Loaded);
    println!(
        "{} mutants in {:.1?}: {refused} refused, {loaded} loaded",
        results.len(),
        t.elapsed()
    );
    let bad: Vec<String> = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Panicked(_) | Outcome::WrongError(_)))
        .map(|(d, o)| format!("{d}: {o:?}"))
        .collect();
    assert!(results.len() >= 1000, "only {} mutants", results.len());
    assert!(
        bad.is_empty(),
        "{} of {} mutants:\n{}",
        bad.len(),
        results.len(),
        bad.join("\n")
    );
}
