//! The `injector` binary: parse, set up logging, dispatch, and map errors to exit codes
//! (0 success, 1 run failed, 2 bad input).
mod cli;

use clap::Parser;
use std::process::ExitCode;

fn init_tracing(verbose: u8, quiet: bool) {
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("injector={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or a pipe gets plain lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Ends the process for arguments clap refuses: help and version as clap prints them; anything
/// else as the rest of the tool's bad input, one line on stderr and exit 2 — clap's error line, the
/// possible values where it lists them, how to give a negative number (`--protect=-1`: clap's own
/// tip, `-- -1`, does not work for an option's value), and where the flags are listed.
fn parse_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let first = lines
        .first()
        .map_or("bad arguments", |l| l.trim_start_matches("error: "));
    let mut line = first.to_string();
    if let Some(values) = lines.iter().find(|l| l.starts_with("[possible values: ")) {
        line.push(' ');
        line.push_str(values);
    }
    if let ErrorKind::MissingRequiredArgument = e.kind() {
        // clap lists what is missing on the lines after its first: `--consolidate`, `<RUN>`.
        let missing: Vec<&str> = lines[1..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with("Usage:"))
            .collect();
        line = format!("{}: {}", line.trim_end_matches(':'), missing.join(", "));
    }
    if let ErrorKind::UnknownArgument = e.kind() {
        let arg = first.split('\'').nth(1).unwrap_or("");
        if arg.parse::<f64>().is_ok() {
            line.push_str(&format!("; a negative value goes with `=`: --flag={arg}"));
        }
    }
    eprintln!("error: {line} (`injector --help`, `injector <command> --help`)");
    std::process::exit(2);
}

fn main() -> ExitCode {
    // A closed output pipe (`injector ledger list | head`) ends the process as it ends other Unix
    // tools, by SIGPIPE, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => parse_error(e),
    };
    init_tracing(cli.global.verbose, cli.global.quiet);
    tracing::debug!("started");
    match cli::dispatch(cli) {
        Ok(()) => {
            // Everything is written and closed (the ledger, the reports, the output, flushed here),
            // so the process ends now: the C++ teardown of libtorch's CUDA state at exit (the
            // caching allocator, the context) only costs time at the end of a GPU run (~0.2–0.5 s,
            // bench/NOTES.md item 37). The rule this relies on: nothing that must run its Drop (a
            // BufWriter, a temporary folder, a thread writing files) may outlive `dispatch`.
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process without running handlers; nothing is left to flush.
            unsafe { libc::_exit(0) }
        }
        Err(e) => {
            let bad_input = e
                .chain()
                .any(|c| c.downcast_ref::<injector::Error>().is_some_and(|e| e.is_bad_input()));
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}
