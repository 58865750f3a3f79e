//! A running local federation at a glance, collected over HTTP from every node its
//! `federation.json` names: whether each node answers and is ready, each city's
//! transactions by tier and its uplink (`GET /v1/status`), each continent's and the global
//! node's batches and the latest checkpoint (`GET /v1/federation/status`).
//!
//! One collection serves three readers, so they always agree: `up`'s status line,
//! `up`'s federation status page, and `citychain status --dir`.

use std::time::Duration;

use citychain::config::Role;
use citychain::messages::now_ms;
use citychain_harness::federation::ManifestEntry;
use serde::Serialize;
use serde_json::Value;

/// How long one node gets to answer before it counts as not answering.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// The whole federation, as collected at `taken_ms`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FederationStatus {
    pub taken_ms: u64,
    /// Every node of the manifest, top down: the global node, continents, full nodes,
    /// representatives, cities, light nodes (each in the manifest's order).
    pub nodes: Vec<NodeStatus>,
    pub cities: Vec<CityStatus>,
    pub continents: Vec<LevelStatus>,
    pub global: Option<LevelStatus>,
    /// The ids of the nodes that did not answer.
    pub not_answering: Vec<String>,
}

/// One node: who it is and whether it answers `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeStatus {
    pub node_id: String,
    pub role: Role,
    pub url: String,
    pub city: Option<String>,
    pub continent: Option<String>,
    /// It answered `/readyz` (with any status).
    pub answering: bool,
    /// `/readyz` answered 200.
    pub ready: bool,
    /// Why not ready: the node's reason, or why it did not answer.
    pub reason: Option<String>,
}

/// A city from its `GET /v1/status` (null figures when it did not answer).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CityStatus {
    pub city: String,
    pub node_id: String,
    pub url: String,
    pub answering: bool,
    /// Transactions and batches in its status index.
    pub stored_txs: Option<u64>,
    pub stored_batches: Option<u64>,
    /// Transactions since it started, by the tier that acknowledged them.
    pub txs_by_tier: Option<Value>,
    pub in_flight: Option<u64>,
    /// Storage nodes it sees up, of those it knows.
    pub storage_up: Option<usize>,
    pub storage_total: Option<usize>,
    /// Its batches acknowledged by the continent since it started, and still waiting.
    pub uplink_forwarded: Option<u64>,
    pub uplink_waiting: Option<u64>,
    pub uplink_error: Option<String>,
}

/// A continent or the global node from its `GET /v1/federation/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LevelStatus {
    pub node_id: String,
    pub url: String,
    /// The continent's name; null for the global node.
    pub continent: Option<String>,
    pub answering: bool,
    pub city_batches: Option<u64>,
    pub continent_batches: Option<u64>,
    /// Continent: batches waiting to go up to the global node.
    pub outbox: Option<u64>,
    /// Continent with DPoS: continent batches approved.
    pub approved_batches: Option<u64>,
    /// Global: checkpoints signed, and the latest one.
    pub checkpoints: Option<u64>,
    pub latest_checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub size: u64,
    pub time_ms: u64,
}

/// An HTTP client for the nodes: loopback, no proxy, [`NODE_TIMEOUT`] per request.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(NODE_TIMEOUT)
        .build()
        .expect("an HTTP client")
}

/// Asks every node of `manifest` at once.
pub(crate) async fn collect(
    http: &reqwest::Client,
    manifest: &[ManifestEntry],
) -> FederationStatus {
    let mut manifest: Vec<&ManifestEntry> = manifest.iter().collect();
    manifest.sort_by_key(|m| rank(m.role));
    let asked = manifest.iter().map(|m| ask(http, m));
    let answers = futures::future::join_all(asked).await;
    let mut out = FederationStatus {
        taken_ms: now_ms(),
        nodes: Vec::new(),
        cities: Vec::new(),
        continents: Vec::new(),
        global: None,
        not_answering: Vec::new(),
    };
    for (m, (node, detail)) in manifest.iter().zip(answers) {
        if !node.answering {
            out.not_answering.push(m.node_id.clone());
        }
        match m.role {
            Role::City => out.cities.push(city(m, node.answering, detail.as_ref())),
            Role::Continent => out
                .continents
                .push(level(m, node.answering, detail.as_ref())),
            Role::Global => out.global = Some(level(m, node.answering, detail.as_ref())),
            _ => {}
        }
        out.nodes.push(node);
    }
    out
}

/// Where a role comes in the top-down order.
fn rank(role: Role) -> u8 {
    match role {
        Role::Global => 0,
        Role::Continent => 1,
        Role::Full => 2,
        Role::Representative => 3,
        Role::City => 4,
        Role::Light => 5,
    }
}

/// `/readyz`, and the role's own status for cities, continents and the global node.
async fn ask(http: &reqwest::Client, m: &ManifestEntry) -> (NodeStatus, Option<Value>) {
    let mut node = NodeStatus {
        node_id: m.node_id.clone(),
        role: m.role,
        url: m.url.clone(),
        city: m.city.clone(),
        continent: m.continent.clone(),
        answering: false,
        ready: false,
        reason: None,
    };
    match http.get(format!("{}/readyz", m.url)).send().await {
        Ok(r) => {
            node.answering = true;
            node.ready = r.status().is_success();
            if !node.ready {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                node.reason = Some(body["reason"].as_str().unwrap_or("not ready").to_string());
            }
        }
        Err(e) => {
            node.reason = Some(if e.is_timeout() {
                format!("no answer within {NODE_TIMEOUT:?}")
            } else {
                "not answering (connection refused or reset)".into()
            });
        }
    }
    let path = match m.role {
        Role::City => "/v1/status",
        Role::Continent | Role::Global => "/v1/federation/status",
        _ => return (node, None),
    };
    let detail = if node.answering {
        json(http, &format!("{}{path}", m.url)).await
    } else {
        None
    };
    (node, detail)
}

async fn json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

fn city(m: &ManifestEntry, answering: bool, v: Option<&Value>) -> CityStatus {
    let nodes = v.and_then(|v| v["nodes"].as_array());
    let uplink = v.map(|v| &v["uplink"]).filter(|u| u.is_object());
    CityStatus {
        city: m.city.clone().unwrap_or_else(|| m.node_id.clone()),
        node_id: m.node_id.clone(),
        url: m.url.clone(),
        answering: answering && v.is_some(),
        stored_txs: v.and_then(|v| v["stored"]["txs"].as_u64()),
        stored_batches: v.and_then(|v| v["stored"]["batches"].as_u64()),
        txs_by_tier: v.map(|v| v["since_start"]["txs"].clone()),
        in_flight: v.and_then(|v| v["in_flight"].as_u64()),
        storage_up: nodes.map(|n| n.iter().filter(|n| n["up"] == true).count()),
        storage_total: nodes.map(Vec::len),
        uplink_forwarded: uplink.and_then(|u| u["forwarded"].as_u64()),
        uplink_waiting: uplink.and_then(|u| u["waiting"].as_u64()),
        uplink_error: uplink.and_then(|u| u["last_error"].as_str().map(String::from)),
    }
}

fn level(m: &ManifestEntry, answering: bool, v: Option<&Value>) -> LevelStatus {
    let field = |name: &str| v.and_then(|v| v[name].as_u64());
    LevelStatus {
        node_id: m.node_id.clone(),
        url: m.url.clone(),
        continent: (m.role == Role::Continent)
            .then(|| m.continent.clone())
            .flatten(),
        answering: answering && v.is_some(),
        city_batches: field("city_batches"),
        continent_batches: field("continent_batches"),
        outbox: field("outbox"),
        approved_batches: v.and_then(|v| v["dpos"]["approved_batches"].as_u64()),
        checkpoints: field("checkpoints"),
        latest_checkpoint: v.and_then(|v| {
            let c = &v["latest_checkpoint"];
            Some(Checkpoint {
                seq: c["seq"].as_u64()?,
                size: c["size"].as_u64().unwrap_or(0),
                time_ms: c["time_ms"].as_u64().unwrap_or(0),
            })
        }),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl FederationStatus {
    /// `up`'s one status line: transactions stored by each city, batches waiting in the
    /// outboxes on their way up, city batches on the global log and the latest checkpoint.
    /// A node that does not answer is named instead of its figures.
    pub(crate) fn line(&self) -> String {
        let stored: Vec<String> = self
            .cities
            .iter()
            .filter_map(|c| Some(format!("{} {}", c.city, c.stored_txs?)))
            .collect();
        let city_waiting: u64 = self.cities.iter().filter_map(|c| c.uplink_waiting).sum();
        let continent_waiting: u64 = self.continents.iter().filter_map(|c| c.outbox).sum();
        let merged: u64 = self.continents.iter().filter_map(|c| c.city_batches).sum();
        let approved: Option<u64> = self
            .continents
            .iter()
            .filter_map(|c| c.approved_batches)
            .reduce(|a, b| a + b);
        let at_global = match &self.global {
            Some(g) if g.answering => format!(
                "global: {} city batches, checkpoint {}",
                g.city_batches.unwrap_or(0),
                match &g.latest_checkpoint {
                    Some(c) => format!("#{}", c.seq),
                    None => "none yet".into(),
                }
            ),
            _ => "global: ?".into(),
        };
        let mut line = format!(
            "status: {} | tx stored: {} | city batches at continents: {merged} | waiting to go up: {city_waiting} at cities, {continent_waiting} at continents | {at_global}",
            plural(self.cities.len(), "city", "cities"),
            stored.join(", "),
        );
        if let Some(n) = approved {
            line.push_str(&format!(" | continent batches approved: {n}"));
        }
        if !self.not_answering.is_empty() {
            line.push_str(&format!(
                " | not answering: {}",
                self.not_answering.join(", ")
            ));
        }
        line
    }

    /// `citychain status --dir`: every node, then the cities, continents and the global
    /// node with their figures.
    pub(crate) fn report(&self) -> String {
        let mut out = String::new();
        let ready = self.nodes.iter().filter(|n| n.ready).count();
        out.push_str(&format!(
            "federation: {} on {}, {} nodes ({} ready, {} not answering)\n\n",
            plural(self.cities.len(), "city", "cities"),
            plural(self.continents.len(), "continent", "continents"),
            self.nodes.len(),
            ready,
            self.not_answering.len()
        ));
        out.push_str(&format!(
            "  {:<14} {:<22} {:<24} {:<14} NOTE\n",
            "ROLE", "NODE", "URL", "STATE"
        ));
        for n in &self.nodes {
            let state = match (n.answering, n.ready) {
                (true, true) => "ready",
                (true, false) => "not ready",
                (false, _) => "NOT ANSWERING",
            };
            let line = format!(
                "  {:<14} {:<22} {:<24} {:<14} {}",
                n.role.as_str(),
                n.node_id,
                n.url,
                state,
                n.reason.as_deref().unwrap_or("")
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
        out.push_str("\ncities\n");
        for c in &self.cities {
            if !c.answering {
                out.push_str(&format!("  {:<10} not answering\n", c.city));
                continue;
            }
            let tiers = c
                .txs_by_tier
                .as_ref()
                .map(|t| {
                    ["light", "full", "mongo", "log"]
                        .iter()
                        .map(|k| format!("{k} {}", t[*k].as_u64().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<10} tx stored {} in {} batches | since start by tier: {} | in flight {} | storage nodes up {}/{}\n",
                c.city,
                opt(c.stored_txs),
                opt(c.stored_batches),
                tiers,
                opt(c.in_flight),
                c.storage_up.unwrap_or(0),
                c.storage_total.unwrap_or(0),
            ));
            out.push_str(&format!(
                "  {:<10} uplink: {} acknowledged by the continent since start, {} waiting{}\n",
                "",
                opt(c.uplink_forwarded),
                opt(c.uplink_waiting),
                c.uplink_error
                    .as_ref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            ));
        }
        out.push_str("\ncontinents\n");
        for c in &self.continents {
            let name = c.continent.as_deref().unwrap_or(&c.node_id);
            if !c.answering {
                out.push_str(&format!("  {name:<14} not answering\n"));
                continue;
            }
            out.push_str(&format!(
                "  {name:<14} city batches merged {} into {} continent batches | waiting to go up {}{}\n",
                opt(c.city_batches),
                opt(c.continent_batches),
                opt(c.outbox),
                c.approved_batches
                    .map(|n| format!(" | approved {n}"))
                    .unwrap_or_default()
            ));
        }
        out.push_str("\nglobal\n");
        match &self.global {
            Some(g) if g.answering => out.push_str(&format!(
                "  city batches {} in {} continent batches | checkpoints {} | latest checkpoint {}\n",
                opt(g.city_batches),
                opt(g.continent_batches),
                opt(g.checkpoints),
                g.latest_checkpoint
                    .as_ref()
                    .map_or("none yet".into(), |c| format!("#{} over {} records", c.seq, c.size))
            )),
            Some(_) => out.push_str("  not answering\n"),
            None => out.push_str("  none in federation.json\n"),
        }
        out
    }
}
