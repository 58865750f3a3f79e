//! The command line of API.md. Exit codes: 0 ok, 1 a failed check or request, 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use citychain::config::Config;
use citychain::crypto::SigningKey;
use citychain::messages::{FlagKind, MAX_SAFE_AMOUNT, TxRequest};
use citychain_harness::bench::{self, BenchArgs};
use citychain_harness::client::{NodePlace, TxClient, TxDraft};
use citychain_harness::federation::{Hosts, Topology};

use crate::{checkpoint_cmd, log_cmd};

#[derive(Parser)]
#[command(
    name = "citychain",
    version,
    about = "One binary for every node role of the City Chain federation"
)]
struct Cli {
    /// How log lines are written: `text` for people, `json` for log shippers (one JSON
    /// object per line: timestamp, level, target, fields). The nodes `up` starts write
    /// their logs the same way.
    #[arg(
        long,
        global = true,
        value_enum,
        env = LOG_FORMAT_VAR,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The environment variable that sets `--log-format`.
const LOG_FORMAT_VAR: &str = "CITYCHAIN_LOG_FORMAT";

/// The format of log lines on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole local federation on loopback (by default 2 cities on 2 continents,
    /// each city with 6 light nodes, each continent with 2 full nodes and its continent
    /// node, 1 global node), each node its own process; Ctrl-C stops them all.
    Up {
        /// Where configs, data, logs and federation.json go.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
        /// How often to print a status line when something changed (0s: never).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        status_every: Duration,
    },
    /// Print the state of a running `up` federation (every node in DIR/federation.json);
    /// exit 1 if a node does not answer.
    Status {
        /// The directory `up` runs in.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Write the configs and keys of a whole federation whose nodes run on hosts of
    /// their own (containers, pods), without starting anything: one config per node
    /// (DIR/configs/ID.toml), its key (DIR/keys/ID.key, to mount as a secret), each
    /// continent key holder's key (DIR/vault/CONTINENT.key, kept off the nodes) and
    /// DIR/federation.json. Keys already in DIR are kept.
    DeployConfigs {
        /// Where the configs and keys go.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
        /// Each node's host name: {node_id}, {role}, {city} and {continent} are replaced
        /// by the node's; must contain {node_id}.
        #[arg(long, default_value = "{node_id}")]
        host: String,
        /// The port every node listens on and is reached at.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Each continent's MongoDB URI ({continent} replaced), given to its cities;
        /// without it the MongoDB tier is skipped.
        #[arg(long)]
        mongo_uri: Option<String>,
        /// Every node's data dir.
        #[arg(long, default_value = "/data")]
        data_dir: PathBuf,
        /// Where each node finds its key, KEY_DIR/ID.key.
        #[arg(long, default_value = "/etc/citychain/keys")]
        key_dir: PathBuf,
    },
    /// GET a URL (e.g. a node's /healthz) and exit 0 on a 2xx answer, 1 otherwise: a
    /// container health check with no other tool in the image.
    Probe {
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
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
    Tx {
        /// A city node to take the city and continent from (GET /healthz), when --city
        /// or --continent is not given.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Sign and submit a transaction to a city node; print the node's answer.
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
        /// Transactions per second (with --closed-loop: a ceiling, optional unless
        /// --presign).
        #[arg(long, required_unless_present = "closed_loop")]
        rate: Option<u64>,
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
        /// Continent of the transactions (default: the node's, from /healthz).
        #[arg(long)]
        continent: Option<String>,
        /// Sign the whole run before the clock starts (on every core), so the client
        /// spends no CPU on signatures while it sends; a run of at most 60 s fits the
        /// node's default clock-skew window.
        #[arg(long)]
        presign: bool,
        /// A closed loop: N requests outstanding at all times, each sent when the one
        /// before it on its worker was answered (latency from the send), instead of the
        /// open loop's schedule.
        #[arg(long, value_name = "N")]
        closed_loop: Option<usize>,
        /// Most requests outstanding at once in the open loop, each on its own connection;
        /// a send due while this many are outstanding is skipped and counted as
        /// `client_saturated`. The default is a node's default `[limits]
        /// max_connections_per_peer`: connections past it are answered 503 and closed,
        /// so a client that opens more spends the node's CPU on TCP churn, not work.
        #[arg(long, value_name = "N", default_value_t = bench::DEFAULT_MAX_IN_FLIGHT)]
        max_in_flight: usize,
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
    /// Print a shell completion script, e.g. `citychain completions bash >
    /// /etc/bash_completion.d/citychain`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (citychain.1 and one per subcommand, such as citychain-up.1)
    /// into a directory, e.g. `citychain man --out /usr/local/share/man/man1`.
    Man {
        /// The directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The shape of a federation: its cities, continents and nodes per city and continent.
#[derive(Args)]
struct ShapeArgs {
    /// Cities, dealt to the continents in turn: tokyo (asia), paris (europe), toronto
    /// (north-america), lagos (africa), lima (south-america), sydney (oceania); a
    /// continent's next cities are seoul, berlin, chicago, ... (4 per continent).
    #[arg(long, default_value_t = 2)]
    cities: usize,
    /// Continents the cities are spread over (default: as many as the cities, at
    /// most 2).
    #[arg(long)]
    continents: Option<usize>,
    /// Light nodes of each city: at least k + survive_losses of the erasure coding (5).
    #[arg(long, default_value_t = 6)]
    light_per_city: usize,
    /// Full nodes of each continent, shared by its cities.
    #[arg(long, default_value_t = 2)]
    full_per_continent: usize,
    /// DPoS representatives of each continent, stake 100 each, each its own process;
    /// 0 runs no approval.
    #[arg(long, default_value_t = 3)]
    representatives: usize,
}

impl ShapeArgs {
    fn topology(&self) -> Topology {
        Topology {
            cities: self.cities,
            continents: self.continents,
            lights_per_city: self.light_per_city,
            fulls_per_continent: self.full_per_continent,
            representatives_per_continent: self.representatives,
        }
    }
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
    /// City of the transaction (default: the node's, from /healthz).
    #[arg(long)]
    city: Option<String>,
    /// Continent of the transaction (default: the node's, from /healthz; a city takes
    /// only its own continent's).
    #[arg(long)]
    continent: Option<String>,
    /// A JSON object carried with the transaction.
    #[arg(long)]
    payload: Option<String>,
    /// The sender's position (proof of place), checked against the city's fence.
    #[arg(long, value_name = "LAT,LON", value_parser = parse_pop)]
    pop: Option<citychain::messages::Pop>,
    /// The objects the transaction reads or writes, a JSON array of
    /// `{"id","kind":"owned"|"shared"|"immutable","access":"read"|"write"}`.
    #[arg(long)]
    objects: Option<String>,
    /// Default: the current time in microseconds, unique enough for one sender.
    #[arg(long)]
    nonce: Option<u64>,
    #[arg(long, default_value = "fresh_tx", value_parser = parse_kind)]
    kind: FlagKind,
}

fn parse_pop(s: &str) -> Result<citychain::messages::Pop, String> {
    let (lat, lon) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not LAT,LON (e.g. 35.68,139.76)"))?;
    let degrees = |v: &str, what: &str, limit: f64| match v.trim().parse::<f64>() {
        Ok(d) if d.is_finite() && d.abs() <= limit => Ok(d),
        _ => Err(format!(
            "{what} {v:?} is not a number of degrees within ±{limit}"
        )),
    };
    Ok(citychain::messages::Pop {
        lat: degrees(lat, "latitude", 90.0)?,
        lon: degrees(lon, "longitude", 180.0)?,
    })
}

fn parse_kind(s: &str) -> Result<FlagKind, String> {
    FlagKind::parse(s).ok_or_else(|| {
        let all: Vec<_> = FlagKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown kind {s:?} (one of: {})", all.join(", "))
    })
}

impl TxArgs {
    /// The city and continent of the transaction: the flags, and what is missing from
    /// the city node at `node`. Without a node, `--city` is required and the continent
    /// left for the city to fill in.
    async fn place(&self, node: Option<&str>) -> anyhow::Result<(String, Option<String>)> {
        if let (Some(city), Some(continent)) = (&self.city, &self.continent) {
            return Ok((city.clone(), Some(continent.clone())));
        }
        let Some(node) = node else {
            return match &self.city {
                Some(city) => Ok((city.clone(), self.continent.clone())),
                None => Err(Failed::Usage(
                    "--city is required without --node (or pass --node CITY_URL to take the city and continent from that city node)".into(),
                )
                .into()),
            };
        };
        let http = reqwest::Client::builder().no_proxy().build()?;
        let place = NodePlace::of(&http, node).await?;
        match (&self.city, place.city_and_continent(node)) {
            (city, Ok((own_city, own_continent))) => Ok((
                city.clone().unwrap_or(own_city),
                Some(self.continent.clone().unwrap_or(own_continent)),
            )),
            (Some(city), Err(_)) => Ok((city.clone(), self.continent.clone())),
            (None, Err(e)) => Err(e),
        }
    }

    fn build(&self, city: String, continent: Option<String>) -> anyhow::Result<TxRequest> {
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
        let objects = match &self.objects {
            None => None,
            Some(text) => Some(
                serde_json::from_str::<Vec<citychain::messages::ObjectRef>>(text)
                    .context("--objects is not a JSON array of {\"id\",\"kind\",\"access\"}")?,
            ),
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
            city,
            continent,
            payload,
            pop: self.pop,
            objects,
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
    /// The command line asks for something impossible (exit 2).
    #[error("{0}")]
    Usage(String),
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
    init_tracing(if verbose { "info" } else { "warn" }, cli.log_format);
    let log_format = cli.log_format;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(dispatch(cli.command, log_format)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<Failed>() {
                Some(Failed::Check(msg)) if msg.is_empty() => {}
                Some(Failed::Usage(msg)) => {
                    eprintln!("error: {msg}\n\nFor more information, try '--help'.");
                    return ExitCode::from(2);
                }
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::from(1)
        }
    }
}

fn init_tracing(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Node logs usually go to files (`up` writes DIR/logs/ID.log): no colour codes there.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // The event's fields at the top level, beside timestamp, level and target, so a
        // shipper indexes `tx`, `batch` or `error` without unpacking anything.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

async fn dispatch(command: Command, log_format: LogFormat) -> anyhow::Result<()> {
    match command {
        Command::Node { config } => {
            let config = Config::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", config.display()))?;
            // Caught from before the start: a Ctrl-C or SIGTERM while the node starts
            // stops it cleanly once it has, instead of killing it half-started.
            let mut shutdown = Shutdown::install();
            let node = citychain::node::start(config).await?;
            node.run_until(shutdown.wait()).await
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
        Command::Tx { node, tx } => {
            let (city, continent) = tx.place(node.as_deref()).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&tx.build(city, continent)?)?
            );
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
            continent,
            presign,
            closed_loop,
            max_in_flight,
        } => {
            anyhow::ensure!(rate != Some(0), "--rate must be positive");
            let rate = rate.unwrap_or(0);
            let key = key.map(|k| SigningKey::load(&k)).transpose()?;
            let report = bench::run(BenchArgs {
                node,
                rate,
                duration,
                json,
                key,
                city,
                continent,
                max_in_flight,
                presign,
                closed_loop,
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
        Command::Up {
            dir,
            shape,
            status_every,
        } => {
            let node_args = vec!["--log-format".to_string(), log_format.name().to_string()];
            crate::up_cmd::up(dir, shape.topology(), status_every, node_args).await
        }
        Command::DeployConfigs {
            out,
            shape,
            host,
            port,
            mongo_uri,
            data_dir,
            key_dir,
        } => {
            let hosts = Hosts {
                host,
                port,
                mongo_uri,
                data_dir,
                key_dir,
            };
            crate::deploy_cmd::deploy_configs(out, shape.topology(), hosts)
        }
        Command::Probe { url, timeout } => probe(&url, timeout).await,
        Command::Vault { command } => crate::vault::run(command),
        Command::Completions { shell } => {
            // Into a buffer first: the generator panics on a failed write, and a reader
            // that closes the pipe early (`| head`) is no error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "citychain", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(e).context("writing the completion script"))
                }
                _ => Ok(()),
            }
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing manual pages to {}", out.display()))?;
            println!("manual pages written to {}", out.display());
            Ok(())
        }
        Command::Status { dir, json } => crate::status_cmd::status(&dir, json).await,
    }
}

/// GET `url` within `timeout`: ok on 2xx, a failed check (exit 1) otherwise.
async fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()?;
    let answer = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = answer.status();
    if status.is_success() {
        println!("{url}: {status}");
        Ok(())
    } else {
        Err(Failed::Check(format!("{url}: {status}")).into())
    }
}

async fn send(node: &str, tx: &TxArgs) -> anyhow::Result<()> {
    let (city, continent) = tx.place(Some(node)).await?;
    let body = tx.build(city, continent)?;
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment it is installed: one that arrives
/// before [`Shutdown::wait`] is awaited is kept, not the end of the process.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Shutdown {
    pub(crate) fn install() -> Self {
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

    pub(crate) async fn wait(&mut self) {
        #[cfg(unix)]
        {
            let (int, term) = &mut self.signals;
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
