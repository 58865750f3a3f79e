//! What integration tests and fault injection share: federations and lone nodes as child
//! processes, reading `/metrics`, and waiting on conditions with a deadline instead of
//! sleeping.
//!
//! Functions whose name starts with `wait` fail the calling test (panic) when their
//! deadline passes; [`poll_until`] is the same wait for code that must not panic.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::federation::{Federation, FederationSpec, watchful};

/// How often waits check their condition.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// Calls `check` every [`POLL_EVERY`] until it returns `Some`; `None` once `timeout` has
/// passed without it.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

/// The spec of a local federation running `binary` in `dir`, with the
/// [`watchful`] timers of tests and fault injection.
pub fn watchful_spec(dir: PathBuf, binary: PathBuf) -> FederationSpec {
    FederationSpec {
        tweak: watchful,
        ..FederationSpec::local(dir, binary)
    }
}

/// Launches the [`watchful_spec`] federation and waits until every node is ready.
pub async fn launch_watchful(dir: &Path, binary: &Path) -> anyhow::Result<Federation> {
    Federation::launch(watchful_spec(dir.to_path_buf(), binary.to_path_buf())).await
}

/// An HTTP client for loopback nodes: no proxy, every request bounded by `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("a plain HTTP client builds")
}

/// The node's `/metrics` text (Prometheus exposition format).
pub async fn metrics(client: &reqwest::Client, base: &str) -> reqwest::Result<String> {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await
}

/// The `[node]` and `[vault]` sections of a lone city node keeping its data in `dir/data`
/// (the place [`spawn_node`] looks for its address) and sealing for a key holder whose
/// key is `dir/vault.key` (created on first use).
pub fn city_node_section(dir: &Path) -> String {
    let path = dir.join("vault.key");
    let holder = if path.exists() {
        citychain::crypto::vault::VaultKey::load(&path)
    } else {
        citychain::crypto::vault::VaultKey::generate().and_then(|k| k.save(&path).map(|()| k))
    }
    .expect("a vault key for the test city");
    format!(
        "[node]\nid = \"city-tokyo\"\nrole = \"city\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncity = \"tokyo\"\ncontinent = \"asia\"\n\n[vault]\ncurrent = \"{id}\"\n[[vault.keys]]\nid = \"{id}\"\npublic_key = \"{public}\"\n",
        dir.join("data").display(),
        id = holder.id(),
        public = holder.public().to_base64(),
    )
}

/// What a city's `GET /v1/batches/{id}` answer says its light holders acked: each holder
/// with the index of its piece, and what the pieces and the rebuilt whole must be. `None`
/// when the answer holds no piece acks (not a light batch) or they disagree.
pub fn light_expectation(
    batch: &serde_json::Value,
) -> Option<(Vec<(String, u8)>, citychain::messages::Expected)> {
    use citychain::messages::{Coding, Expected, parse_hex32};
    let batch_id = parse_hex32(batch["batch_id"].as_str()?)?;
    let mut holders = Vec::new();
    let mut expected: Option<Expected> = None;
    for ack in batch["acks"].as_array()? {
        let p = &ack["piece"];
        let index = u8::try_from(p["index"].as_u64()?).ok()?;
        let coding = Coding {
            data_pieces: u8::try_from(p["data_pieces"].as_u64()?).ok()?,
            parity_pieces: u8::try_from(p["parity_pieces"].as_u64()?).ok()?,
        };
        let sealed_len = p["sealed_len"].as_u64()?;
        let sealed_hash = parse_hex32(p["sealed_hash"].as_str()?)?;
        let e = expected.get_or_insert_with(|| Expected {
            batch_id,
            coding,
            sealed_len,
            sealed_hash,
            hashes: Default::default(),
        });
        if (e.coding, e.sealed_len, e.sealed_hash) != (coding, sealed_len, sealed_hash) {
            return None;
        }
        e.hashes
            .insert(index, parse_hex32(ack["held_hash"].as_str()?)?);
        holders.push((ack["holder_id"].as_str()?.to_string(), index));
    }
    Some((holders, expected?))
}

/// Rebuilds the sealed bytes of the light batch `batch` (a city's `GET /v1/batches/{id}`
/// answer) from the pieces its holders serve, asking none in `skip`: every piece held to
/// the hash its holder acked, the whole to the sealed hash. Why not, if it cannot.
pub async fn rebuild_light(
    fed: &Federation,
    peers: &citychain::storage::peer::PeerClient,
    batch: &serde_json::Value,
    skip: &[&str],
) -> Result<Vec<u8>, String> {
    let (holders, expected) =
        light_expectation(batch).ok_or_else(|| format!("no piece acks in {batch}"))?;
    let mut found = Vec::new();
    let mut why = Vec::new();
    for (holder, index) in holders {
        if skip.contains(&holder.as_str()) {
            continue;
        }
        let Some(node) = fed.nodes.iter().find(|n| n.id == holder) else {
            why.push(format!("{holder}: not a node of this federation"));
            continue;
        };
        let peer = citychain::storage::peer::Peer {
            id: &node.id,
            url: &node.url,
        };
        match peers
            .get_piece(peer, &expected.batch_id, index, Duration::from_secs(5))
            .await
        {
            Ok(Some(bytes)) => match citychain::messages::Piece::from_bytes(&bytes) {
                Ok(piece) => found.push((index, piece)),
                Err(e) => why.push(format!("{holder}: piece {index}: {e}")),
            },
            Ok(None) => why.push(format!("{holder}: does not have piece {index} (404)")),
            Err(e) => why.push(format!("{holder}: {e}")),
        }
    }
    expected
        .rebuild(found)
        .map_err(|e| format!("{e}; {}", why.join("; ")))
}

/// A node started from a config as a child process; killed when dropped.
pub struct ChildNode {
    pub child: Child,
    pub url: String,
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` (TOML) to `dir/node.toml`, runs `binary node --config` on it with its
/// log in `dir/node.log`, and waits until it listens (its data dir must be `dir/data`)
/// and, if `ready`, until `/readyz` answers 200. Fails the test if the node logs an error
/// before it listens, or on a deadline.
pub async fn spawn_node(binary: &Path, dir: &Path, config: &str, ready: bool) -> ChildNode {
    let path = dir.join("node.toml");
    std::fs::write(&path, config).unwrap();
    let addr_file = dir.join("data").join(citychain::node::LISTEN_ADDR_FILE);
    // A node started again on the same data dir must not be found at its old address.
    let _ = std::fs::remove_file(&addr_file);
    let child = spawn_child(binary, &path, &dir.join("node.log")).unwrap();
    let log = dir.join("node.log");
    let url = wait_for("the node to listen", Duration::from_secs(20), || async {
        let addr = std::fs::read_to_string(&addr_file).ok();
        if addr.is_none() && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("error")) {
            panic!(
                "the node failed: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        addr.map(|a| format!("http://{}", a.trim()))
    })
    .await;
    if ready {
        let c = http_client(Duration::from_secs(20));
        wait_for("the node to be ready", Duration::from_secs(20), || async {
            let r = c.get(format!("{url}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
    ChildNode { child, url }
}

/// `binary node --config CONFIG`, stdin and stdout closed, stderr to `log`.
fn spawn_child(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let stderr =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(binary)
        .args(["node", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_until_returns_the_first_some_or_none_after_the_deadline() {
        let mut calls = 0;
        let got = poll_until(Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, Some(3));
        let never = poll_until(Duration::from_millis(60), || async { None::<()> }).await;
        assert_eq!(never, None);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for godot")]
    async fn wait_for_fails_the_test_at_its_deadline() {
        wait_for("godot", Duration::from_millis(30), || async { None::<()> }).await;
    }
}
