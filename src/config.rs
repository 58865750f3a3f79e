//! Node configuration: one TOML file per node.
//!
//! Every section is optional except `[node]`; defaults live in the `Default` impls below and
//! nowhere else. Durations are written as `"5ms"`, `"2s"`; sizes are plain bytes. Unknown
//! fields are errors, and [`Config::load`] reports every problem it can find at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::messages::{FlagKind, Tier};

/// The role a node plays in the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    City,
    Continent,
    Global,
    Light,
    Full,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::City => "city",
            Role::Continent => "continent",
            Role::Global => "global",
            Role::Light => "light",
            Role::Full => "full",
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub batcher: BatcherConfig,
    #[serde(default)]
    pub flagger: FlaggerConfig,
    #[serde(default)]
    pub prioritizer: PrioritizerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub repair: RepairConfig,
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
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(2),
            batches_per_round: 64,
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
    /// Transactions accepted but not yet durable, at most; past it, 503 `overloaded`.
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
            queue_capacity: 20_000,
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
        }
    }
}

/// `[flagger]`: how transactions are flagged and how urgently they are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlaggerConfig {
    /// Flag policy by name. Built in: `"default"` (rules below), `"always_immediate"`.
    pub policy: String,
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
            policy: "default".into(),
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
    /// Node policy by name. Built in: `"weighted"`.
    pub policy: String,
    /// Light nodes each batch is sent to.
    pub light_fanout: usize,
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
            policy: "weighted".into(),
            light_fanout: 4,
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
    /// Valid proof-of-hold acks needed from light nodes.
    pub min_light_acks: usize,
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

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            min_light_acks: 3,
            min_full_acks: 1,
            light_deadline: Duration::from_millis(100),
            full_deadline: Duration::from_millis(250),
            log_dir: None,
            capacity_bytes: 0,
            nodes: Vec::new(),
            mongo: MongoConfig::default(),
        }
    }
}

pub const DEFAULT_LIGHT_CAPACITY: u64 = 256 * 1024 * 1024;
pub const DEFAULT_FULL_CAPACITY: u64 = 16 * 1024 * 1024 * 1024;

impl StorageConfig {
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
    /// Restart type per actor (`intake`, `dag_batcher`, `flagger`, `prioritizer`,
    /// `storage_writer`); unlisted actors are `permanent`.
    pub restart: std::collections::BTreeMap<String, RestartType>,
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

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigErrors {
    pub problems: Vec<String>,
}

const SECTIONS: [&str; 8] = [
    "repair",
    "node",
    "intake",
    "batcher",
    "flagger",
    "prioritizer",
    "storage",
    "supervisor",
];

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        Self::parse(&text)
    }

    /// Parses and validates. Each section is read on its own so that a mistake in one does
    /// not hide mistakes in the others.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigErrors {
            problems: vec![format!("not valid TOML: {}", e.message())],
        })?;
        let mut problems = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown section [{key}] (expected one of: {})",
                    SECTIONS.join(", ")
                ));
            }
        }
        fn section<T: serde::de::DeserializeOwned + Default>(
            table: &toml::Table,
            name: &str,
            problems: &mut Vec<String>,
        ) -> T {
            match table.get(name) {
                None => T::default(),
                Some(v) => match v.clone().try_into::<T>() {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(format!("[{name}]: {}", e.message()));
                        T::default()
                    }
                },
            }
        }
        let node = match table.get("node") {
            None => {
                problems.push("missing section [node]".into());
                None
            }
            Some(v) => match v.clone().try_into::<NodeConfig>() {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(format!("[node]: {}", e.message()));
                    None
                }
            },
        };
        let config = node.map(|node| Config {
            node,
            intake: section(&table, "intake", &mut problems),
            batcher: section(&table, "batcher", &mut problems),
            flagger: section(&table, "flagger", &mut problems),
            prioritizer: section(&table, "prioritizer", &mut problems),
            storage: section(&table, "storage", &mut problems),
            supervisor: section(&table, "supervisor", &mut problems),
            repair: section(&table, "repair", &mut problems),
        });
        if let Some(c) = &config {
            problems.extend(c.validate());
        }
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigErrors { problems }),
        }
    }

    /// Semantic checks; returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let n = &self.node;
        if n.id.trim().is_empty() {
            p.push("[node] id must not be empty".into());
        }
        if n.continent.trim().is_empty() {
            p.push("[node] continent must not be empty".into());
        }
        if n.role == Role::City && n.city.as_deref().is_none_or(|c| c.trim().is_empty()) {
            p.push("[node] city is required for a city node".into());
        }
        let i = &self.intake;
        if i.queue_capacity == 0 {
            p.push("[intake] queue_capacity must be at least 1".into());
        }
        if i.max_body_bytes < 1024 {
            p.push("[intake] max_body_bytes must be at least 1024".into());
        }
        if i.request_timeout.is_zero() {
            p.push("[intake] request_timeout must be positive".into());
        }
        let b = &self.batcher;
        if b.max_batch_txs == 0 {
            p.push("[batcher] max_batch_txs must be at least 1".into());
        }
        if b.max_batch_bytes < i.max_body_bytes {
            p.push(format!(
                "[batcher] max_batch_bytes ({}) must hold at least one largest request ({})",
                b.max_batch_bytes, i.max_body_bytes
            ));
        }
        if b.min_delay > b.max_delay {
            p.push("[batcher] min_delay must not exceed max_delay".into());
        }
        if b.max_delay.is_zero() {
            p.push("[batcher] max_delay must be positive".into());
        }
        if b.max_parents == 0 {
            p.push("[batcher] max_parents must be at least 1".into());
        }
        if !crate::actors::flagger::POLICIES.contains(&self.flagger.policy.as_str()) {
            p.push(format!(
                "[flagger] unknown policy {:?} (built in: {})",
                self.flagger.policy,
                crate::actors::flagger::POLICIES.join(", ")
            ));
        }
        let pr = &self.prioritizer;
        if !crate::actors::prioritizer::POLICIES.contains(&pr.policy.as_str()) {
            p.push(format!(
                "[prioritizer] unknown policy {:?} (built in: {})",
                pr.policy,
                crate::actors::prioritizer::POLICIES.join(", ")
            ));
        }
        let w = &pr.weights;
        let ws = [w.latency, w.uptime, w.capacity, w.load, w.same_continent];
        if ws.iter().any(|x| !x.is_finite() || *x < 0.0) || ws.iter().sum::<f64>() <= 0.0 {
            p.push("[prioritizer.weights] must be non-negative with a positive sum".into());
        }
        if pr.probe_interval.is_zero() || pr.probe_timeout.is_zero() {
            p.push("[prioritizer] probe_interval and probe_timeout must be positive".into());
        }
        if pr.down_after_failures == 0 {
            p.push("[prioritizer] down_after_failures must be at least 1".into());
        }
        let s = &self.storage;
        if s.min_light_acks == 0 || s.min_full_acks == 0 {
            p.push("[storage] min_light_acks and min_full_acks must be at least 1".into());
        }
        if pr.light_fanout < s.min_light_acks {
            p.push(format!(
                "[prioritizer] light_fanout ({}) must be at least [storage] min_light_acks ({})",
                pr.light_fanout, s.min_light_acks
            ));
        }
        let mut ids = BTreeSet::new();
        for (idx, e) in s.nodes.iter().enumerate() {
            let at = format!("[[storage.nodes]] #{} ({})", idx + 1, e.id);
            if !ids.insert(e.id.as_str()) {
                p.push(format!("{at}: duplicate id"));
            }
            if !e.role.is_storage() {
                p.push(format!("{at}: role must be light or full, not {}", e.role));
            }
            if reqwest::Url::parse(&e.url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                p.push(format!("{at}: url {:?} is not an http(s) URL", e.url));
            }
            if decode_public_key(&e.public_key).is_none() {
                p.push(format!(
                    "{at}: public_key is not a base64 ML-DSA-65 public key"
                ));
            }
        }
        if n.role == Role::City {
            let lights = s.nodes.iter().filter(|e| e.role == Role::Light).count();
            let fulls = s.nodes.iter().filter(|e| e.role == Role::Full).count();
            if self.supervisor.chain.contains(&Tier::Light) && lights < s.min_light_acks {
                p.push(format!(
                    "[storage] the light tier needs {} acks but only {lights} light nodes are listed",
                    s.min_light_acks
                ));
            }
            if self.supervisor.chain.contains(&Tier::Full) && fulls < s.min_full_acks {
                p.push(format!(
                    "[storage] the full tier needs {} acks but only {fulls} full nodes are listed",
                    s.min_full_acks
                ));
            }
        }
        let chain = &self.supervisor.chain;
        if chain.last() != Some(&Tier::Log) {
            p.push(
                "[supervisor] chain must end with \"log\", the tier that is always there".into(),
            );
        }
        if chain.iter().collect::<BTreeSet<_>>().len() != chain.len() {
            p.push("[supervisor] chain lists a tier twice".into());
        }
        for (continent, uri) in &s.mongo.uris {
            if !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://") {
                p.push(format!(
                    "[storage.mongo.uris] {continent}: {uri:?} is not a mongodb:// or mongodb+srv:// URI"
                ));
            }
        }
        if s.mongo.deadline.is_zero() || s.mongo.database.trim().is_empty() {
            p.push("[storage.mongo] deadline must be positive and database non-empty".into());
        }
        let sup = &self.supervisor;
        for name in sup.restart.keys() {
            if !crate::actors::failover_supervisor::CHILDREN.contains(&name.as_str()) {
                p.push(format!(
                    "[supervisor.restart] unknown actor {name:?} (actors: {})",
                    crate::actors::failover_supervisor::CHILDREN.join(", ")
                ));
            }
        }
        if sup.within.is_zero()
            || sup.backoff_multiplier.is_nan()
            || sup.backoff_multiplier < 1.0
            || sup.backoff_initial > sup.backoff_max
        {
            p.push("[supervisor] within must be positive, backoff_multiplier at least 1, backoff_initial at most backoff_max".into());
        }
        if self.repair.interval.is_zero() || self.repair.batches_per_round == 0 {
            p.push("[repair] interval and batches_per_round must be positive".into());
        }
        if self.supervisor.max_inflight_batches == 0 {
            p.push("[supervisor] max_inflight_batches must be at least 1".into());
        }
        p
    }

    pub fn log_dir(&self) -> PathBuf {
        self.storage
            .log_dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("log"))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }
}

/// Decodes a base64 ML-DSA-65 public key, checking its length.
pub fn decode_public_key(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    (key.len() == crate::crypto::PUBLIC_KEY_LEN).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
id = "light-1"
role = "light"
listen = "127.0.0.1:7001"
data_dir = "/tmp/x"
continent = "asia"
"#;

    #[test]
    fn minimal_storage_node_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.batcher, BatcherConfig::default());
        assert_eq!(c.storage.capacity_for(Role::Light), DEFAULT_LIGHT_CAPACITY);
        assert_eq!(c.log_dir(), PathBuf::from("/tmp/x/log"));
        // The effective config written back parses to the same thing.
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{MINIMAL}\n[batcher]\nmax_delay = \"soon\"\n[flagger]\ncolour = 1\n[extra]\n[supervisor]\nchain = [\"light\", \"full\"]\n"
        );
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("[batcher]"), "{all}");
        assert!(all.contains("unknown field `colour`"), "{all}");
        assert!(all.contains("unknown section [extra]"), "{all}");
        assert!(all.contains("must end with \"log\""), "{all}");
        assert_eq!(err.problems.len(), 4, "{all}");
    }

    #[test]
    fn city_needs_a_city_and_enough_light_nodes() {
        let text = MINIMAL.replace("role = \"light\"", "role = \"city\"");
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("city is required"), "{all}");
        assert!(all.contains("only 0 light nodes"), "{all}");
    }
}
