//! A local federation of child processes: what `citychain up` runs and what the cluster
//! tests drive.
//!
//! A [`FederationSpec`] names cities, each on a continent: every city gets its own light
//! nodes, every continent its full nodes (shared by its cities), its DPoS representatives
//! (each its own process, serving its continent node's key; the continent's `[dpos]`
//! names them with their keys, stakes and URLs) and a continent node, and there is one
//! global node. [`Federation::launch`] plans every node (free loopback ports,
//! a data dir, a key for each node, each continent's key holder's vault key in
//! `DIR/vault/CONTINENT.key` with its public key in the `[vault]` of that continent's
//! cities, the allow-lists of the links up: a light node serves its city's key, a full
//! node and a continent the keys of the continent's cities, the global node the
//! continents'; a config file written under `DIR/configs/`), starts each as its own
//! `citychain node --config FILE` process with its output in `DIR/logs/`, writes
//! `DIR/federation.json` (API.md) with, for Prometheus, `DIR/prometheus-targets.json` (its
//! `file_sd` format: every node's address and labels) and waits until every node answers `/readyz`. Any node
//! can then be stopped, killed or started again by id, by this code or by an operator with
//! the pid and config path from `federation.json`.
//!
//! With [`Placement::Hosts`] the same plan is made for nodes on hosts of their own
//! (`citychain deploy-configs`): every URL comes from a host-name template and one port,
//! every data dir and key path is a fixed path on the node's host, keys are written to
//! `DIR/keys/ID.key` for the deployment to mount, and [`Federation::plan`] writes every
//! config whole; nothing is started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};

use citychain::config::{
    Config, NodeConfig, PeerKeyEntry, RepresentativeEntry, Role, StorageNodeEntry, UplinkConfig,
    VaultConfig,
};
use citychain::crypto::SigningKey;
use citychain::crypto::vault::VaultKey;
use citychain::messages::auth::RequestSigner;
use citychain::node::{LISTEN_ADDR_FILE, load_or_create_key};
use citychain::storage::peer::PeerClient;

/// A city of the federation and the continent it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitySpec {
    pub city: String,
    pub continent: String,
}

impl CitySpec {
    pub fn new(city: impl Into<String>, continent: impl Into<String>) -> Self {
        Self {
            city: city.into(),
            continent: continent.into(),
        }
    }
}

/// Real cities by continent, in the order `citychain up` picks them: the first city of
/// each continent in use, then the second, and so on.
pub const WORLD: &[(&str, [&str; 4])] = &[
    ("asia", ["tokyo", "seoul", "mumbai", "singapore"]),
    ("europe", ["paris", "berlin", "madrid", "rome"]),
    (
        "north-america",
        ["toronto", "chicago", "montreal", "denver"],
    ),
    ("africa", ["lagos", "nairobi", "cairo", "accra"]),
    ("south-america", ["lima", "bogota", "santiago", "quito"]),
    ("oceania", ["sydney", "auckland", "melbourne", "perth"]),
];

/// The example fence (`config/fences/CITY.geojson`, GeoJSON) of each city of [`WORLD`]:
/// a 12-sided polygon of radius 30 km around the city centre. `up` gives each city its
/// own, so a transaction's `pop` is checked against it.
pub fn example_fence(city: &str) -> Option<&'static str> {
    macro_rules! fences {
        ($($city:literal),* $(,)?) => {
            match city {
                $($city => Some(include_str!(concat!("../../../config/fences/", $city, ".geojson"))),)*
                _ => None,
            }
        };
    }
    fences!(
        "tokyo",
        "seoul",
        "mumbai",
        "singapore",
        "paris",
        "berlin",
        "madrid",
        "rome",
        "toronto",
        "chicago",
        "montreal",
        "denver",
        "lagos",
        "nairobi",
        "cairo",
        "accra",
        "lima",
        "bogota",
        "santiago",
        "quito",
        "sydney",
        "auckland",
        "melbourne",
        "perth",
    )
}

/// The shape of a federation on the command line of `citychain up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub cities: usize,
    /// `None`: as many as the cities, at most two.
    pub continents: Option<usize>,
    pub lights_per_city: usize,
    pub fulls_per_continent: usize,
    /// DPoS representatives per continent (0: no approval).
    pub representatives_per_continent: usize,
}

impl Default for Topology {
    /// What `citychain up` runs: two cities on two continents, six light nodes per city,
    /// two full nodes and three representatives per continent.
    fn default() -> Self {
        Self {
            cities: 2,
            continents: None,
            lights_per_city: 6,
            fulls_per_continent: 2,
            representatives_per_continent: 3,
        }
    }
}

impl Topology {
    /// The cities, or why this shape cannot run with the default `[storage]` settings.
    pub fn cities(&self) -> Result<Vec<CitySpec>, String> {
        let storage = citychain::config::StorageConfig::default();
        let max_cities = WORLD.len() * WORLD[0].1.len();
        if self.cities == 0 || self.cities > max_cities {
            return Err(format!(
                "--cities must be 1 to {max_cities}, not {}",
                self.cities
            ));
        }
        let continents = self.continents.unwrap_or(self.cities.min(2));
        if continents == 0 || continents > WORLD.len() {
            return Err(format!(
                "--continents must be 1 to {}, not {continents}",
                WORLD.len()
            ));
        }
        if continents > self.cities {
            return Err(format!(
                "--continents {continents} needs at least {continents} cities (one per continent); --cities is {}",
                self.cities
            ));
        }
        let per_continent = WORLD[0].1.len();
        if self.cities > continents * per_continent {
            return Err(format!(
                "{} cities on {continents} continent(s) is more than {per_continent} per continent; add continents (--continents) or use fewer cities",
                self.cities
            ));
        }
        let needed = storage.min_light_acks();
        if self.lights_per_city < needed {
            return Err(format!(
                "--light-per-city must be at least {needed}: a light write needs k + survive_losses = {} + {} light nodes, each holding one erasure-coded piece; got {}",
                storage.erasure.data_pieces, storage.erasure.survive_losses, self.lights_per_city
            ));
        }
        if self.fulls_per_continent < storage.min_full_acks {
            return Err(format!(
                "--full-per-continent must be at least {}: a full write needs {} full node ack(s); got {}",
                storage.min_full_acks, storage.min_full_acks, self.fulls_per_continent
            ));
        }
        Ok((0..self.cities)
            .map(|i| {
                let (continent, names) = WORLD[i % continents];
                CitySpec::new(names[i / continents], continent)
            })
            .collect())
    }
}

/// What to launch.
#[derive(Clone)]
pub struct FederationSpec {
    pub dir: PathBuf,
    /// The `citychain` binary to run for each node.
    pub binary: PathBuf,
    /// The cities, each with its continent. Every continent named gets one continent node
    /// and `fulls` full nodes shared by its cities; there is one global node.
    pub cities: Vec<CitySpec>,
    /// Light nodes per city.
    pub lights: usize,
    /// Full nodes per continent.
    pub fulls: usize,
    /// DPoS representatives per continent, each its own process (0: the continents run
    /// no approval).
    pub representatives_per_continent: usize,
    /// The representatives' stakes, in order (missing ones: [`DEFAULT_STAKE`]).
    pub representative_stakes: Vec<u64>,
    /// Adjusts each generated config before it is written (tests shorten timers here).
    pub tweak: fn(&mut Config),
    /// How long to wait for every node to be ready.
    pub ready_timeout: Duration,
    /// More arguments for every `citychain node --config FILE` started (`up` passes its
    /// `--log-format` on).
    pub node_args: Vec<String>,
    /// Where the nodes run: loopback processes (`up`) or hosts of their own.
    pub placement: Placement,
}

/// Where the nodes of a federation run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Every node its own process on loopback, on a free port, its data and key in
    /// `DIR/nodes/ID` (what `citychain up` runs). Storage nodes and representatives are
    /// numbered from 1.
    Loopback,
    /// Every node on a host of its own (`citychain deploy-configs`): configs only, nothing
    /// starts. Storage nodes and representatives are numbered from 0, like the pods of a
    /// StatefulSet, so that a node's id can be its pod's or container's host name.
    Hosts(Hosts),
}

/// The addresses, paths and MongoDB deployments of a federation on hosts of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// Each node's host name, with `{node_id}`, `{role}`, `{city}` and `{continent}`
    /// replaced by the node's (`{city}` and `{continent}` are empty where a node has none).
    pub host: String,
    /// The port every node listens on (on all interfaces) and is reached at.
    pub port: u16,
    /// Each continent's MongoDB URI, with `{continent}` replaced, written into the
    /// `[storage.mongo.uris]` of its cities (none: no MongoDB tier).
    pub mongo_uri: Option<String>,
    /// Every node's data dir (on a volume of its own).
    pub data_dir: PathBuf,
    /// Where every node finds its key, `KEY_DIR/ID.key` (mounted from a secret).
    pub key_dir: PathBuf,
}

impl Hosts {
    /// Placeholders a template may use.
    pub const PLACEHOLDERS: [&str; 4] = ["{node_id}", "{role}", "{city}", "{continent}"];

    fn fill(
        template: &str,
        id: &str,
        role: Role,
        city: Option<&str>,
        continent: Option<&str>,
    ) -> String {
        template
            .replace("{node_id}", id)
            .replace("{role}", role.as_str())
            .replace("{city}", city.unwrap_or(""))
            .replace("{continent}", continent.unwrap_or(""))
    }

    /// Why the templates cannot name every node apart, if they cannot: the host must name
    /// the node (`{node_id}`), and the MongoDB URI its continent; no unknown placeholder.
    pub fn check(&self) -> Result<(), String> {
        let unknown = |what: &str, template: &str| -> Result<(), String> {
            let mut rest = template.to_string();
            for p in Self::PLACEHOLDERS {
                rest = rest.replace(p, "");
            }
            if rest.contains('{') || rest.contains('}') {
                return Err(format!(
                    "{what} {template:?} has an unknown placeholder (known: {})",
                    Self::PLACEHOLDERS.join(", ")
                ));
            }
            Ok(())
        };
        unknown("--host", &self.host)?;
        if !self.host.contains("{node_id}") {
            return Err(format!(
                "--host {:?} must contain {{node_id}}: every node needs a host name of its own",
                self.host
            ));
        }
        if self.port == 0 {
            return Err(
                "--port must not be 0: the other nodes must know where to reach a node".into(),
            );
        }
        if let Some(uri) = &self.mongo_uri {
            unknown("--mongo-uri", uri)?;
        }
        Ok(())
    }
}

impl FederationSpec {
    /// One city (tokyo, in asia), its continent node, the global node, six light and two
    /// full nodes: the smallest whole federation.
    pub fn local(dir: PathBuf, binary: PathBuf) -> Self {
        Self {
            dir,
            binary,
            cities: vec![CitySpec::new("tokyo", "asia")],
            lights: 6,
            fulls: 2,
            representatives_per_continent: 0,
            representative_stakes: Vec::new(),
            tweak: |_| {},
            ready_timeout: Duration::from_secs(30),
            node_args: Vec::new(),
            placement: Placement::Loopback,
        }
    }

    /// The federation of `citychain up`: the cities of `topology` (checked first), each
    /// with its light nodes, full and continent nodes per continent, one global node.
    pub fn world(dir: PathBuf, binary: PathBuf, topology: Topology) -> Result<Self, String> {
        let cities = topology.cities()?;
        Ok(Self {
            // A node starts in about a second on a loaded 2-core machine; many start at once.
            ready_timeout: Duration::from_secs(30 + 2 * cities.len() as u64),
            cities,
            lights: topology.lights_per_city,
            fulls: topology.fulls_per_continent,
            representatives_per_continent: topology.representatives_per_continent,
            ..Self::local(dir, binary)
        })
    }

    /// The continents of the cities, in the order they first appear.
    pub fn continents(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.cities {
            if !out.contains(&c.continent) {
                out.push(c.continent.clone());
            }
        }
        out
    }

    /// How many processes the federation runs.
    pub fn node_count(&self) -> usize {
        let continents = self.continents().len();
        self.cities.len() * (self.lights + 1)
            + continents * (self.fulls + self.representatives_per_continent + 1)
            + 1
    }

    /// The id of representative `i` (from 1) of `continent`.
    pub fn representative_id(&self, continent: &str, i: usize) -> String {
        self.numbered(&format!("rep-{continent}"), i)
    }

    /// `PREFIX-N`, the id of the `i`-th (from 1) of several nodes: `N` is `i` on loopback,
    /// `i - 1` on hosts (a StatefulSet's pod ordinal).
    pub fn numbered(&self, prefix: &str, i: usize) -> String {
        match self.placement {
            Placement::Loopback => format!("{prefix}-{i}"),
            Placement::Hosts(_) => format!("{prefix}-{}", i - 1),
        }
    }

    /// Where node `id`'s key is kept on this machine: in its data dir on loopback,
    /// `DIR/keys/ID.key` for hosts (to be mounted as a secret).
    pub fn local_key_path(&self, id: &str) -> PathBuf {
        match self.placement {
            Placement::Loopback => self.dir.join("nodes").join(id).join("node.key"),
            Placement::Hosts(_) => self.dir.join("keys").join(format!("{id}.key")),
        }
    }

    /// The stake of representative `i` (from 1).
    pub fn stake_of(&self, i: usize) -> u64 {
        self.representative_stakes
            .get(i - 1)
            .copied()
            .unwrap_or(DEFAULT_STAKE)
    }
}

/// A representative's stake when the spec names none.
pub const DEFAULT_STAKE: u64 = 100;

/// Timers for a federation under test or fault injection: probes often, so a killed node
/// is noticed within a few hundred ms; tier deadlines generous, so a loaded 2-core machine
/// never turns a slow write into a failover nobody asked for; repair rounds often. Speed
/// is the bench command's business, not these runs'.
pub fn watchful(c: &mut Config) {
    if matches!(c.node.role, Role::City | Role::Continent) {
        // A restarted continent or global node hears from the level below within a second.
        let mut uplink = UplinkConfig::to("", "");
        uplink.retry_max = Duration::from_secs(1);
        c.uplink = Some(uplink);
    }
    c.prioritizer.probe_interval = Duration::from_millis(100);
    c.prioritizer.probe_timeout = Duration::from_millis(500);
    c.storage.light_deadline = Duration::from_secs(3);
    c.storage.full_deadline = Duration::from_secs(3);
    c.intake.request_timeout = Duration::from_secs(15);
    c.repair.interval = Duration::from_millis(300);
    // Missing votes are asked again within a second.
    c.dpos.retry_max = Duration::from_secs(1);
    c.dpos.timeout = Duration::from_secs(3);
}

/// One line of `federation.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    pub node_id: String,
    pub role: Role,
    pub url: String,
    pub pid: Option<u32>,
    pub config: PathBuf,
    /// The city a city or light node serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// The continent of every node but the global one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
}

/// A node of the federation and its process, if running.
pub struct FedNode {
    pub id: String,
    pub role: Role,
    pub url: String,
    pub config_path: PathBuf,
    pub config: Config,
    /// The city a city or light node serves.
    pub city: Option<String>,
    /// The continent of every node but the global one.
    pub continent: Option<String>,
    child: Option<Child>,
}

impl FedNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self, dir: &Path) -> PathBuf {
        dir.join("logs").join(format!("{}.log", self.id))
    }

    fn write_config(&self) -> anyhow::Result<()> {
        std::fs::write(&self.config_path, self.config.to_toml())
            .with_context(|| format!("writing {}", self.config_path.display()))
    }
}

pub struct Federation {
    pub spec: FederationSpec,
    pub nodes: Vec<FedNode>,
    /// Base64 public keys of the storage nodes, by id.
    keys: std::collections::HashMap<String, String>,
    http: reqwest::Client,
}

impl Federation {
    /// Plans, starts every node, writes `federation.json`, and waits for readiness.
    ///
    /// Nodes bind port 0 and report the port they got (`DATA_DIR/listen.addr`), so two
    /// federations on one machine never race for a port. Storage nodes start first, then
    /// the levels from the top: the global node, the continent (whose `[uplink]` is the
    /// global node's address), the city (whose `[uplink]` is the continent's, and whose
    /// storage nodes are known by then). Each config file is then rewritten with the real
    /// port, so a node restarted from it comes back on the same address.
    pub async fn launch(spec: FederationSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            spec.placement == Placement::Loopback,
            "a federation planned for other hosts is not started here"
        );
        let mut fed = Self::plan(spec)?;
        let deadline = Instant::now() + fed.spec.ready_timeout;
        // Storage nodes and representatives first: the levels above name their addresses.
        let storage = fed.ids_where(|r| r.is_storage() || r == Role::Representative);
        for id in &storage {
            fed.spawn(id)?;
        }
        for id in &storage {
            fed.learn_address(id, deadline).await?;
        }
        let entries = fed.storage_entries();
        let mut others = Vec::new();
        for role in [Role::Global, Role::Continent, Role::City] {
            let ids = fed.ids_where(|r| r == role);
            for id in &ids {
                fed.wire(id, &entries)?;
                fed.node(id).write_config()?;
                fed.spawn(id)?;
            }
            for id in &ids {
                fed.learn_address(id, deadline).await?;
            }
            others.extend(ids);
        }
        fed.write_manifest()?;
        for id in storage.iter().chain(&others) {
            fed.wait_ready(id, deadline).await?;
        }
        Ok(fed)
    }

    /// Every storage node as the cities and continents name it (with its URL and key),
    /// and the city a light node serves.
    fn storage_entries(&self) -> Vec<(StorageNodeEntry, Option<String>)> {
        self.nodes
            .iter()
            .filter(|n| n.role.is_storage())
            .map(|n| {
                let entry = StorageNodeEntry {
                    id: n.id.clone(),
                    role: n.role,
                    url: n.url.clone(),
                    continent: n.config.node.continent.clone(),
                    public_key: self.keys[&n.id].clone(),
                };
                (entry, n.city.clone())
            })
            .collect()
    }

    /// Points city, continent or global node `id` at the nodes it talks to (their URLs
    /// known by now) and validates its config: its storage nodes (a city writes to its
    /// own light nodes and its continent's full nodes; a continent checks the acks of all
    /// its cities' storage nodes with their keys), its representatives, its uplink (a
    /// city's continent node, a continent's global node).
    fn wire(
        &mut self,
        id: &str,
        entries: &[(StorageNodeEntry, Option<String>)],
    ) -> anyhow::Result<()> {
        let (role, city, continent) = {
            let n = self.node(id);
            (n.role, n.city.clone(), n.continent.clone())
        };
        let upstream = match role {
            Role::City => continent.as_ref().map(|c| format!("continent-{c}")),
            Role::Continent => Some("global".to_string()),
            _ => None,
        }
        .map(|up| (up.clone(), self.node(&up).url.clone()));
        let serves = |(e, holder_city): &(StorageNodeEntry, Option<String>)| match role {
            Role::City => {
                Some(&e.continent) == continent.as_ref()
                    && (e.role == Role::Full || holder_city == &city)
            }
            Role::Continent => Some(&e.continent) == continent.as_ref(),
            _ => false,
        };
        let urls: std::collections::HashMap<String, String> = self
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.url.clone()))
            .collect();
        let node = self.node_mut(id);
        for rep in &mut node.config.dpos.representatives {
            rep.url = urls.get(&rep.id).cloned().unwrap_or_default();
        }
        if role != Role::Global {
            node.config.storage.nodes = entries
                .iter()
                .filter(|e| serves(e))
                .map(|(e, _)| e.clone())
                .collect();
        }
        if let Some((up_id, up_url)) = upstream {
            let mut uplink = node
                .config
                .uplink
                .take()
                .unwrap_or_else(|| UplinkConfig::to("", ""));
            uplink.id = up_id;
            uplink.url = up_url;
            node.config.uplink = Some(uplink);
        }
        let problems = node.config.validate();
        if !problems.is_empty() {
            bail!(
                "generated config for {id} is invalid:\n{}",
                problems.join("\n")
            );
        }
        Ok(())
    }

    fn ids_where(&self, f: impl Fn(Role) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| f(n.role))
            .map(|n| n.id.clone())
            .collect()
    }

    /// Waits for node `id` to report its address, then pins it in the node's config.
    async fn learn_address(&mut self, id: &str, deadline: Instant) -> anyhow::Result<()> {
        let file = self.node(id).config.node.data_dir.join(LISTEN_ADDR_FILE);
        let addr: SocketAddr = loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(addr) = text.trim().parse()
            {
                break addr;
            }
            self.check_alive(id)?;
            if Instant::now() > deadline {
                bail!(
                    "node {id} did not start listening in time; see {}",
                    self.log_of(id).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let node = self.node_mut(id);
        node.config.node.listen = addr;
        node.url = format!("http://{addr}");
        node.write_config()
    }

    fn log_of(&self, id: &str) -> PathBuf {
        self.node(id).log_path(&self.spec.dir)
    }

    /// Fails with the end of its log if node `id` has exited.
    fn check_alive(&mut self, id: &str) -> anyhow::Result<()> {
        let log = self.log_of(id);
        let node = self.node_mut(id);
        if let Some(child) = node.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            node.child = None;
            bail!(
                "node {id} exited ({status}) before it was ready; its log ({}) ends:\n{}",
                log.display(),
                tail(&log, 20)
            );
        }
        Ok(())
    }

    /// Where the continent key holder's key of a federation in `dir` is: the one key that
    /// opens its sealed batches (`citychain vault open`). Kept across runs in the same dir.
    pub fn vault_key_path(dir: &Path, continent: &str) -> PathBuf {
        dir.join("vault").join(format!("{continent}.key"))
    }

    /// The key holder's key of `continent`, created on first use.
    fn holder_key(dir: &Path, continent: &str) -> anyhow::Result<VaultKey> {
        let path = Self::vault_key_path(dir, continent);
        if path.exists() {
            return Ok(VaultKey::load(&path)?);
        }
        let key = VaultKey::generate()?;
        key.save(&path)?;
        Ok(key)
    }

    /// Re-reads node `id`'s config file (changed by an operator, e.g. `citychain vault
    /// rotate`), so that a restart runs on what the file says.
    pub fn reload_config(&mut self, id: &str) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        node.config = Config::load(&node.config_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", node.config_path.display()))?;
        Ok(())
    }

    /// Creates keys and configs for every node; starts nothing. On loopback every node
    /// listens on port 0 and the links between them are made once they listen
    /// ([`launch`](Self::launch)); on hosts every URL is known, so every config is whole
    /// and written here.
    pub fn plan(spec: FederationSpec) -> anyhow::Result<Self> {
        let dir = &spec.dir;
        let subdirs: &[&str] = match spec.placement {
            Placement::Loopback => &["configs", "logs", "nodes"],
            Placement::Hosts(_) => &["configs", "keys"],
        };
        for sub in subdirs {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let continents = spec.continents();
        anyhow::ensure!(!continents.is_empty(), "a federation needs a city");
        // The cities need only their continent's holder's public key to seal; the key
        // itself stays here.
        let mut vaults = std::collections::HashMap::new();
        for c in &continents {
            vaults.insert(
                c.clone(),
                VaultConfig::with_key(Self::holder_key(dir, c)?.public()),
            );
        }
        // With one city, storage nodes are light-N and full-N; with more, their names say
        // whose they are (light-paris-N, full-europe-N).
        let several = spec.cities.len() > 1;
        // (id, role, city, continent)
        let mut roles: Vec<(String, Role, Option<String>, Option<String>)> = Vec::new();
        for c in &spec.cities {
            roles.extend((1..=spec.lights).map(|i| {
                let id = if several {
                    spec.numbered(&format!("light-{}", c.city), i)
                } else {
                    spec.numbered("light", i)
                };
                (
                    id,
                    Role::Light,
                    Some(c.city.clone()),
                    Some(c.continent.clone()),
                )
            }));
        }
        for c in &continents {
            roles.extend((1..=spec.fulls).map(|i| {
                let id = if several {
                    spec.numbered(&format!("full-{c}"), i)
                } else {
                    spec.numbered("full", i)
                };
                (id, Role::Full, None, Some(c.clone()))
            }));
        }
        for c in &spec.cities {
            roles.push((
                format!("city-{}", c.city),
                Role::City,
                Some(c.city.clone()),
                Some(c.continent.clone()),
            ));
        }
        for c in &continents {
            roles.extend((1..=spec.representatives_per_continent).map(|i| {
                (
                    spec.representative_id(c, i),
                    Role::Representative,
                    None,
                    Some(c.clone()),
                )
            }));
        }
        for c in &continents {
            roles.push((
                format!("continent-{c}"),
                Role::Continent,
                None,
                Some(c.clone()),
            ));
        }
        roles.push(("global".into(), Role::Global, None, None));
        {
            let mut seen = std::collections::HashSet::new();
            for (id, ..) in &roles {
                anyhow::ensure!(seen.insert(id.clone()), "two nodes would be named {id}");
            }
        }

        // Each city signs every request to its storage nodes and its continent; they serve
        // only the keys of the cities that write to them. Each continent signs what it
        // forwards to the global node, which serves only the continents' keys.
        let b64 =
            |key: &SigningKey| base64::engine::general_purpose::STANDARD.encode(key.public_key());
        let key_of = |id: &str| load_or_create_key(&spec.local_key_path(id));
        let mut city_peers = Vec::new();
        for c in &spec.cities {
            let id = format!("city-{}", c.city);
            let peer = PeerKeyEntry {
                public_key: b64(&key_of(&id)?),
                id,
                role: Role::City,
                city: Some(c.city.clone()),
                continent: None,
            };
            city_peers.push((c.clone(), peer));
        }
        let mut continent_peers = Vec::new();
        for c in &continents {
            let id = format!("continent-{c}");
            continent_peers.push(PeerKeyEntry {
                public_key: b64(&key_of(&id)?),
                id,
                role: Role::Continent,
                city: None,
                continent: Some(c.clone()),
            });
        }
        // Each continent's representatives: their keys and stakes in its [dpos]; the URLs
        // are known once they listen.
        let mut dpos = std::collections::HashMap::new();
        for c in &continents {
            let mut reps = Vec::new();
            for i in 1..=spec.representatives_per_continent {
                let id = spec.representative_id(c, i);
                reps.push(RepresentativeEntry {
                    public_key: b64(&key_of(&id)?),
                    id,
                    stake: spec.stake_of(i),
                    url: "http://127.0.0.1:1".into(),
                });
            }
            dpos.insert(c.clone(), reps);
        }
        let peers_where = |f: &dyn Fn(&CitySpec) -> bool| -> Vec<PeerKeyEntry> {
            city_peers
                .iter()
                .filter(|(c, _)| f(c))
                .map(|(_, p)| p.clone())
                .collect()
        };
        let mut nodes = Vec::new();
        let mut keys = std::collections::HashMap::new();
        for (id, role, city, continent) in roles {
            let mut config = Self::defaults();
            config.node = NodeConfig {
                id: id.clone(),
                role,
                listen: ([127, 0, 0, 1], 0).into(),
                data_dir: dir.join("nodes").join(&id),
                city: (role == Role::City).then(|| city.clone()).flatten(),
                // The global node belongs to no continent; its config names the first.
                continent: continent.clone().unwrap_or_else(|| continents[0].clone()),
                key_file: None,
            };
            let mut url = String::new();
            if let Placement::Hosts(hosts) = &spec.placement {
                config.node.listen = ([0, 0, 0, 0], hosts.port).into();
                config.node.data_dir = hosts.data_dir.clone();
                config.node.key_file = Some(hosts.key_dir.join(format!("{id}.key")));
                let host = Hosts::fill(
                    &hosts.host,
                    &id,
                    role,
                    city.as_deref(),
                    continent.as_deref(),
                );
                url = format!("http://{host}:{}", hosts.port);
                if role == Role::City
                    && let (Some(template), Some(c)) = (&hosts.mongo_uri, &continent)
                {
                    let uri = Hosts::fill(template, &id, role, city.as_deref(), Some(c));
                    config.storage.mongo.uris.insert(c.clone(), uri);
                }
            }
            config.auth.peers = match role {
                Role::Light => peers_where(&|c| Some(&c.city) == city.as_ref()),
                Role::Full | Role::Continent => {
                    peers_where(&|c| Some(&c.continent) == continent.as_ref())
                }
                Role::Global => continent_peers.clone(),
                Role::City => vec![],
                // A representative serves its continent node alone.
                Role::Representative => continent_peers
                    .iter()
                    .filter(|p| p.continent == continent)
                    .cloned()
                    .collect(),
            };
            if role == Role::Continent {
                config.dpos.representatives = continent
                    .as_ref()
                    .and_then(|c| dpos.get(c))
                    .cloned()
                    .unwrap_or_default();
            }
            if role == Role::City {
                config.vault = continent.as_ref().map(|c| vaults[c].clone());
                if let Some(name) = city.as_deref()
                    && let Some(fence) = example_fence(name)
                {
                    if spec.placement == Placement::Loopback {
                        let path = dir.join("fences").join(format!("{name}.geojson"));
                        std::fs::create_dir_all(dir.join("fences"))?;
                        std::fs::write(&path, fence)?;
                        config.pop.fence_file = Some(path);
                    } else {
                        // Inline, so the config file is all a city's host needs.
                        config.pop.fence = Some(fence.to_string());
                    }
                }
            }
            (spec.tweak)(&mut config);
            if matches!(spec.placement, Placement::Hosts(_)) {
                // A node on a host of its own gets its key from the deployment, not from
                // its first start.
                key_of(&id)?;
            }
            if role.is_storage() || role == Role::Representative {
                let key = key_of(&id)?;
                keys.insert(
                    id.clone(),
                    base64::engine::general_purpose::STANDARD.encode(key.public_key()),
                );
                let problems = config.validate();
                if !problems.is_empty() {
                    bail!(
                        "generated config for {id} is invalid:\n{}",
                        problems.join("\n")
                    );
                }
            }
            let node = FedNode {
                url,
                config_path: dir.join("configs").join(format!("{id}.toml")),
                id,
                role,
                config,
                city,
                continent,
                child: None,
            };
            node.write_config()?;
            nodes.push(node);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut fed = Self {
            spec,
            nodes,
            keys,
            http,
        };
        if matches!(fed.spec.placement, Placement::Hosts(_)) {
            let entries = fed.storage_entries();
            for id in fed.ids_where(|r| matches!(r, Role::Global | Role::Continent | Role::City)) {
                fed.wire(&id, &entries)?;
                fed.node(&id).write_config()?;
            }
        }
        Ok(fed)
    }

    fn defaults() -> Config {
        // Only the [node] section differs between roles; everything else keeps its
        // documented default unless a tweak changes it.
        Config {
            node: NodeConfig {
                id: String::new(),
                role: Role::Light,
                listen: ([127, 0, 0, 1], 0).into(),
                data_dir: PathBuf::new(),
                city: None,
                continent: String::new(),
                key_file: None,
            },
            intake: Default::default(),
            batcher: Default::default(),
            flagger: Default::default(),
            prioritizer: Default::default(),
            storage: Default::default(),
            supervisor: Default::default(),
            repair: Default::default(),
            reads: Default::default(),
            auth: Default::default(),
            pop: Default::default(),
            limits: Default::default(),
            vault: None,
            uplink: None,
            continent: Default::default(),
            global: Default::default(),
            rewards: Default::default(),
            dpos: Default::default(),
            objects: Default::default(),
        }
    }

    pub fn node(&self, id: &str) -> &FedNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this federation"))
    }

    fn node_mut(&mut self, id: &str) -> &mut FedNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this federation"))
    }

    /// A client of the storage nodes' internal API signing as the federation's city, with
    /// its key: the only caller they serve.
    pub fn storage_client(&self) -> anyhow::Result<PeerClient> {
        let city = self
            .nodes
            .iter()
            .find(|n| n.role == Role::City)
            .context("the federation has no city")?;
        let key = SigningKey::load(&city.config.node.key_path())?;
        Ok(PeerClient::new(RequestSigner::new(
            city.id.clone(),
            std::sync::Arc::new(key),
        )))
    }

    pub fn city_url(&self) -> String {
        self.nodes
            .iter()
            .find(|n| n.role == Role::City)
            .expect("a federation has a city")
            .url
            .clone()
    }

    /// The URL of the node of city `city`.
    pub fn city_url_of(&self, city: &str) -> String {
        self.node(&format!("city-{city}")).url.clone()
    }

    /// The URL of the continent node of `continent`.
    pub fn continent_url(&self, continent: &str) -> String {
        self.node(&format!("continent-{continent}")).url.clone()
    }

    /// The URL of the first node of `role`.
    pub fn url_of(&self, role: Role) -> String {
        self.nodes
            .iter()
            .find(|n| n.role == role)
            .unwrap_or_else(|| panic!("the federation has no {role} node"))
            .url
            .clone()
    }

    pub fn ids(&self, role: Role) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.id.clone())
            .collect()
    }

    /// Starts node `id` as a child process (its output appended to `DIR/logs/ID.log`).
    pub fn spawn(&mut self, id: &str) -> anyhow::Result<()> {
        let dir = self.spec.dir.clone();
        let binary = self.spec.binary.clone();
        let node_args = self.spec.node_args.clone();
        let node = self.node_mut(id);
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let _ = std::fs::remove_file(node.config.node.data_dir.join(LISTEN_ADDR_FILE));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path(&dir))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("node")
            .arg("--config")
            .arg(&node.config_path)
            .args(&node_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Nodes never outlive `up` or a test.
        crate::die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} for node {id}", binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `id` answers `/readyz` with 200 and `/healthz` with its own id
    /// (not some other process that took the port).
    pub async fn wait_ready(&mut self, id: &str, deadline: Instant) -> anyhow::Result<()> {
        let base = self.node(id).url.clone();
        loop {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                let who: serde_json::Value = self
                    .http
                    .get(format!("{base}/healthz"))
                    .send()
                    .await?
                    .json()
                    .await?;
                if who["node_id"] != id {
                    bail!("{base} answers as {}, not {id}", who["node_id"]);
                }
                return Ok(());
            }
            self.check_alive(id)?;
            if Instant::now() > deadline {
                bail!(
                    "node {id} was not ready in time; see {}",
                    self.log_of(id).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the node to exit (SIGKILL after `grace`).
    pub async fn stop(&mut self, id: &str, grace: Duration) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(node = id, "did not stop in time; killing it");
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.write_manifest()
    }

    /// SIGKILLs the node: a crash, not a shutdown.
    pub fn kill(&mut self, id: &str) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.write_manifest()
    }

    /// Starts a stopped node again on the same config (and port) and waits until it is
    /// ready.
    pub async fn restart(&mut self, id: &str) -> anyhow::Result<()> {
        self.spawn(id)?;
        self.write_manifest()?;
        let deadline = Instant::now() + self.spec.ready_timeout;
        self.learn_address(id, deadline).await?;
        self.wait_ready(id, deadline).await
    }

    /// Stops every node, city first so it can finish what it holds.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        let order: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.role.is_storage())
            .chain(self.nodes.iter().filter(|n| n.role.is_storage()))
            .map(|n| n.id.clone())
            .collect();
        for id in order {
            self.stop(&id, Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Whether each child is still alive; reaps the ones that exited.
    pub fn exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((node.id.clone(), status));
                node.child = None;
            }
        }
        out
    }

    pub fn manifest(&self) -> Vec<ManifestEntry> {
        self.nodes
            .iter()
            .map(|n| ManifestEntry {
                node_id: n.id.clone(),
                role: n.role,
                url: n.url.clone(),
                pid: n.pid(),
                city: n.city.clone(),
                continent: n.continent.clone(),
                config: n
                    .config_path
                    .canonicalize()
                    .unwrap_or_else(|_| n.config_path.clone()),
            })
            .collect()
    }

    /// What Prometheus scrapes: one `file_sd` target group per node that has an address,
    /// labelled with its `role`, `node_id` and, where it has them, `city` and `continent`.
    /// A stopped node stays listed, so its target reads `up == 0`.
    pub fn prometheus_targets(&self) -> Vec<TargetGroup> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let target = n.url.strip_prefix("http://")?.trim_end_matches('/');
                let mut labels = BTreeMap::from([
                    ("role".to_string(), n.role.to_string()),
                    ("node_id".to_string(), n.id.clone()),
                ]);
                if let Some(city) = &n.city {
                    labels.insert("city".into(), city.clone());
                }
                if let Some(continent) = &n.continent {
                    labels.insert("continent".into(), continent.clone());
                }
                Some(TargetGroup {
                    targets: vec![target.to_string()],
                    labels,
                })
            })
            .collect()
    }

    /// Writes `DIR/federation.json` and, for Prometheus, `DIR/prometheus-targets.json`,
    /// each atomically (write, fsync, rename), so a reader never sees half a file.
    pub fn write_manifest(&self) -> anyhow::Result<()> {
        let manifest = serde_json::to_string_pretty(&self.manifest())?;
        write_atomically(&self.spec.dir.join(MANIFEST_FILE), &manifest)?;
        let targets = serde_json::to_string_pretty(&self.prometheus_targets())?;
        write_atomically(&self.spec.dir.join(PROMETHEUS_TARGETS_FILE), &targets)
    }
}

/// The federation's manifest in its directory (API.md).
pub const MANIFEST_FILE: &str = "federation.json";

/// The federation's scrape targets in its directory, in Prometheus `file_sd` format.
pub const PROMETHEUS_TARGETS_FILE: &str = "prometheus-targets.json";

/// One group of a Prometheus `file_sd` file: addresses to scrape and the labels their
/// series get.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Writes `text` to `path` by way of a temporary file beside it (write, fsync, rename).
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Drop for Federation {
    fn drop(&mut self) {
        // A federation dropped without shutdown (a failed test) must not leave processes.
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we have not yet reaped, so the pid cannot have
    // been reused by another process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: Topology) -> Vec<(String, String)> {
        t.cities()
            .unwrap()
            .into_iter()
            .map(|c| (c.city, c.continent))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_default_is_two_cities_on_two_continents() {
        let t = Topology::default();
        assert_eq!(names(t), pairs(&[("tokyo", "asia"), ("paris", "europe")]));
        let spec = FederationSpec::world("d".into(), "b".into(), t).unwrap();
        assert_eq!(spec.continents(), ["asia", "europe"]);
        // 2 × (city + 6 light) + 2 × (continent + 2 full + 3 representatives) + global.
        assert_eq!(spec.node_count(), 27);
    }

    #[test]
    fn more_cities_are_dealt_to_the_continents_in_turn() {
        let three = Topology {
            cities: 3,
            ..Topology::default()
        };
        assert_eq!(
            names(three),
            pairs(&[("tokyo", "asia"), ("paris", "europe"), ("seoul", "asia")])
        );
        let spread = Topology {
            cities: 4,
            continents: Some(3),
            ..Topology::default()
        };
        assert_eq!(
            names(spread),
            pairs(&[
                ("tokyo", "asia"),
                ("paris", "europe"),
                ("toronto", "north-america"),
                ("seoul", "asia"),
            ])
        );
        let one = Topology {
            cities: 1,
            ..Topology::default()
        };
        assert_eq!(names(one), pairs(&[("tokyo", "asia")]));
        // Every name is unique and a valid node name, up to the largest shape.
        let all = Topology {
            cities: 24,
            continents: Some(6),
            ..Topology::default()
        };
        let cities = all.cities().unwrap();
        let unique: std::collections::HashSet<_> = cities.iter().map(|c| &c.city).collect();
        assert_eq!(unique.len(), 24);
        for c in &cities {
            citychain::messages::names::check_name("city", &c.city).unwrap();
            citychain::messages::names::check_name("continent", &c.continent).unwrap();
        }
    }

    #[test]
    fn shapes_that_cannot_run_are_refused() {
        let d = Topology::default();
        for (t, says) in [
            (
                Topology {
                    lights_per_city: 4,
                    ..d
                },
                "--light-per-city must be at least 5",
            ),
            (
                Topology {
                    fulls_per_continent: 0,
                    ..d
                },
                "--full-per-continent must be at least 1",
            ),
            (Topology { cities: 0, ..d }, "--cities must be 1 to 24"),
            (Topology { cities: 25, ..d }, "--cities must be 1 to 24"),
            (
                Topology {
                    continents: Some(0),
                    ..d
                },
                "--continents must be 1 to 6",
            ),
            (
                Topology {
                    continents: Some(3),
                    ..d
                },
                "needs at least 3 cities",
            ),
            (
                Topology {
                    cities: 5,
                    continents: Some(1),
                    ..d
                },
                "more than 4 per continent",
            ),
        ] {
            let err = t.cities().unwrap_err();
            assert!(err.contains(says), "{t:?}: {err}");
        }
    }

    #[test]
    fn every_city_up_can_run_has_an_example_fence_around_its_centre() {
        for (_, cities) in WORLD {
            for city in cities {
                let text = example_fence(city).unwrap_or_else(|| panic!("no fence for {city}"));
                let json: serde_json::Value = serde_json::from_str(text).unwrap();
                assert_eq!(json["properties"]["city"], *city);
                let centre = &json["properties"]["centre"];
                let config = citychain::config::PopConfig {
                    fence: Some(text.into()),
                    ..Default::default()
                };
                let engine = citychain::engines::pop::build(&config, city).unwrap();
                let at = |lon: f64, lat: f64| citychain::messages::Pop { lat, lon };
                let (lon, lat) = (centre[0].as_f64().unwrap(), centre[1].as_f64().unwrap());
                assert!(engine.check(Some(&at(lon, lat))).is_ok(), "{city} centre");
                // 50 km north is outside a 30 km fence.
                assert!(engine.check(Some(&at(lon, lat + 0.45))).is_err(), "{city}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let fed = Federation::plan(FederationSpec::local(
            dir.path().to_path_buf(),
            "citychain".into(),
        ))
        .unwrap();
        let fence = fed
            .node("city-tokyo")
            .config
            .pop
            .fence_file
            .clone()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(fence).unwrap(),
            example_fence("tokyo").unwrap()
        );
    }

    #[test]
    fn each_node_serves_only_the_cities_that_write_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FederationSpec::world(
            dir.path().to_path_buf(),
            "citychain".into(),
            Topology {
                cities: 3,
                ..Topology::default()
            },
        )
        .unwrap();
        let fed = Federation::plan(spec).unwrap();
        let peers = |id: &str| -> Vec<String> {
            let mut p: Vec<String> = fed
                .node(id)
                .config
                .auth
                .peers
                .iter()
                .map(|p| p.id.clone())
                .collect();
            p.sort();
            p
        };
        assert_eq!(peers("light-tokyo-1"), ["city-tokyo"]);
        assert_eq!(peers("light-seoul-6"), ["city-seoul"]);
        assert_eq!(peers("light-paris-3"), ["city-paris"]);
        assert_eq!(peers("full-asia-2"), ["city-seoul", "city-tokyo"]);
        assert_eq!(peers("full-europe-1"), ["city-paris"]);
        assert_eq!(peers("continent-asia"), ["city-seoul", "city-tokyo"]);
        assert_eq!(peers("continent-europe"), ["city-paris"]);
        assert_eq!(peers("global"), ["continent-asia", "continent-europe"]);
        // A representative serves its own continent node alone, which names it.
        assert_eq!(peers("rep-asia-2"), ["continent-asia"]);
        assert_eq!(peers("rep-europe-3"), ["continent-europe"]);
        let reps: Vec<&str> = fed
            .node("continent-asia")
            .config
            .dpos
            .representatives
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(reps, ["rep-asia-1", "rep-asia-2", "rep-asia-3"]);
        // Each city seals for its own continent's key holder.
        let holder = |c: &str| {
            VaultKey::load(&Federation::vault_key_path(dir.path(), c))
                .unwrap()
                .public()
                .to_base64()
        };
        let sealed_for = |id: &str| {
            fed.node(id).config.vault.as_ref().unwrap().keys[0]
                .public_key
                .clone()
        };
        assert_eq!(sealed_for("city-seoul"), holder("asia"));
        assert_eq!(sealed_for("city-paris"), holder("europe"));
        assert_ne!(holder("asia"), holder("europe"));
        assert_eq!(fed.nodes.len(), 3 * 7 + 2 * (3 + 3) + 1);
    }

    #[test]
    fn prometheus_targets_name_every_node_of_the_manifest_with_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FederationSpec::world(
            dir.path().to_path_buf(),
            "citychain".into(),
            Topology {
                cities: 2,
                representatives_per_continent: 1,
                ..Topology::default()
            },
        )
        .unwrap();
        let mut fed = Federation::plan(spec).unwrap();
        for (i, node) in fed.nodes.iter_mut().enumerate() {
            node.url = format!("http://127.0.0.1:{}", 20000 + i);
        }
        fed.write_manifest().unwrap();
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.path().join(name)).unwrap()).unwrap()
        };
        let manifest = read(MANIFEST_FILE);
        let targets = read(PROMETHEUS_TARGETS_FILE);
        let groups = targets.as_array().expect("file_sd is a list of groups");
        let nodes = manifest.as_array().unwrap();
        assert_eq!(groups.len(), nodes.len());
        assert_eq!(nodes.len(), fed.nodes.len());
        for node in nodes {
            let id = node["node_id"].as_str().unwrap();
            let group = groups
                .iter()
                .find(|g| g["labels"]["node_id"] == id)
                .unwrap_or_else(|| panic!("no target group for {id}"));
            // file_sd: exactly `targets` (host:port strings) and `labels` (strings).
            let mut keys: Vec<&String> = group.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["labels", "targets"], "{id}");
            let url = node["url"].as_str().unwrap();
            assert_eq!(
                group["targets"],
                serde_json::json!([&url["http://".len()..]])
            );
            assert_eq!(group["labels"]["role"], node["role"], "{id}");
            for optional in ["city", "continent"] {
                assert_eq!(group["labels"][optional], node[optional], "{id} {optional}");
            }
            assert!(
                group["labels"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v.is_string())
            );
        }
        let labels = |id: &str| {
            groups
                .iter()
                .find(|g| g["labels"]["node_id"] == id)
                .unwrap()["labels"]
                .clone()
        };
        assert_eq!(
            labels("light-paris-2"),
            serde_json::json!({"role": "light", "node_id": "light-paris-2", "city": "paris", "continent": "europe"})
        );
        assert_eq!(
            labels("global"),
            serde_json::json!({"role": "global", "node_id": "global"})
        );
        assert_eq!(labels("rep-asia-1")["role"], "representative");
    }
}
