//! Fuzzing of every parser that takes tenant or network input: generators and a runner.
//!
//! One kimup parses the Images, secrets, webhooks and registry answers of every tenant, so a
//! panic or a slow input in a parser takes the controller down for everyone. The `kimup-fuzz`
//! binary runs these generators at 100,000 cases per parser and prints timings; `tests/fuzz.rs`
//! runs the same generators at a smaller count in the default test suite.
//!
//! Inputs come from a seeded PRNG, one stream per case, so any case can be replayed from
//! `(seed, parser, case)`. Each parser gets a mix of random bytes, mutations of valid seeds
//! (real tags, crontabs, templates, payloads...) and structure-aware builders that know the
//! format's field names and grammar.

mod inputs;
mod targets;

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use targets::all;

/// Longest input excerpt a report shows, in characters of its escaped form.
const SHOWN_CHARS: usize = 240;

/// Cases slower than this are timed twice more and keep their fastest times.
const RETIME_ABOVE: Duration = Duration::from_millis(1);

thread_local! {
    /// Where the last panic on this thread happened, when [`quiet_panics`] is installed.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook with one that prints nothing and records the panic's location for
/// the report: a run of 100,000 cases should not print a backtrace per panic.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| l.to_string());
        PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
    }));
}

/// A small, fast, seeded PRNG (SplitMix64): reproducible inputs without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole stream follows from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // usize is at most 64 bits on every supported target, so both casts are lossless.
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True once in `n` calls on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One item of a non-empty slice (the generators only pass constant, non-empty tables).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A reference to one item of a non-empty slice.
    pub fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One parser under fuzzing: how to build an input and how to feed it to the parser.
pub trait Target: Sync {
    /// The generated input, printed (escaped) when it panics or is the slowest.
    type Input: fmt::Debug;

    /// Name used by `--only` and in reports.
    fn name(&self) -> &'static str;

    /// Builds one input from the case's own random stream.
    fn generate(&self, rng: &mut Rng) -> Self::Input;

    /// Feeds the input to the parser (and to what consumes its result); may panic on a bug.
    fn exercise(&self, input: &Self::Input);
}

/// What a run of one parser found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The parser's name.
    pub name: &'static str,
    /// Cases run.
    pub cases: u64,
    /// Cases that panicked.
    pub panics: u64,
    /// The first panicking case.
    pub first_panic: Option<Finding>,
    /// The slowest case that did not panic.
    pub slowest: Option<Finding>,
}

/// One notable case: which it was, its input and what happened.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Case number, for `--case`.
    pub case: u64,
    /// The input, escaped and truncated.
    pub input: String,
    /// CPU time the parser took (the fastest of three runs for slow cases).
    pub time: Duration,
    /// Wall time it took (likewise the fastest of three).
    pub wall: Duration,
    /// The panic message, for panics.
    pub message: Option<String>,
}

/// A parser's runner, whatever its input type.
pub trait Fuzzer: Sync {
    /// Name used by `--only` and in reports.
    fn name(&self) -> &'static str;

    /// Runs `cases` cases from `seed`, storing the current case number in `progress`.
    fn run(&self, seed: u64, cases: u64, progress: &AtomicU64) -> Report;

    /// The escaped, untruncated input of one case.
    fn show(&self, seed: u64, case: u64) -> String;

    /// Runs one case without catching its panic (for a backtrace) and returns its CPU time.
    fn replay(&self, seed: u64, case: u64) -> Duration;
}

impl<T: Target> Fuzzer for T {
    fn name(&self) -> &'static str {
        Target::name(self)
    }

    fn run(&self, seed: u64, cases: u64, progress: &AtomicU64) -> Report {
        let name = Target::name(self);
        let mut report = Report {
            name,
            cases: 0,
            panics: 0,
            first_panic: None,
            slowest: None,
        };
        for case in 0..cases {
            progress.store(case, Ordering::Relaxed);
            let input = self.generate(&mut case_rng(seed, name, case));
            let started = Stopwatch::start();
            let outcome = catch_unwind(AssertUnwindSafe(|| self.exercise(&input)));
            let (mut time, mut wall) = started.stop();
            report.cases += 1;
            match outcome {
                Err(payload) => {
                    report.panics += 1;
                    if report.first_panic.is_none() {
                        report.first_panic = Some(Finding {
                            case,
                            input: excerpt(&format!("{input:?}")),
                            time,
                            wall,
                            message: Some(panic_message(payload.as_ref())),
                        });
                    }
                }
                Ok(()) => {
                    let slowest = report.slowest.as_ref().map_or(Duration::ZERO, |f| f.time);
                    if time <= slowest {
                        continue;
                    }
                    if time > RETIME_ABOVE {
                        for _ in 0..2 {
                            let again = Stopwatch::start();
                            // The first run did not panic, and the parsers are deterministic.
                            let _ = catch_unwind(AssertUnwindSafe(|| self.exercise(&input)));
                            let (cpu, elapsed) = again.stop();
                            (time, wall) = (time.min(cpu), wall.min(elapsed));
                        }
                    }
                    if time > slowest {
                        report.slowest = Some(Finding {
                            case,
                            input: excerpt(&format!("{input:?}")),
                            time,
                            wall,
                            message: None,
                        });
                    }
                }
            }
        }
        report
    }

    fn show(&self, seed: u64, case: u64) -> String {
        let input = self.generate(&mut case_rng(seed, Target::name(self), case));
        format!("{input:?}")
    }

    fn replay(&self, seed: u64, case: u64) -> Duration {
        let input = self.generate(&mut case_rng(seed, Target::name(self), case));
        let started = Stopwatch::start();
        self.exercise(&input);
        started.stop().0
    }
}

/// Measures a case by the CPU time of its thread, so that the figures do not depend on what
/// else the (shared) machine runs; wall time is kept beside it.
struct Stopwatch {
    cpu: Option<Duration>,
    wall: Instant,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            cpu: thread_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// CPU time (wall time where the clock is missing) and wall time since the start.
    fn stop(&self) -> (Duration, Duration) {
        let wall = self.wall.elapsed();
        match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(now)) => (now.saturating_sub(start), wall),
            _ => (wall, wall),
        }
    }
}

/// CPU time used by the calling thread so far, if the platform has the clock.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// CPU time used by the calling thread so far, if the platform has the clock.
#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The random stream of one case: independent of the other cases and of the other parsers.
fn case_rng(seed: u64, name: &str, case: u64) -> Rng {
    // FNV-1a of the name, so that adding a parser does not change the others' inputs.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut mixer = Rng::new(seed ^ name_hash);
    let base = mixer.next_u64();
    let mut rng = Rng::new(base ^ case.wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64();
    rng
}

/// The text a panic carried, and where it happened when [`quiet_panics`] recorded it.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(panic payload is not a string)".to_string()
    };
    match PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}

/// The start of an escaped input, with its full length when it is cut.
fn excerpt(escaped: &str) -> String {
    let total = escaped.chars().count();
    if total <= SHOWN_CHARS {
        return escaped.to_string();
    }
    let head: String = escaped.chars().take(SHOWN_CHARS).collect();
    format!("{head}… ({total} chars escaped)")
}

/// Bytes shown as an escaped byte string (`b"..."`) rather than a list of numbers.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_reproducible_and_distinct() {
        let a = case_rng(7, "cron", 3).next_u64();
        assert_eq!(a, case_rng(7, "cron", 3).next_u64());
        assert_ne!(a, case_rng(7, "cron", 4).next_u64());
        assert_ne!(a, case_rng(7, "tag", 3).next_u64());
        assert_ne!(a, case_rng(8, "cron", 3).next_u64());
    }

    #[test]
    fn excerpts_are_cut_on_characters() {
        let long = "é".repeat(SHOWN_CHARS + 5);
        let cut = excerpt(&long);
        assert!(cut.starts_with(&"é".repeat(SHOWN_CHARS)));
        assert!(cut.ends_with(&format!("({} chars escaped)", SHOWN_CHARS + 5)));
        assert_eq!(excerpt("short"), "short");
        assert_eq!(
            format!("{:?}", Bytes(b"a\"\n\xff".to_vec())),
            r#"b"a\"\n\xff""#
        );
    }
}
