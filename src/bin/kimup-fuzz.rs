//! kimup-fuzz: runs every parser of tenant or network input on generated inputs and prints, per
//! parser, the cases run, the panics and the slowest input (README, "Fuzzing").
//!
//! Exits non-zero on any panic or any input slower than 10 ms.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use kimup::fuzz::{self, Fuzzer, Report};

/// Slowest acceptable time for one input.
const BUDGET: Duration = Duration::from_millis(10);

/// Stack of the thread that runs the parsers: tokio's worker default, where kimup runs them, so
/// that a recursion too deep for kimup is too deep here.
const STACK: usize = 2 * 1024 * 1024;

/// One case running this long is a hang: the run stops and names it.
const HANG: Duration = Duration::from_secs(10);

/// Fuzzes kimup's parsers of tenant and network input.
#[derive(Parser)]
#[command(name = "kimup-fuzz")]
struct Args {
    /// Cases per parser.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    /// Seed of the generated inputs; a run is reproducible from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these parsers (comma-separated names; see the report for the list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print one case's input and run it without catching its panic (for a backtrace).
    #[arg(long)]
    case: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = fuzz::all();
    let names: Vec<&str> = all.iter().map(|t| t.name()).collect();
    if let Some(unknown) = args.only.iter().find(|n| !names.contains(&n.as_str())) {
        eprintln!("unknown parser {unknown:?}; parsers: {}", names.join(", "));
        return ExitCode::from(2);
    }
    let selected: Vec<&'static dyn Fuzzer> = all
        .into_iter()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|n| n == t.name()))
        .collect();

    if let Some(case) = args.case {
        for target in &selected {
            println!(
                "{} case {case}: {}",
                target.name(),
                target.show(args.seed, case)
            );
            let time = target.replay(args.seed, case);
            println!("{} case {case}: {} of CPU", target.name(), millis(time));
        }
        return ExitCode::SUCCESS;
    }

    fuzz::quiet_panics();
    println!(
        "kimup-fuzz: seed {}, {} cases per parser, budget {} of CPU per input \
         (thread CPU time; slow cases: fastest of 3 runs)",
        args.seed,
        args.cases,
        millis(BUDGET)
    );
    println!(
        "{:<22} {:>8} {:>7} {:>10} {:>10}  slowest input (#case)",
        "parser", "cases", "panics", "slowest", "its wall"
    );
    let started = Instant::now();
    let mut reports = Vec::new();
    for target in selected {
        match run(target, args.seed, args.cases) {
            Some(report) => {
                print_row(&report);
                reports.push(report);
            }
            None => return ExitCode::FAILURE,
        }
    }
    summarise(&reports, started.elapsed())
}

/// Runs one parser on its own thread, watching for a hang; `None` if it hung or the generator
/// itself panicked.
fn run(target: &'static dyn Fuzzer, seed: u64, cases: u64) -> Option<Report> {
    let progress = Arc::new(AtomicU64::new(0));
    let worker = {
        let progress = Arc::clone(&progress);
        thread::Builder::new()
            .name(format!("fuzz-{}", target.name()))
            .stack_size(STACK)
            .spawn(move || target.run(seed, cases, &progress))
    };
    let worker = match worker {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("cannot start a thread for {}: {e}", target.name());
            return None;
        }
    };
    let (mut case, mut since) = (u64::MAX, Instant::now());
    while !worker.is_finished() {
        thread::sleep(Duration::from_millis(50));
        let now = progress.load(Ordering::Relaxed);
        if now != case {
            (case, since) = (now, Instant::now());
        } else if since.elapsed() > HANG {
            println!(
                "{}: case {case} has run for more than {} s: {}",
                target.name(),
                HANG.as_secs(),
                fuzz_excerpt(&target.show(seed, case))
            );
            // The hung thread cannot be stopped; the process exits without it.
            std::process::exit(1);
        }
    }
    match worker.join() {
        Ok(report) => Some(report),
        Err(_) => {
            println!(
                "{}: the generator panicked at case {} (a fuzzer bug, not a parser bug)",
                target.name(),
                progress.load(Ordering::Relaxed)
            );
            None
        }
    }
}

/// A long escaped input cut for the terminal.
fn fuzz_excerpt(escaped: &str) -> String {
    const MAX: usize = 400;
    if escaped.chars().count() <= MAX {
        return escaped.to_string();
    }
    let head: String = escaped.chars().take(MAX).collect();
    format!("{head}…")
}

fn print_row(report: &Report) {
    let (time, wall, input) = match &report.slowest {
        Some(f) => (
            millis(f.time),
            millis(f.wall),
            format!("{} (#{})", f.input, f.case),
        ),
        None => ("-".to_string(), "-".to_string(), String::new()),
    };
    println!(
        "{:<22} {:>8} {:>7} {:>10} {:>10}  {input}",
        report.name, report.cases, report.panics, time, wall
    );
    if let Some(p) = &report.first_panic {
        println!(
            "  first panic (#{}): {}\n  input: {}",
            p.case,
            p.message.as_deref().unwrap_or(""),
            p.input
        );
    }
}

/// Prints the totals; failure if anything panicked or was slower than the budget.
fn summarise(reports: &[Report], elapsed: Duration) -> ExitCode {
    let cases: u64 = reports.iter().map(|r| r.cases).sum();
    let panics: u64 = reports.iter().map(|r| r.panics).sum();
    let slowest = reports
        .iter()
        .filter_map(|r| r.slowest.as_ref().map(|f| (f.time, r.name)))
        .max();
    let slow: Vec<&str> = reports
        .iter()
        .filter(|r| r.slowest.as_ref().is_some_and(|f| f.time > BUDGET))
        .map(|r| r.name)
        .collect();
    println!(
        "total: {} parsers, {cases} cases, {panics} panics, slowest {}, in {:.1} s",
        reports.len(),
        slowest.map_or("-".to_string(), |(t, name)| format!(
            "{} ({name})",
            millis(t)
        )),
        elapsed.as_secs_f64()
    );
    if panics > 0 || !slow.is_empty() {
        if !slow.is_empty() {
            println!("slower than {}: {}", millis(BUDGET), slow.join(", "));
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn millis(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
