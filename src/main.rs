//! The `kimup` command line.

use clap::{Parser, Subcommand};
use kimup::evaluate::EvaluateArgs;
use kimup::run::RunArgs;
use kimup::telemetry::{self, LogFormat};

/// kimup: keeps Kubernetes workloads on the newest image tags their rules allow.
#[derive(Parser, Debug)]
#[command(name = "kimup", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "KIMUP_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `kimup=debug,kube=warn`.
    #[arg(
        long,
        alias = "loglevel",
        default_value = "info",
        global = true,
        env = "KIMUP_LOG_LEVEL"
    )]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions (YAML).
    Crd,
    /// Print the RBAC rules kimup needs in every cluster it serves (the chart's
    /// files/member-rules.yaml; `kimup cluster add` grants the same).
    Rbac,
    /// Onboard member clusters: add (least privilege), list, remove.
    #[command(subcommand)]
    Cluster(kimup::onboard::ClusterCommand),
    /// Print where each Image's tag stands in every member cluster (the Image × cluster matrix:
    /// tag, result, healthy since, what a promotion waits for).
    Fleet(Box<kimup::fleet::FleetArgs>),
    /// Dry-run rules against a tag list or the live registry.
    Evaluate(Box<EvaluateArgs>),
    /// Print the version.
    Version,
    /// Move over from kimup (Go).
    #[command(subcommand)]
    Migrate(MigrateCommand),
}

#[derive(Subcommand, Debug)]
enum MigrateCommand {
    /// Print the chart values that carry over Kimup resources (a file, or - for stdin; e.g.
    /// `kubectl get kimups -A -o yaml | kimup migrate kimup-cr -`).
    KimupCr {
        /// YAML file of one or more Kimup resources, or a List of them; `-` reads stdin.
        file: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    0.into()
                }
                _ => 2.into(),
            };
        }
    };
    // kube, reqwest and lettre are built without a crypto provider of their own; ring is the one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Version => {
            println!("kimup {}", env!("CARGO_PKG_VERSION"));
            0.into()
        }
        Command::Crd => match kimup::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                0.into()
            }
            Err(e) => {
                eprintln!("error: {e}");
                1.into()
            }
        },
        Command::Rbac => {
            print!("{}", kimup::rbac::chart_rules_yaml());
            0.into()
        }
        Command::Cluster(cmd) => {
            let Some(rt) = runtime(false) else {
                return 1.into();
            };
            rt.block_on(kimup::onboard::main(cmd)).into()
        }
        Command::Fleet(args) => {
            let Some(rt) = runtime(false) else {
                return 1.into();
            };
            rt.block_on(kimup::fleet::main(&args)).into()
        }
        Command::Evaluate(args) => {
            let Some(rt) = runtime(false) else {
                return 1.into();
            };
            match rt.block_on(kimup::evaluate::evaluate(&args)) {
                Ok(out) => {
                    print!("{out}");
                    0.into()
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    2.into()
                }
            }
        }
        Command::Migrate(MigrateCommand::KimupCr { file }) => migrate_kimup_cr(&file),
        Command::Run(args) => {
            let upstream_warnings = match kimup::run::validate(&args)
                .and_then(|()| kimup::run::check_paths(&args))
                .and_then(|()| args.upstream.check())
            {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2.into();
                }
            };
            let _telemetry = match telemetry::init(cli.log_format, &cli.log_level) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2.into();
                }
            };
            for w in upstream_warnings {
                tracing::warn!("{w}");
            }
            let Some(rt) = runtime(true) else {
                return 1.into();
            };
            match rt.block_on(kimup::run::run(*args)) {
                Ok(()) => 0.into(),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "kimup stopped");
                    eprintln!("error: {e:#}");
                    1.into()
                }
            }
        }
    }
}

/// `kimup migrate kimup-cr`: values on stdout, each note on stderr as well, exit 2 on bad input.
fn migrate_kimup_cr(file: &std::path::Path) -> std::process::ExitCode {
    use std::io::Read;
    // The same cap as kubeconfig files: a manifest is small, and the input may be anything.
    const MAX: u64 = 1 << 20;
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().take(MAX + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX + 1).read_to_string(&mut text))
    };
    if let Err(e) = read {
        eprintln!("error: reading {}: {e}", file.display());
        return 2.into();
    }
    if text.len() as u64 > MAX {
        eprintln!("error: {} is larger than 1 MiB", file.display());
        return 2.into();
    }
    match kimup::migrate::convert_stream(&text).and_then(|c| {
        let out = kimup::migrate::render(&c)?;
        Ok((c, out))
    }) {
        Ok((converted, out)) => {
            for c in &converted {
                for n in &c.notes {
                    eprintln!("note: Kimup {}: {n}", c.resource);
                }
            }
            print!("{out}");
            0.into()
        }
        Err(e) => {
            eprintln!("error: {e}");
            2.into()
        }
    }
}

/// A tokio runtime (multi-threaded for `run`), or None after printing why it could not start.
fn runtime(multi_thread: bool) -> Option<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("error: starting the async runtime: {e}"))
        .ok()
}
