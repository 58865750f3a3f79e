//! A local federation of child processes: what `citychain up` runs and what the cluster
//! tests drive.
//!
//! [`Federation::launch`] plans every node (free loopback ports, a data dir, a key for each
//! node, the continent key holder's vault key in `DIR/vault/CONTINENT.key` with
//! its public key in the city's `[vault]`, the allow-lists of the links up: storage nodes
//! and the continent serve the city's key, the global node the continent's; a config file
//! written under `DIR/configs/`), starts each as its own
//! `citychain node --config FILE` process with its output in `DIR/logs/`, writes
//! `DIR/federation.json` (API.md) and waits until every node answers `/readyz`. Any node
//! can then be stopped, killed or started again by id, by this code or by an operator with
//! the pid and config path from `federation.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};

use citychain::config::{
    Config, NodeConfig, PeerKeyEntry, Role, StorageNodeEntry, UplinkConfig, VaultConfig,
};
use citychain::crypto::SigningKey;
use citychain::crypto::vault::VaultKey;
use citychain::messages::auth::RequestSigner;
use citychain::node::{LISTEN_ADDR_FILE, load_or_create_key};
use citychain::storage::peer::PeerClient;

/// What to launch.
#[derive(Clone)]
pub struct FederationSpec {
    pub dir: PathBuf,
    /// The `citychain` binary to run for each node.
    pub binary: PathBuf,
    pub city: String,
    pub continent: String,
    pub lights: usize,
    pub fulls: usize,
    /// Adjusts each generated config before it is written (tests shorten timers here).
    pub tweak: fn(&mut Config),
    /// How long to wait for every node to be ready.
    pub ready_timeout: Duration,
}

impl FederationSpec {
    /// The federation of `citychain up`: one city, one continent, one global, six light
    /// and two full nodes.
    pub fn local(dir: PathBuf, binary: PathBuf) -> Self {
        Self {
            dir,
            binary,
            city: "tokyo".into(),
            continent: "asia".into(),
            lights: 6,
            fulls: 2,
            tweak: |_| {},
            ready_timeout: Duration::from_secs(30),
        }
    }
}

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
}

/// One line of `federation.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    pub node_id: String,
    pub role: Role,
    pub url: String,
    pub pid: Option<u32>,
    pub config: PathBuf,
}

/// A node of the federation and its process, if running.
pub struct FedNode {
    pub id: String,
    pub role: Role,
    pub url: String,
    pub config_path: PathBuf,
    pub config: Config,
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
        let mut fed = Self::plan(spec)?;
        let deadline = Instant::now() + fed.spec.ready_timeout;
        let storage = fed.ids_where(|r| r.is_storage());
        for id in &storage {
            fed.spawn(id)?;
        }
        for id in &storage {
            fed.learn_address(id, deadline).await?;
        }
        let entries: Vec<StorageNodeEntry> = storage
            .iter()
            .map(|id| {
                let n = fed.node(id);
                StorageNodeEntry {
                    id: id.clone(),
                    role: n.role,
                    url: n.url.clone(),
                    continent: n.config.node.continent.clone(),
                    public_key: fed.keys[id].clone(),
                }
            })
            .collect();
        let mut others = Vec::new();
        for (role, above) in [
            (Role::Global, None),
            (Role::Continent, Some(Role::Global)),
            (Role::City, Some(Role::Continent)),
        ] {
            let ids = fed.ids_where(|r| r == role);
            let upstream = above.and_then(|up| {
                let n = fed.nodes.iter().find(|n| n.role == up)?;
                Some((n.id.clone(), n.url.clone()))
            });
            for id in &ids {
                let node = fed.node_mut(id);
                // A continent checks the acks of the city's storage nodes with their keys.
                if role != Role::Global {
                    node.config.storage.nodes = entries.clone();
                }
                if let Some((up_id, up_url)) = &upstream {
                    let mut uplink = node
                        .config
                        .uplink
                        .take()
                        .unwrap_or_else(|| UplinkConfig::to("", ""));
                    uplink.id = up_id.clone();
                    uplink.url = up_url.clone();
                    node.config.uplink = Some(uplink);
                }
                let problems = node.config.validate();
                if !problems.is_empty() {
                    bail!(
                        "generated config for {id} is invalid:\n{}",
                        problems.join("\n")
                    );
                }
                node.write_config()?;
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

    /// Creates keys and configs for every node (listening on port 0); starts nothing.
    pub fn plan(spec: FederationSpec) -> anyhow::Result<Self> {
        let dir = &spec.dir;
        for sub in ["configs", "logs", "nodes"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // The city needs only the holder's public key to seal; the key itself stays here.
        let vault = VaultConfig::with_key(Self::holder_key(dir, &spec.continent)?.public());
        let mut roles: Vec<(String, Role)> = Vec::new();
        roles.extend((1..=spec.lights).map(|i| (format!("light-{i}"), Role::Light)));
        roles.extend((1..=spec.fulls).map(|i| (format!("full-{i}"), Role::Full)));
        roles.push((format!("city-{}", spec.city), Role::City));
        roles.push((format!("continent-{}", spec.continent), Role::Continent));
        roles.push(("global".into(), Role::Global));

        // The city signs every request to its storage nodes and its continent; they serve
        // only its key. The continent signs what it forwards to the global node, which
        // serves only the continent's key.
        let b64 =
            |key: &SigningKey| base64::engine::general_purpose::STANDARD.encode(key.public_key());
        let key_of = |id: &str| load_or_create_key(&dir.join("nodes").join(id).join("node.key"));
        let city_id = format!("city-{}", spec.city);
        let city_peer = PeerKeyEntry {
            public_key: b64(&key_of(&city_id)?),
            id: city_id,
            role: Role::City,
            city: Some(spec.city.clone()),
            continent: None,
        };
        let continent_id = format!("continent-{}", spec.continent);
        let continent_peer = PeerKeyEntry {
            public_key: b64(&key_of(&continent_id)?),
            id: continent_id,
            role: Role::Continent,
            city: None,
            continent: Some(spec.continent.clone()),
        };
        let mut nodes = Vec::new();
        let mut keys = std::collections::HashMap::new();
        for (id, role) in roles {
            let mut config = Self::defaults();
            config.node = NodeConfig {
                id: id.clone(),
                role,
                listen: ([127, 0, 0, 1], 0).into(),
                data_dir: dir.join("nodes").join(&id),
                city: (role == Role::City).then(|| spec.city.clone()),
                continent: spec.continent.clone(),
                key_file: None,
            };
            match role {
                Role::Light | Role::Full | Role::Continent => {
                    config.auth.peers = vec![city_peer.clone()]
                }
                Role::Global => config.auth.peers = vec![continent_peer.clone()],
                Role::City => {}
            }
            if role == Role::City {
                config.vault = Some(vault.clone());
            }
            (spec.tweak)(&mut config);
            if role.is_storage() {
                let key = load_or_create_key(&config.node.key_path())?;
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
                url: String::new(),
                config_path: dir.join("configs").join(format!("{id}.toml")),
                id,
                role,
                config,
                child: None,
            };
            node.write_config()?;
            nodes.push(node);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            spec,
            nodes,
            keys,
            http,
        })
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
            limits: Default::default(),
            vault: None,
            uplink: None,
            continent: Default::default(),
            global: Default::default(),
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
                config: n
                    .config_path
                    .canonicalize()
                    .unwrap_or_else(|_| n.config_path.clone()),
            })
            .collect()
    }

    /// Writes `DIR/federation.json` atomically (write, fsync, rename).
    pub fn write_manifest(&self) -> anyhow::Result<()> {
        let path = self.spec.dir.join("federation.json");
        let tmp = self.spec.dir.join("federation.json.tmp");
        let text = serde_json::to_string_pretty(&self.manifest())?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
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
