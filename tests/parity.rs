//! Parity with the reference implementations on the real embedded model, against vectors made once by
//! tests/fixtures/make_fixtures.py: gguf's dequantisers, llama.cpp's tokenizer, transformers' logits.
mod common;

use common::*;
use injector::model::quant::{dequantize, GgmlType};
use injector::model::{load, NoAdapter};
use tch::{Device, Tensor};

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn dequantisation_equals_gguf_reference() {
    let cases = json("dequant.json");
    let mut types = std::collections::BTreeSet::new();
    for c in cases.as_array().unwrap() {
        let ty = match c["type"].as_str().unwrap() {
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q8_0" => GgmlType::Q8_0,
            other => panic!("unexpected fixture type {other}"),
        };
        types.insert(format!(
            "{}:{}",
            c["type"],
            c["source"].as_str().unwrap().starts_with("file")
        ));
        let bytes = hex(c["bytes"].as_str().unwrap());
        let want: Vec<f32> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = dequantize(ty, &bytes, want.len());
        assert_eq!(got, want, "{} from {}", c["type"], c["source"]);
    }
    // Random blocks of all three types and the real file's first Q4_1 and Q8_0 blocks.
    assert_eq!(types.len(), 5, "{types:?}");
}

#[test]
fn token_ids_equal_llama_cpp() {
    let m = load(&real_model(), Device::Cpu).unwrap();
    let cases = json("tokens.json");
    for c in cases.as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["llama_cpp"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // llama.cpp was asked to parse special tokens: the markup form.
        assert_eq!(m.tokenizer.encode_markup(text).unwrap(), want, "text {text:?}");
        if !text.contains("<|") {
            assert_eq!(m.tokenizer.decode(&want), text, "decoding does not round-trip");
        }
    }
}

#[test]
fn chat_template_and_logits_equal_transformers() {
    let m = load(&real_model(), Device::Cpu).unwrap();
    let r = json("logits.json");
    let chat = m
        .tokenizer
        .render_chat(&[("user", "What is the capital of France?")], true)
        .unwrap();
    assert_eq!(
        chat,
        r["chat"].as_str().unwrap(),
        "chat template renders differently from transformers"
    );
    let ids: Vec<i64> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let ours: Vec<i64> = m
        .tokenizer
        .encode_chat(&[("user", "What is the capital of France?")], true)
        .unwrap()
        .into_iter()
        .map(|i| i as i64)
        .collect();
    assert_eq!(ours, ids);
    let logits = tch::no_grad(|| {
        m.model
            .forward(&Tensor::from_slice(&ids).unsqueeze(0), None, &NoAdapter)
    })
    .get(0);
    let cols: Vec<i64> = r["cols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let sampled = logits.index_select(1, &Tensor::from_slice(&cols));
    let want: Vec<f32> = r["sampled"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let want = Tensor::from_slice(&want).reshape(sampled.size());
    let d1 = (&sampled - want).abs().max().double_value(&[]);
    let bytes = std::fs::read(fixture("logits_last.bin")).unwrap();
    let last: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let d2 = (logits.get(-1) - Tensor::from_slice(&last))
        .abs()
        .max()
        .double_value(&[]);
    println!("max |ours - transformers|: sampled columns {d1:.2e}, last position {d2:.2e}");
    assert!(d1 <= 1e-3 && d2 <= 1e-3, "logits differ from transformers: {d1} / {d2}");
    let argmax: Vec<i64> = r["argmax"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap(), argmax);
}
