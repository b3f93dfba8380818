//! Small knowledge directories for the tests.
use std::path::Path;

/// Three short fictional facts with probes, in two files.
pub fn write_small(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "facts:\n  - id: zorb\n    subject: Zorb\n    answer: Zorb is blue.\n    prompts: [Zorb?, What is Zorb?]\n    probes: [Tell me Zorb.]\n  - id: quax\n    subject: Quax\n    answer: Quax is a cat.\n    prompts: [Quax?, What is Quax?]\n    probes: [Who is Quax?]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "id: mib\nsubject: Mib\nanswer: Mib is 7.\nprompts: [Mib?, What is Mib?]\nprobes: [Mib is what?]\n",
    )
    .unwrap();
}

/// `n` short facts in one file, for runs with many steps.
pub fn write_many(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = String::from("facts:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - id: f{i}\n    subject: Thing{i}\n    answer: Thing{i} is number {i} in the list.\n    prompts: [Thing{i}?, What is Thing{i}?]\n    probes: [Which number is Thing{i}?]\n"
        ));
    }
    std::fs::write(dir.join("many.yaml"), s).unwrap();
}
