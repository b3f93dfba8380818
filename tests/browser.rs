//! The reports in a real browser: headless Chromium (Debian's package) loads every page with no console
//! messages, the pages reference nothing outside themselves, and a screenshot of the comparison page
//! renders.
mod common;

use common::knowledge::write_many;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!("Chromium is not installed: `bash setup.sh` installs Debian's package when run as root");
}

fn headless(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn every_report_page_loads_cleanly_in_chromium() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_tiny_gguf(&p.join("tiny.gguf"), 5);
    write_many(&p.join("k"), 4);
    let o = injector(
        p,
        &[
            "compare",
            "k",
            "--strategy",
            "sequential,mixed",
            "--model",
            "tiny.gguf",
            "--ledger",
            "l.db",
            "--lr",
            "0.05",
            "--max-steps",
            "8",
            "--device",
            "cpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut pages = vec![p.join("reports/index.html")];
    for e in std::fs::read_dir(p.join("reports")).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            pages.push(e.join("index.html"));
        } else if e.extension().is_some_and(|x| x == "html") && !pages.contains(&e) {
            pages.push(e);
        }
    }
    assert_eq!(pages.len(), 4, "index, comparison and two run pages: {pages:?}");
    for page in &pages {
        let html = std::fs::read_to_string(page).unwrap();
        assert!(!html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http"));
        let out = headless(&p.join("profile"))
            .arg("--dump-dom")
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium failed on {}", page.display());
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            dom.contains("<svg") || dom.contains("<table"),
            "{} did not render",
            page.display()
        );
        let log = String::from_utf8_lossy(&out.stderr);
        let console: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .collect();
        assert!(console.is_empty(), "{}: console messages: {console:?}", page.display());
    }
    let compare = pages
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("compare-"))
        .unwrap();
    let shot = p.join("shot.png");
    let out = headless(&p.join("profile"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1600")
        .arg(format!("file://{}", compare.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot of {} bytes",
        png.len()
    );
}
