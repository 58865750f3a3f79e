//! Helpers shared by the integration tests: a federation of real child processes on
//! loopback, signed transactions, and waiting on conditions instead of sleeping.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use citychain::crypto::SigningKey;
use citychain::federation::{Federation, FederationSpec};
use citychain::messages::{FlagKind, SignedTx, Tx, TxRequest, now_ms};
use serde_json::Value;

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_citychain"))
}

pub async fn federation(dir: &Path) -> Federation {
    let spec = FederationSpec {
        tweak: citychain::federation::watchful,
        ..FederationSpec::local(dir.to_path_buf(), binary())
    };
    Federation::launch(spec)
        .await
        .expect("the federation starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn tx(key: &SigningKey, nonce: u64, amount: u64) -> Tx {
    Tx {
        kind: FlagKind::FreshTx,
        sender: key.address(),
        receiver: "bob".into(),
        amount,
        timestamp_ms: now_ms(),
        nonce,
        city_id: "tokyo".into(),
        continent: Some("asia".into()),
        payload: None,
        pop: None,
    }
}

pub fn signed(key: &SigningKey, nonce: u64) -> TxRequest {
    SignedTx::sign(tx(key, nonce, 1000 + nonce), key).unwrap()
}

/// The tx id of a request, computed as the node does.
pub fn tx_id(req: &TxRequest) -> String {
    let body = serde_json::to_vec(req).unwrap();
    hex::encode(SignedTx::from_request_bytes(&body).unwrap().id)
}

pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = client
        .post(format!("{url}/v1/tx"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the city answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("answer is not JSON ({status}): {text}"));
    (status, json)
}

pub async fn post(client: &reqwest::Client, url: &str, req: &TxRequest) -> (u16, Value) {
    post_raw(
        client,
        url,
        "application/json",
        serde_json::to_vec(req).unwrap(),
    )
    .await
}

pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = client.get(url).send().await.expect("the node answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The node's `/metrics` text.
pub async fn metrics(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("the node answers")
        .text()
        .await
        .unwrap()
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the city's registry shows every node in `ids` with `up == want`.
pub async fn wait_nodes(client: &reqwest::Client, city: &str, ids: &[String], want: bool) {
    wait_for(
        "the city to see the node states",
        Duration::from_secs(10),
        || async {
            let (_, nodes) = get(client, &format!("{city}/v1/nodes")).await;
            let ok = nodes.as_array()?.iter().all(|n| {
                let id = n["node_id"].as_str().unwrap_or_default().to_string();
                !ids.contains(&id) || n["up"].as_bool() == Some(want)
            });
            ok.then_some(())
        },
    )
    .await
}

/// The `[node]` section of a lone city node keeping its data in `dir/data` (the place
/// [`spawn_node`] looks for its address).
pub fn city_node_section(dir: &Path) -> String {
    format!(
        "[node]\nid = \"city-tokyo\"\nrole = \"city\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncity = \"tokyo\"\ncontinent = \"asia\"\n",
        dir.join("data").display()
    )
}

/// A node started from `config` (TOML) as a child process; killed when dropped.
pub struct ChildNode {
    pub child: std::process::Child,
    pub url: String,
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` to `dir/node.toml`, runs `citychain node` on it with its log in
/// `dir/node.log`, and waits until it listens (its data dir must be `dir/data`) and,
/// if `ready`, until `/readyz` answers 200.
pub async fn spawn_node(dir: &Path, config: &str, ready: bool) -> ChildNode {
    let path = dir.join("node.toml");
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new(binary())
        .args(["node", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("node.log")).unwrap())
        .spawn()
        .unwrap();
    let addr_file = dir.join("data").join(citychain::node::LISTEN_ADDR_FILE);
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
        let c = client();
        wait_for("the node to be ready", Duration::from_secs(20), || async {
            let r = c.get(format!("{url}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
    ChildNode { child, url }
}
