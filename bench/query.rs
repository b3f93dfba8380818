//! `cargo bench --bench query`: time to first token (from process start, model load included) and
//! decode tokens per second of `injector query` on the embedded model, on this machine.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "Write a short story about a dragon who learns to bake bread.",
    "Explain how a bicycle works.",
];

fn main() {
    let exe = env!("CARGO_BIN_EXE_injector");
    let tokens = 128;
    println!("| prompt | first token (s, from process start) | tokens | decode tokens/s |");
    println!("|---|---|---|---|");
    let mut ttfts = Vec::new();
    let mut rates = Vec::new();
    for p in PROMPTS {
        let start = Instant::now();
        let mut child = Command::new(exe)
            .args(["-v", "query", p, "--max-tokens", &tokens.to_string(), "--device", "cpu"])
            .env("RUST_LOG", "injector=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run `bash setup.sh` first");
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        out.read_exact(&mut first).expect("an answer");
        let ttft = start.elapsed().as_secs_f64();
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        let o = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&o.stderr);
        // "first token after X s; N tokens at R tokens/s"
        let line = log
            .lines()
            .find(|l| l.contains("tokens/s"))
            .expect("-v prints the rate");
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "at").unwrap();
        let n: usize = words[at - 2].parse().unwrap();
        let rate: f64 = words[at + 1].parse().unwrap();
        println!("| {p} | {ttft:.2} | {n} | {rate:.1} |");
        ttfts.push(ttft);
        rates.push(rate);
    }
    ttfts.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    println!(
        "| **median** | {:.2} (goal ≤ 3) | | {:.1} (goal ≥ 20) |",
        ttfts[1], rates[1]
    );
}
