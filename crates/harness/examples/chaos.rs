//! Fault injection against a local federation: `cargo run --release --example chaos --
//! --seed 42 --duration 5m` (or `scripts/fault-inject`).
//!
//! Launches a federation of `citychain` processes, sends signed transactions while nodes
//! are SIGKILLed and restarted (the city too, unless `--no-city-kills`), then checks that
//! every transaction that got a 200 is stored where its status says. Exit 0 when every
//! promise held, 1 otherwise (or when the run could not be carried out), 2 on bad usage.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use citychain_harness::chaos::{self, ChaosSpec};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Kill and restart federation nodes under load; verify every 200 held")]
struct Args {
    /// Seed of the fault schedule (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long load and faults run, e.g. 60s, 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Offered load, transactions per second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Federation directory (must be new or empty; default: a new directory under
    /// ./data/chaos-<seed>/).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Never kill the city node (storage nodes only).
    #[arg(long)]
    no_city_kills: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "citychain_harness::chaos=info,warn".into()),
        )
        .init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos: seed {seed} (rerun with --seed {seed})");
    let binary = sibling_binary()?;
    let dir = match args.dir {
        Some(dir) => {
            let non_empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if non_empty {
                eprintln!(
                    "chaos: {} is not empty; give a new directory (old node data would be reused)",
                    dir.display()
                );
                return Ok(ExitCode::from(2));
            }
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => {
            let parent = Path::new("data").join(format!("chaos-{seed}"));
            std::fs::create_dir_all(&parent)?;
            tempfile::Builder::new()
                .prefix("run-")
                .tempdir_in(&parent)?
                .keep()
        }
    };
    eprintln!(
        "chaos: federation in {} (node logs in its logs/), {} tx/s for {}, city kills {}",
        dir.display(),
        args.rate,
        humantime::format_duration(args.duration),
        if args.no_city_kills { "off" } else { "on" }
    );
    let spec = ChaosSpec {
        rate: args.rate,
        kill_city: !args.no_city_kills,
        ..ChaosSpec::new(seed, args.duration, dir, binary)
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(chaos::run(spec))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_human();
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `citychain` binary next to this example's directory: this program is
/// `target/<profile>/examples/chaos`, the node binary `target/<profile>/citychain`.
fn sibling_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("cannot place {}", exe.display()))?;
    let binary = profile_dir.join(format!("citychain{}", std::env::consts::EXE_SUFFIX));
    if !binary.is_file() {
        anyhow::bail!(
            "no citychain binary at {}; build it first: cargo build --release (or use \
             scripts/fault-inject, which builds both)",
            binary.display()
        );
    }
    Ok(binary)
}
