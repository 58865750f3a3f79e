//! The sections of a node's config file, each with its defaults (and nowhere else).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::messages::{FlagKind, Tier};

/// The role a node plays in the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    City,
    Continent,
    Global,
    Light,
    Full,
    /// Votes on its continent's batches (DPoS approval).
    Representative,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::City => "city",
            Role::Continent => "continent",
            Role::Global => "global",
            Role::Light => "light",
            Role::Full => "full",
            Role::Representative => "representative",
        }
    }

    pub fn is_storage(self) -> bool {
        matches!(self, Role::Light | Role::Full)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[repair]`: moving batches back up the tiers and keeping light-node holdings whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairConfig {
    pub enabled: bool,
    /// Time between repair rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Batches moved up, and light holdings checked, per round.
    pub batches_per_round: usize,
    /// Light batches archived to full nodes per window, at most (oldest first; see
    /// `[storage] light_retention`). A round takes windows in a row, for up to
    /// `interval`, while they come back full.
    pub archive_per_round: usize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(2),
            batches_per_round: 64,
            archive_per_round: 64,
        }
    }
}

/// `[reads]` (city): how `GET /v1/tx/{id}` and `GET /v1/batches/{id}?txs=true` obtain
/// transaction bodies (the body cache, then each tier in turn, each within its deadline),
/// and how much the city keeps of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadsConfig {
    /// Rebuilding a light batch from any k of its pieces.
    #[serde(with = "humantime_serde")]
    pub light_deadline: Duration,
    /// Reading the whole sealed batch from a full node.
    #[serde(with = "humantime_serde")]
    pub full_deadline: Duration,
    /// Reading it from MongoDB (`unfinished_` or `finished_`).
    #[serde(with = "humantime_serde")]
    pub mongo_deadline: Duration,
    /// Reading it from the city's immutable log.
    #[serde(with = "humantime_serde")]
    pub log_deadline: Duration,
    /// Reads of bodies at once; past it a read is refused with 503 `overloaded`.
    pub max_concurrent: usize,
    /// Bytes of sealed bodies of stored batches kept in `city.redb`'s body cache
    /// (oldest batch evicted first).
    pub body_cache_bytes: u64,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        Self {
            light_deadline: Duration::from_millis(50),
            full_deadline: Duration::from_millis(100),
            mongo_deadline: Duration::from_millis(300),
            log_deadline: Duration::from_millis(600),
            max_concurrent: 64,
            body_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[node]`: who this node is and where it lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique id in the federation, e.g. `"city-tokyo"`.
    pub id: String,
    pub role: Role,
    /// HTTP listen address, e.g. `"127.0.0.1:8080"`.
    pub listen: SocketAddr,
    /// Where the node keeps its files (storage database, immutable log, node key).
    pub data_dir: PathBuf,
    /// The city this node serves (required for `city` nodes).
    #[serde(default)]
    pub city: Option<String>,
    /// The continent this node belongs to, e.g. `"asia"`.
    pub continent: String,
    /// The node's ML-DSA-65 key; default `DATA_DIR/node.key`, created on first start.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl NodeConfig {
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("node.key"))
    }
}

/// `[intake]`: what a city node accepts over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Transactions admitted and not yet answered, at most: counted from the moment a
    /// request's body is read (before its signature is checked) until its answer. Past
    /// it, 503 `overloaded` with `Retry-After`, at once. Sized so that the pipeline can
    /// answer that many within the request timeout on a small machine.
    pub queue_capacity: usize,
    /// Largest request body in bytes; past it, 413.
    pub max_body_bytes: usize,
    /// Largest `payload` object in bytes of JSON.
    pub max_payload_bytes: usize,
    /// How far a transaction's `timestamp_ms` may be from the node's clock.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// A request not durable by then answers 503 `storage_unavailable`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_body_bytes: 64 * 1024,
            max_payload_bytes: 16 * 1024,
            max_clock_skew: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// `[batcher]`: when the DagBatcher closes a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatcherConfig {
    /// Close a batch at this many transactions.
    pub max_batch_txs: usize,
    /// Close a batch when its transactions reach this many bytes.
    pub max_batch_bytes: usize,
    /// Longest a normal-urgency transaction waits for its batch to close. Under light load
    /// the batcher closes sooner (see `min_delay`); the window widens towards this as load
    /// grows, so batches get fuller exactly when that pays.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Shortest window, used when transactions arrive one at a time.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Longest a batch holding only `deferred` transactions waits.
    #[serde(with = "humantime_serde")]
    pub deferred_delay: Duration,
    /// Parents per batch: the previous batch plus up to this many − 1 recent batches still
    /// without a child.
    pub max_parents: usize,
    /// The storage pipeline counts as busy while at least this many sealed batches are not
    /// yet durable (in storage, or waiting for it in the Flagger). While it is, a batch
    /// whose window ended stays open (up to `busy_max_delay`): closing it would only add
    /// one more small batch to the queue, and every batch costs six proofs of hold to sign
    /// and verify whatever its size, so holding it makes batches fuller exactly when the
    /// machine is short of CPU. 0 turns the hold off.
    pub busy_batches: usize,
    /// Longest a batch stays open while the pipeline is busy.
    #[serde(with = "humantime_serde")]
    pub busy_max_delay: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_txs: 256,
            max_batch_bytes: 2 * 1024 * 1024,
            max_delay: Duration::from_millis(5),
            min_delay: Duration::from_millis(1),
            deferred_delay: Duration::from_millis(100),
            max_parents: 2,
            busy_batches: 4,
            busy_max_delay: Duration::from_millis(25),
        }
    }
}

/// `[flagger]`: how transactions are flagged and how urgently they are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlaggerConfig {
    /// Flag policy: `"default"` (the rules below) or `"always_immediate"`.
    pub policy: FlagPolicyName,
    /// Amounts at or above this (minor units) are written at once.
    pub immediate_amount: u64,
    /// Kinds written at once.
    pub immediate_kinds: Vec<FlagKind>,
    /// Kinds that may wait up to `batcher.deferred_delay`.
    pub deferred_kinds: Vec<FlagKind>,
}

impl Default for FlaggerConfig {
    fn default() -> Self {
        Self {
            policy: FlagPolicyName::Default,
            immediate_amount: 100_000_000,
            immediate_kinds: vec![
                FlagKind::Checkpoint,
                FlagKind::RepairAck,
                FlagKind::RepairReq,
            ],
            deferred_kinds: vec![FlagKind::SystemTx],
        }
    }
}

/// `[prioritizer]`: the storage-node registry and how nodes are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrioritizerConfig {
    /// Node policy: `"weighted"` (the factors in `[prioritizer.weights]`).
    pub policy: NodePolicyName,
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Consecutive failed probes or writes before a node is marked down.
    pub down_after_failures: u32,
    /// Latency at which the latency factor is worth half its best.
    #[serde(with = "humantime_serde")]
    pub latency_reference: Duration,
    pub weights: Weights,
}

/// Weights of the node-score factors; they need not sum to 1 (they are normalized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub latency: f64,
    pub uptime: f64,
    pub capacity: f64,
    pub load: f64,
    pub same_continent: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            latency: 0.35,
            uptime: 0.2,
            capacity: 0.15,
            load: 0.15,
            same_continent: 0.15,
        }
    }
}

impl Default for PrioritizerConfig {
    fn default() -> Self {
        Self {
            policy: NodePolicyName::Weighted,
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(300),
            down_after_failures: 2,
            latency_reference: Duration::from_millis(20),
            weights: Weights::default(),
        }
    }
}

/// `[storage]`: the storage tiers a city writes to, and a storage node's own limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// How the light tier cuts each batch into pieces, and how many acked pieces a write
    /// needs.
    pub erasure: ErasureConfig,
    /// Valid acks needed from full nodes when the light tier failed.
    pub min_full_acks: usize,
    #[serde(with = "humantime_serde")]
    pub light_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub full_deadline: Duration,
    /// Immutable log directory; default `DATA_DIR/log`.
    pub log_dir: Option<PathBuf>,
    /// For `light` and `full` nodes: bytes this node will hold; 0 means the role's default
    /// (light 256 MiB, full 16 GiB).
    pub capacity_bytes: u64,
    /// The storage nodes a city node writes to.
    pub nodes: Vec<StorageNodeEntry>,
    /// The MongoDB tier, between full nodes and the immutable log.
    pub mongo: MongoConfig,
    /// City: how long a batch stays on light nodes. Past it, once its header is
    /// acknowledged by the continent (with `[uplink]`), the Repairer copies it to full
    /// nodes, records it there and releases its light pieces. `0` keeps light batches on
    /// light nodes for ever (they fill).
    #[serde(with = "humantime_serde")]
    pub light_retention: Duration,
}

/// `[storage.mongo]`: one MongoDB deployment per continent. A city writes to its own
/// continent's; with no URI for it (in the file or in `CITYCHAIN_MONGO_URI_<CONTINENT>`),
/// the tier is skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Continent → connection string, e.g. `asia = "mongodb://db.asia.example:27017"`.
    pub uris: std::collections::BTreeMap<String, String>,
    /// Database holding the monthly `unfinished_YYYYMM` / `finished_YYYYMM` collections.
    pub database: String,
    /// The whole tier attempt (connect, select a server, majority write) must fit in this.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub server_selection_timeout: Duration,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uris: Default::default(),
            database: "citychain".into(),
            deadline: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(200),
            server_selection_timeout: Duration::from_millis(250),
        }
    }
}

impl MongoConfig {
    /// The environment variable that overrides the URI of `continent`.
    pub fn env_var(continent: &str) -> String {
        format!(
            "CITYCHAIN_MONGO_URI_{}",
            continent.to_ascii_uppercase().replace(['-', ' '], "_")
        )
    }

    /// The URI for `continent`: the environment variable first, then the file.
    pub fn uri_for(&self, continent: &str) -> Option<String> {
        std::env::var(Self::env_var(continent))
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| self.uris.get(continent).cloned())
    }
}

/// `[storage.erasure]`: the light tier's erasure coding. Each batch's sealed bytes are cut
/// into `data_pieces` (k) pieces plus `parity_pieces` (m), each to a different light node;
/// any k rebuild the batch. A write holds once k + `survive_losses` pieces are acked, so
/// an acknowledged batch survives the loss of that many holders at once; the Repairer
/// places the pieces still missing and regenerates lost ones, up to all k + m.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErasureConfig {
    /// k: pieces of data; each light holder keeps about a k-th of a batch.
    pub data_pieces: u8,
    /// m: parity pieces; a batch with every piece placed survives the loss of m holders.
    pub parity_pieces: u8,
    /// Holders an acknowledged batch must survive losing (0 to m): the light tier needs
    /// k + this many acked pieces.
    pub survive_losses: u8,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        Self {
            data_pieces: 4,
            parity_pieces: 2,
            survive_losses: 1,
        }
    }
}

impl ErasureConfig {
    /// The coding, if `data_pieces` and `parity_pieces` make one (validation says why not).
    pub fn coding(&self) -> Option<crate::messages::Coding> {
        crate::messages::Coding::new(self.data_pieces, self.parity_pieces).ok()
    }

    /// k + m: the light nodes each batch goes to, one piece each.
    pub fn pieces(&self) -> usize {
        usize::from(self.data_pieces) + usize::from(self.parity_pieces)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            erasure: ErasureConfig::default(),
            min_full_acks: 1,
            light_deadline: Duration::from_millis(100),
            full_deadline: Duration::from_millis(250),
            log_dir: None,
            capacity_bytes: 0,
            nodes: Vec::new(),
            mongo: MongoConfig::default(),
            light_retention: DEFAULT_LIGHT_RETENTION,
        }
    }
}

/// How long a light batch stays on light nodes by default: at 5,000 tx/s (about 27 MB/s
/// sealed, 1.5 times that over six light nodes) a light node takes about 7 MB/s, so 20 s
/// and the archiving's lag keep it well under its default 256 MiB.
pub const DEFAULT_LIGHT_RETENTION: Duration = Duration::from_secs(20);

pub const DEFAULT_LIGHT_CAPACITY: u64 = 256 * 1024 * 1024;
pub const DEFAULT_FULL_CAPACITY: u64 = 16 * 1024 * 1024 * 1024;

impl StorageConfig {
    /// Acked pieces a light write needs: k + `survive_losses`.
    pub fn min_light_acks(&self) -> usize {
        usize::from(self.erasure.data_pieces) + usize::from(self.erasure.survive_losses)
    }

    pub fn capacity_for(&self, role: Role) -> u64 {
        match (self.capacity_bytes, role) {
            (0, Role::Light) => DEFAULT_LIGHT_CAPACITY,
            (0, _) => DEFAULT_FULL_CAPACITY,
            (n, _) => n,
        }
    }
}

/// One `[[storage.nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageNodeEntry {
    pub id: String,
    pub role: Role,
    /// Base URL, e.g. `"http://127.0.0.1:7101"`.
    pub url: String,
    pub continent: String,
    /// Base64 of the node's ML-DSA-65 public key; its acks must verify with it.
    pub public_key: String,
}

/// The flag policies a city can run (`[flagger] policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagPolicyName {
    /// Listed kinds and large amounts are immediate, listed kinds may wait.
    #[default]
    Default,
    /// Every transaction closes its batch at once.
    AlwaysImmediate,
}

/// The node policies a city can run (`[prioritizer] policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePolicyName {
    /// A weighted sum of latency, uptime, free capacity, load and same-continent.
    #[default]
    Weighted,
}

/// The supervised actors of every role, each role's in its start order (a failure restarts
/// those after it under `rest_for_one`): a city's pipeline and its uplink, a continent's
/// merger and uplink, the global node's collector and checkpointer. Names as `/v1/actors`
/// and `[supervisor.restart]` spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorName {
    Failover,
    StorageWriter,
    Prioritizer,
    Repairer,
    Flagger,
    DagBatcher,
    Intake,
    Uplink,
    Merger,
    Collector,
    Checkpointer,
    Approver,
}

impl ActorName {
    /// Every supervised actor: the city's in start order, then the federation levels'.
    pub const ALL: [ActorName; 12] = [
        ActorName::Failover,
        ActorName::StorageWriter,
        ActorName::Prioritizer,
        ActorName::Repairer,
        ActorName::Flagger,
        ActorName::DagBatcher,
        ActorName::Intake,
        ActorName::Uplink,
        ActorName::Merger,
        ActorName::Collector,
        ActorName::Checkpointer,
        ActorName::Approver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorName::Failover => "failover",
            ActorName::StorageWriter => "storage_writer",
            ActorName::Prioritizer => "prioritizer",
            ActorName::Repairer => "repairer",
            ActorName::Flagger => "flagger",
            ActorName::DagBatcher => "dag_batcher",
            ActorName::Intake => "intake",
            ActorName::Uplink => "uplink",
            ActorName::Merger => "merger",
            ActorName::Collector => "collector",
            ActorName::Checkpointer => "checkpointer",
            ActorName::Approver => "approver",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for ActorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a supervisor restarts its children (Erlang/OTP's strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the actor that failed.
    OneForOne,
    /// Restart every actor when one fails.
    OneForAll,
    /// Restart the failed actor and every actor started after it.
    RestForOne,
}

/// When an actor is restarted (Erlang/OTP's child restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always.
    Permanent,
    /// Only after an abnormal exit (a panic or error).
    Transient,
    /// Never; the node reports not ready instead.
    Temporary,
}

/// `[supervisor]`: the failover chain and the restart policy of the city pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    pub strategy: Strategy,
    /// More restarts than this within `within` and the supervisor gives up: the node
    /// reports not ready and exits non-zero rather than restarting in a loop.
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// Delay before the first restart of an actor; multiplied for each further restart
    /// inside `within`, up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub backoff_multiplier: f64,
    /// Restart type per actor (any [`ActorName`]: `failover`, `storage_writer`,
    /// `prioritizer`, `repairer`, `flagger`, `dag_batcher`, `intake`, `uplink` on a city;
    /// `merger`, `uplink` on a continent; `collector`, `checkpointer` on the global node);
    /// unlisted actors are `permanent`.
    pub restart: std::collections::BTreeMap<ActorName, RestartType>,
    /// Enables `POST /v1/actors/{name}/panic`, for fault-injection tests. Never in
    /// production.
    pub fault_injection: bool,
    /// Tiers in the order a batch tries them. Must end with `"log"`, the tier that is
    /// always there. `"mongo"` is skipped when no URI is configured for the continent.
    pub chain: Vec<Tier>,
    /// Batches being written at once; further batches wait in the StorageWriter's mailbox.
    pub max_inflight_batches: usize,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            within: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            restart: Default::default(),
            fault_injection: false,
            chain: vec![Tier::Light, Tier::Full, Tier::Mongo, Tier::Log],
            max_inflight_batches: 64,
        }
    }
}

/// `[auth]`: who may call a node's internal API, and how their requests are checked.
///
/// Every request but the health report is signed by its sender's node key (see
/// `messages::auth`); a node serves only the nodes listed here: a storage node its cities,
/// a continent its cities, the global node its continents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The nodes allowed to call it: on a storage node the cities it stores for (write,
    /// read, challenge), on a continent its cities, on the global node its continents.
    pub peers: Vec<PeerKeyEntry>,
    /// How far a signed request's time may be from this node's clock; a request is
    /// accepted once within twice this window.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Possession proofs this node signs per second for one peer, on average; more get
    /// 429 `rate_limited`.
    pub challenges_per_second: u32,
    /// Possession proofs one peer may ask for at once before the rate applies.
    pub challenge_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            max_clock_skew: Duration::from_secs(30),
            challenges_per_second: 20,
            challenge_burst: 64,
        }
    }
}

/// One `[[auth.peers]]` entry: a node allowed to call this one, and its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerKeyEntry {
    pub id: String,
    pub role: Role,
    /// Base64 of the node's ML-DSA-65 public key; its requests must verify with it.
    pub public_key: String,
    /// On a continent node: the city this city node speaks for (required there); the
    /// batches it forwards must be that city's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// On the global node: the continent this continent node speaks for (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
}
