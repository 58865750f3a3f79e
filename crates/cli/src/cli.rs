//! The command line of API.md. Exit codes: 0 ok, 1 a failed check or request, 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use citychain::config::{Config, Role};
use citychain::crypto::SigningKey;
use citychain::messages::{FlagKind, MAX_SAFE_AMOUNT, TxRequest};
use citychain_harness::bench::{self, BenchArgs};
use citychain_harness::client::{TxClient, TxDraft};
use citychain_harness::federation::{Federation, FederationSpec};

use crate::{checkpoint_cmd, log_cmd};

#[derive(Parser)]
#[command(
    name = "citychain",
    version,
    about = "One binary for every node role of the City Chain federation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole local federation on loopback (1 city, 1 continent, 1 global, 6 light,
    /// 2 full nodes), each node its own process; Ctrl-C stops them all.
    Up {
        /// Where configs, data, logs and federation.json go.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
    },
    /// Run one node; its role comes from the config file.
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Config file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a new ML-DSA-65 key pair and print its sender address.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print one signed transaction request (the POST /v1/tx body).
    Tx(TxArgs),
    /// Sign and submit a transaction; print the node's answer.
    Send {
        /// Base URL of a city node, e.g. http://127.0.0.1:8080
        #[arg(long)]
        node: String,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Open-loop signed load against a city node.
    Bench {
        #[arg(long)]
        node: String,
        /// Transactions per second.
        #[arg(long)]
        rate: u64,
        /// How long to send, e.g. 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Print one JSON summary object instead of the human report.
        #[arg(long)]
        json: bool,
        /// Sender key (default: a fresh key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// City of the transactions (default: the node's, from /healthz).
        #[arg(long)]
        city: Option<String>,
    },
    /// Immutable log tools.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Global checkpoints: prove that a city batch is covered by one.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Key holder tools: keys for sealed batches, and opening them.
    Vault {
        #[command(subcommand)]
        command: crate::vault::VaultCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print every problem at once.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check an immutable log end to end and against the tree heads its city signed;
    /// exit 1 and the first bad record unless the log is exactly what its latest signed
    /// head covers.
    Verify {
        /// The log's directory (holding immutable.log), or the node's data dir.
        #[arg(long)]
        dir: PathBuf,
        /// The signed heads file; default log-heads.json in the data dir (the parent of a
        /// log directory, or DIR itself when it is the data dir).
        #[arg(long)]
        heads: Option<PathBuf>,
        /// The signer's public key (base64, or a key file); default: the node.key beside
        /// the heads file, if there is one.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Fetch an inclusion proof for one log record from a city node and check it against
    /// the node's latest signed head; exit 1 if anything does not verify.
    Prove {
        /// Base URL of a city node, e.g. http://127.0.0.1:8080
        #[arg(long)]
        node: String,
        /// The record's index in the log.
        #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
        index: Option<u64>,
        /// Or the id of the batch the record holds (64 hex characters).
        #[arg(long)]
        batch: Option<String>,
        /// The signer's public key (base64, or a key file) to hold the head to; default:
        /// the key the node presents.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Fetch a consistency proof between two tree sizes of a city node's log and check it;
    /// exit 1 if anything does not verify.
    Consistency {
        #[arg(long)]
        node: String,
        /// The older tree size (at least 1).
        #[arg(long)]
        from: u64,
        /// The newer tree size; default: the latest signed head's.
        #[arg(long)]
        to: Option<u64>,
        /// The root you recorded for the older size (hex); it must be the one proven.
        #[arg(long)]
        from_root: Option<String>,
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Fetch the inclusion proof of a city batch in a global checkpoint from the global
    /// node and check it (the checkpoint's signature, the global log's Merkle path, the
    /// continent's signature, the continent batch's Merkle path); exit 1 if anything does
    /// not verify.
    Prove {
        /// Base URL of the global node, e.g. http://127.0.0.1:9000
        #[arg(long)]
        node: String,
        /// The city batch's id (64 hex characters).
        #[arg(long)]
        batch: String,
        /// Prove against this checkpoint (default: the latest).
        #[arg(long)]
        checkpoint: Option<u64>,
        /// The global node's public key (base64, or a key file) to hold the checkpoint to;
        /// default: the key the proof presents.
        #[arg(long)]
        public_key: Option<String>,
        /// The continent node's public key (base64, or a key file); default: the key the
        /// proof presents.
        #[arg(long)]
        continent_key: Option<String>,
        /// Also write the proof (JSON) to this file, for `checkpoint verify` later.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Check a saved proof offline; exit 1 if anything does not verify.
    Verify {
        /// A proof written by `checkpoint prove --save` (or the body of
        /// `GET /v1/checkpoints/proof`).
        #[arg(long)]
        proof: PathBuf,
        /// The city batch it must prove.
        #[arg(long)]
        batch: Option<String>,
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        continent_key: Option<String>,
    },
}

#[derive(Args, Clone)]
struct TxArgs {
    /// Key file written by `citychain keygen`.
    #[arg(long)]
    key: PathBuf,
    /// Receiver address or account name.
    #[arg(long)]
    to: String,
    /// Amount in minor units.
    #[arg(long)]
    amount: u64,
    #[arg(long)]
    city: String,
    #[arg(long)]
    continent: Option<String>,
    /// A JSON object carried with the transaction.
    #[arg(long)]
    payload: Option<String>,
    /// Default: the current time in microseconds, unique enough for one sender.
    #[arg(long)]
    nonce: Option<u64>,
    #[arg(long, default_value = "fresh_tx", value_parser = parse_kind)]
    kind: FlagKind,
}

fn parse_kind(s: &str) -> Result<FlagKind, String> {
    FlagKind::parse(s).ok_or_else(|| {
        let all: Vec<_> = FlagKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown kind {s:?} (one of: {})", all.join(", "))
    })
}

impl TxArgs {
    fn build(&self) -> anyhow::Result<TxRequest> {
        let key = SigningKey::load(&self.key)?;
        let payload = match &self.payload {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(text)
                .context("--payload is not JSON")?
            {
                serde_json::Value::Object(map) => Some(map),
                _ => anyhow::bail!("--payload must be a JSON object"),
            },
        };
        let nonce = self.nonce.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0)
                % MAX_SAFE_AMOUNT
        });
        let draft = TxDraft {
            kind: self.kind,
            to: self.to.clone(),
            amount: self.amount,
            city: self.city.clone(),
            continent: self.continent.clone(),
            payload,
            nonce,
            timestamp_ms: None,
        };
        Ok(draft.sign(&key)?)
    }
}

/// Failure kinds that map to exit codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    /// A check or request failed (exit 1); the message was already printed.
    #[error("{0}")]
    Check(String),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    let verbose = matches!(cli.command, Command::Node { .. } | Command::Up { .. });
    init_tracing(if verbose { "info" } else { "warn" });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<Failed>() {
                Some(Failed::Check(msg)) if msg.is_empty() => {}
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::from(1)
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Node logs usually go to files (`up` writes DIR/logs/ID.log): no colour codes there.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node { config } => {
            let config = Config::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", config.display()))?;
            let node = citychain::node::start(config).await?;
            node.run_until(shutdown_signal()).await
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} node {})",
                    file.display(),
                    c.node.role,
                    c.node.id
                );
                Ok(())
            }
            Err(e) => {
                for p in &e.problems {
                    println!("{}: {p}", file.display());
                }
                println!("{} problem(s)", e.problems.len());
                Err(Failed::Check(String::new()).into())
            }
        },
        Command::Keygen { out } => {
            if out.exists() {
                anyhow::bail!("{} exists; refusing to overwrite a key", out.display());
            }
            let key = SigningKey::generate()?;
            key.save(&out)?;
            println!("{}", key.address());
            Ok(())
        }
        Command::Tx(args) => {
            println!("{}", serde_json::to_string_pretty(&args.build()?)?);
            Ok(())
        }
        Command::Send { node, tx } => send(&node, &tx).await,
        Command::Bench {
            node,
            rate,
            duration,
            json,
            key,
            city,
        } => {
            anyhow::ensure!(rate > 0, "--rate must be positive");
            let key = key.map(|k| SigningKey::load(&k)).transpose()?;
            let report = bench::run(BenchArgs {
                node,
                rate,
                duration,
                json,
                key,
                city,
                max_in_flight: 4096,
            })
            .await?;
            if json {
                println!("{}", report.to_json());
            } else {
                report.print_human();
            }
            Ok(())
        }
        Command::Log { command } => match command {
            LogCommand::Verify {
                dir,
                heads,
                public_key,
            } => log_cmd::verify(&dir, heads, public_key.as_deref()),
            LogCommand::Prove {
                node,
                index,
                batch,
                public_key,
            } => log_cmd::prove(&node, index, batch.as_deref(), public_key.as_deref()).await,
            LogCommand::Consistency {
                node,
                from,
                to,
                from_root,
                public_key,
            } => {
                log_cmd::consistency(&node, from, to, from_root.as_deref(), public_key.as_deref())
                    .await
            }
        },
        Command::Checkpoint { command } => match command {
            CheckpointCommand::Prove {
                node,
                batch,
                checkpoint,
                public_key,
                continent_key,
                save,
            } => {
                checkpoint_cmd::prove(
                    &node,
                    &batch,
                    checkpoint,
                    public_key.as_deref(),
                    continent_key.as_deref(),
                    save.as_deref(),
                )
                .await
            }
            CheckpointCommand::Verify {
                proof,
                batch,
                public_key,
                continent_key,
            } => checkpoint_cmd::verify(
                &proof,
                batch.as_deref(),
                public_key.as_deref(),
                continent_key.as_deref(),
            ),
        },
        Command::Up { dir } => up(dir).await,
        Command::Vault { command } => crate::vault::run(command),
    }
}

async fn send(node: &str, tx: &TxArgs) -> anyhow::Result<()> {
    let body = tx.build()?;
    let client = TxClient::new(reqwest::Client::builder().no_proxy().build()?, node);
    let answer = client
        .post(&body)
        .await
        .with_context(|| format!("sending to {node}"))?;
    match &answer.json {
        Some(v) => println!("{}", serde_json::to_string_pretty(v)?),
        None => println!("{}", answer.text()),
    }
    let status = reqwest::StatusCode::from_u16(answer.status)?;
    if status.is_success() {
        Ok(())
    } else {
        Err(Failed::Check(format!("the node answered {status}")).into())
    }
}

async fn up(dir: PathBuf) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("locating the citychain binary")?;
    let spec = FederationSpec::local(dir.clone(), binary);
    eprintln!(
        "starting a local federation in {}/ ({} light, {} full, 1 city, 1 continent, 1 global)...",
        dir.display(),
        spec.lights,
        spec.fulls
    );
    std::fs::create_dir_all(&dir)?;
    // The demo sender key exists before any node is ready, so the printed example works
    // the moment the federation answers.
    let key = dir.join("demo.key");
    if !key.exists() {
        SigningKey::generate()?.save(&key)?;
    }
    // Caught from now on, so a Ctrl-C while the nodes start still stops them cleanly.
    let shutdown = Shutdown::install();
    let mut fed = Federation::launch(spec).await?;
    let city = fed.city_url();
    println!("\ncitychain federation is up:");
    for n in &fed.nodes {
        println!(
            "  {:<14} {:<10} {}  (pid {})",
            n.id,
            n.role.as_str(),
            n.url,
            n.pid().unwrap_or(0)
        );
    }
    println!(
        "\nmanifest: {}/federation.json   logs: {}/logs/",
        dir.display(),
        dir.display()
    );
    println!(
        "key holder's key (opens the sealed batches): {}",
        Federation::vault_key_path(&dir, &fed.spec.continent).display()
    );
    println!("\ntry it:");
    println!(
        "  cargo run --release -- send --node {city} --key {} --to bob --amount 1250 --city {}",
        key.display(),
        fed.spec.city
    );
    println!(
        "  cargo run --release -- tx --key {} --to bob --amount 1250 --city {} > tx.json && \\\n    curl -s -H 'content-type: application/json' --data @tx.json {city}/v1/tx",
        key.display(),
        fed.spec.city
    );
    println!("  curl -s {city}/v1/nodes");
    let global = fed.url_of(Role::Global);
    println!(
        "  curl -s {city}/v1/batches/BATCH_ID         # .continent: where the continent merged it"
    );
    println!(
        "  cargo run --release -- checkpoint prove --node {global} --batch BATCH_ID --public-key {}",
        fed.node("global").config.node.key_path().display()
    );
    println!("  cargo run --release -- bench --node {city} --rate 500 --duration 10s");
    println!("\nCtrl-C stops every node.");

    let watch = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            for (id, status) in fed.exited() {
                eprintln!(
                    "node {id} exited ({status}); restart it with: citychain node --config {}",
                    fed.node(&id).config_path.display()
                );
            }
        }
    };
    tokio::select! {
        _ = shutdown.wait() => {}
        _ = watch => {}
    }
    eprintln!("stopping every node...");
    fed.shutdown().await?;
    eprintln!("stopped.");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    Shutdown::install().wait().await
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment it is installed: one that arrives
/// before [`Shutdown::wait`] is awaited is kept, not the end of the process.
struct Shutdown {
    #[cfg(unix)]
    signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Shutdown {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
            let term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
            Self {
                signals: (int, term),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut int, mut term) = self.signals;
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
