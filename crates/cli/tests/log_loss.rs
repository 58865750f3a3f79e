//! A city whose immutable log lost records, as real processes: it stops claiming what it
//! lost, says so, and repairs it from wherever else it is held. Also the log's proofs over
//! HTTP, checked by `citychain log prove` and `log consistency`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use citychain::crypto::SigningKey;
use citychain::messages::{BatchId, SealedEnvelope, TxRequest, hex32};
use citychain::storage::immutable_log::{ImmutableLog, LOG_FILE};
use common::*;
use serde_json::Value;

/// A node process whose log may hold errors (a city reporting a loss does), unlike
/// [`spawn_node`], which fails the test on one.
struct Proc {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Runs `citychain node` on `config` (data dir `dir/data`), its stderr in
    /// `dir/LOG_NAME`, and waits until `/readyz` answers 200.
    async fn start(dir: &Path, config: &str, log_name: &str) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let addr_file = data.join(citychain::node::LISTEN_ADDR_FILE);
        let _ = std::fs::remove_file(&addr_file);
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(log_name);
        let child = Command::new(binary())
            .args(["node", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proc = Proc {
            child,
            url: String::new(),
            log,
        };
        proc.url = wait_for("the node to listen", Duration::from_secs(20), || async {
            std::fs::read_to_string(&addr_file)
                .ok()
                .map(|a| format!("http://{}", a.trim()))
        })
        .await;
        let c = client();
        wait_for("the node to be ready", Duration::from_secs(20), || async {
            let r = c.get(format!("{}/readyz", proc.url)).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        proc
    }

    /// SIGTERM, and waits for the exit: a clean stop, which signs a last head.
    async fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the node did not stop: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn verify(log_dir: &Path) -> (Option<i32>, String) {
    run(&["log", "verify", "--dir", log_dir.to_str().unwrap()])
}

/// Waits until the latest signed head covers every record, and at least `n`.
async fn wait_signed(url: &str, n: u64) -> Value {
    let c = client();
    wait_for(
        "a head over every record",
        Duration::from_secs(10),
        || async {
            let (_, head) = get(&c, &format!("{url}/v1/log/head")).await;
            let size = head["head"]["size"].as_u64()?;
            (size >= n && Some(size) == head["log_records"].as_u64()).then_some(head)
        },
    )
    .await
}

/// Cuts the last record from the log in `log_dir`; returns the id of the batch it held and
/// its sealed encoding.
fn cut_last_record(log_dir: &Path) -> (BatchId, Vec<u8>) {
    let records = ImmutableLog::read_all(log_dir).unwrap();
    let last = records.last().unwrap();
    let batch = SealedEnvelope::from_bytes(&last.payload).unwrap().id();
    let file = log_dir.join(LOG_FILE);
    let bytes = std::fs::read(&file).unwrap();
    // The frame: a 4-byte length, then the body whose length it gives.
    let mut at = citychain::storage::immutable_log::MAGIC.len();
    let mut last_start = at;
    while at < bytes.len() {
        last_start = at;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    std::fs::write(&file, &bytes[..last_start]).unwrap();
    (batch, last.payload.clone())
}

/// Submits `n` transactions from a fresh key to a city whose only tier is its log; each is
/// stored there. Returns each request with its batch id.
async fn store_on_the_log(c: &reqwest::Client, city: &str, n: u64) -> Vec<(TxRequest, String)> {
    let key = SigningKey::generate().unwrap();
    let mut txs = Vec::new();
    for nonce in 0..n {
        let req = signed(&key, nonce);
        let (status, body) = post(c, city, &req).await;
        assert_eq!(
            (status, body["tier"].as_str()),
            (200, Some("log")),
            "{body}"
        );
        txs.push((req, body["batch_id"].as_str().unwrap().to_string()));
    }
    txs
}

/// No body cache: these batches must have no copy left but the ones the test controls
/// (the city's body cache keeps a body the log lost, and repair restores it from there).
fn city_config(dir: &Path, extra: &str) -> String {
    format!(
        "{}\n[repair]\ninterval = \"100ms\"\n\n[reads]\nbody_cache_bytes = 0\n\n{extra}",
        city_node_section(dir)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_whose_log_lost_its_last_record_stops_claiming_it_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = city_config(dir.path(), "[supervisor]\nchain = [\"log\"]\n");
    let city = Proc::start(dir.path(), &config, "city-1.log").await;
    let c = client();
    let txs = store_on_the_log(&c, &city.url, 3).await;
    let records = ImmutableLog::read_all(&dir.path().join("data/log"))
        .map(|r| r.len())
        .unwrap_or(0);
    let head = wait_signed(&city.url, 1).await;
    let size = head["head"]["size"].as_u64().unwrap();
    assert!(size >= 1 && records as u64 <= size, "{head}");

    // The proofs over HTTP, checked by the command line against the signed head.
    let url = city.url.as_str();
    let (code, out) = run(&["log", "prove", "--node", url, "--index", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("is in the log's tree"), "{out}");
    let (code, out) = run(&["log", "prove", "--node", url, "--batch", &txs[2].1]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&txs[2].1), "{out}");
    let (code, out) = run(&["log", "consistency", "--node", url, "--from", "1"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&[
        "log",
        "consistency",
        "--node",
        url,
        "--from",
        "1",
        "--from-root",
        &"00".repeat(32),
    ]);
    assert_eq!(code, Some(1), "a root the node never had: {out}");
    let (code, out) = run(&["log", "prove", "--node", url, "--index", &size.to_string()]);
    assert_eq!(code, Some(1), "past the signed head: {out}");
    let other = SigningKey::generate().unwrap();
    let pinned = base64::engine::general_purpose::STANDARD.encode(other.public_key());
    let (code, out) = run(&[
        "log",
        "prove",
        "--node",
        url,
        "--index",
        "0",
        "--public-key",
        &pinned,
    ]);
    assert_eq!(code, Some(1), "another signer: {out}");
    assert!(out.contains("WRONG SIGNER"), "{out}");
    for (path, status, code) in [
        (
            "/v1/log/proof/inclusion?index=abc",
            400,
            "invalid_parameter",
        ),
        (
            "/v1/log/proof/inclusion?index=999",
            400,
            "index_out_of_range",
        ),
        (
            "/v1/log/proof/inclusion?index=0&size=999",
            400,
            "size_out_of_range",
        ),
        (
            "/v1/log/proof/inclusion?index=0&batch=00",
            400,
            "invalid_parameter",
        ),
        ("/v1/log/proof/inclusion", 400, "invalid_parameter"),
        ("/v1/log/proof/inclusion?batch=zz", 400, "invalid_id"),
        (
            "/v1/log/proof/inclusion?index=0&index=1",
            400,
            "invalid_parameter",
        ),
        ("/v1/log/proof/consistency?from=0", 400, "invalid_range"),
        (
            "/v1/log/proof/consistency?from=2&to=1",
            400,
            "invalid_range",
        ),
        (
            "/v1/log/proof/consistency?from=1&to=999",
            400,
            "size_out_of_range",
        ),
        (
            "/v1/log/proof/consistency?from=1&foo=2",
            400,
            "invalid_parameter",
        ),
        ("/v1/log/proof/consistency?to=1", 400, "invalid_parameter"),
    ] {
        let (got, body) = get(&c, &format!("{url}{path}")).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (got, body) = get(
        &c,
        &format!("{url}/v1/log/proof/inclusion?batch={}", "00".repeat(32)),
    )
    .await;
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    city.stop().await;
    let log_dir = dir.path().join("data/log");
    let (code, out) = verify(&log_dir);
    assert_eq!(code, Some(0), "{out}");

    // The attack: the last record cut away. The chain alone still verifies.
    let n = ImmutableLog::read_all(&log_dir).unwrap().len();
    let (cut, _) = cut_last_record(&log_dir);
    let cut_id = hex32(&cut);
    assert!(ImmutableLog::verify(&log_dir).is_ok());
    let (code, out) = verify(&log_dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("first bad record {}", n - 1)),
        "{out}"
    );

    let city = Proc::start(dir.path(), &config, "city-2.log").await;
    let url = city.url.as_str();
    let lost: Vec<_> = txs.iter().filter(|(_, b)| *b == cut_id).collect();
    assert!(!lost.is_empty(), "the cut record held one of our batches");
    for (req, batch) in &txs {
        let (_, body) = get(&c, &format!("{url}/v1/tx/{}", tx_id(req))).await;
        if *batch == cut_id {
            assert_eq!(body["status"], "lost", "{body}");
            assert!(body["tier"].is_null(), "{body}");
        } else {
            assert_eq!(
                (body["status"].as_str(), body["tier"].as_str()),
                (Some("stored"), Some("log")),
                "{body}"
            );
        }
    }
    let (_, batch) = get(&c, &format!("{url}/v1/batches/{cut_id}")).await;
    assert_eq!(batch["status"], "lost", "{batch}");

    // Reported: the status endpoint, the metrics, and the node's log at error level.
    let (_, status) = get(&c, &format!("{url}/v1/log/status")).await;
    assert_eq!(status["losses"][0]["first_bad"], (n - 1) as u64, "{status}");
    assert_eq!(status["losses"][0]["head"]["size"], n as u64, "{status}");
    assert_eq!(status["lost_batches_total"], 1, "{status}");
    assert_eq!(
        status["lost_batches"][0]["batch_id"],
        cut_id.as_str(),
        "{status}"
    );
    let lost_tx = tx_id(&lost[0].0);
    assert!(
        status["lost_batches"][0]["tx_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| *t == lost_tx.as_str()),
        "{status}"
    );
    let metrics = metrics(&c, url).await;
    assert!(
        metrics.contains("citychain_log_lost_batches 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("citychain_log_records_lost 1"),
        "{metrics}"
    );
    let text = city.log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.contains(&lost_tx)),
        "{text}"
    );
    // Held nowhere else: said loudly, with the transaction ids.
    wait_for(
        "the lost batch reported",
        Duration::from_secs(10),
        || async {
            city.log_text()
                .lines()
                .any(|l| l.contains("batch LOST") && l.contains(&lost_tx))
                .then_some(())
        },
    )
    .await;

    // Its client submits it again: stored anew, in a new batch.
    let (status_code, body) = post(&c, url, &lost[0].0).await;
    assert_eq!(status_code, 200, "{body}");
    assert_eq!(
        (body["tier"].as_str(), body["duplicate"].as_bool()),
        (Some("log"), Some(false)),
        "{body}"
    );
    let (_, body) = get(&c, &format!("{url}/v1/tx/{lost_tx}")).await;
    assert_eq!(body["status"], "stored", "{body}");
    assert_ne!(body["batch_id"], cut_id.as_str());

    city.stop().await;
    let (code, out) = verify(&log_dir);
    assert_eq!(code, Some(1), "the loss stays on record: {out}");
    assert!(out.contains("LOST"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_from_the_log_is_repaired_from_a_full_node_that_holds_it() {
    let root = tempfile::tempdir().unwrap();
    let (city_dir, full_dir) = (root.path().join("city"), root.path().join("full"));
    let full_key = SigningKey::generate().unwrap();
    full_key.save(&full_dir.join("data/node.key")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let full_config = format!(
        "[node]\nid = \"full-1\"\nrole = \"full\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n{}",
        full_dir.join("data").display(),
        serves_test_city()
    );
    // The city signs with the key the full node serves.
    give_test_city_key(&city_dir.join("data"));
    let config = city_config(
        &city_dir,
        &format!(
            "[supervisor]\nchain = [\"full\", \"log\"]\n\n[storage]\nfull_deadline = \"300ms\"\n\n[[storage.nodes]]\nid = \"full-1\"\nrole = \"full\"\nurl = \"http://127.0.0.1:{port}\"\ncontinent = \"asia\"\npublic_key = \"{}\"\n",
            base64::engine::general_purpose::STANDARD.encode(full_key.public_key())
        ),
    );

    // The full node is down: batches land on the log.
    let city = Proc::start(&city_dir, &config, "city-1.log").await;
    let c = client();
    let txs = store_on_the_log(&c, &city.url, 2).await;
    wait_signed(&city.url, 2).await;
    city.stop().await;

    // The last record is cut; a copy of its batch is on the full node (a write that
    // reached it, a restored backup).
    let (cut, bytes) = cut_last_record(&city_dir.join("data/log"));
    let cut_id = hex32(&cut);
    let full = Proc::start(&full_dir, &full_config, "full.log").await;
    test_city_client()
        .put_batch(
            storage_peer("full-1", &full.url),
            &cut,
            bytes,
            Duration::from_secs(10),
        )
        .await
        .expect("the full node takes the copy");

    let city = Proc::start(&city_dir, &config, "city-2.log").await;
    let (req, _) = txs.iter().find(|(_, b)| *b == cut_id).unwrap();
    let url = format!("{}/v1/tx/{}", city.url, tx_id(req));
    let body = wait_for(
        "the lost batch repaired from the full node",
        Duration::from_secs(30),
        || async {
            let (_, b) = get(&c, &url).await;
            (b["status"] == "stored" && b["tier"] == "full").then_some(b)
        },
    )
    .await;
    assert_eq!(body["holders"][0], "full-1", "{body}");
    assert_eq!(
        body["batch_id"],
        cut_id.as_str(),
        "the same batch, not a new one"
    );
    let text = city.log_text();
    assert!(
        text.contains("gone from it"),
        "the loss was reported at start: {text}"
    );
    assert!(text.contains("recovered from another copy"), "{text}");
    let (_, status) = get(&c, &format!("{}/v1/log/status", city.url)).await;
    assert_eq!(status["lost_batches_total"], 0, "{status}");
    assert_eq!(status["losses"].as_array().unwrap().len(), 1, "{status}");
    city.stop().await;
    full.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_from_the_log_is_restored_from_the_citys_body_cache() {
    let dir = tempfile::tempdir().unwrap();
    // The default body cache this time: the city keeps the sealed bodies of recent batches.
    let config = format!(
        "{}\n[repair]\ninterval = \"100ms\"\n\n[supervisor]\nchain = [\"log\"]\n",
        city_node_section(dir.path())
    );
    let city = Proc::start(dir.path(), &config, "city-1.log").await;
    let c = client();
    let txs = store_on_the_log(&c, &city.url, 3).await;
    city.stop().await;
    let log_dir = dir.path().join("data/log");
    let (cut, _) = cut_last_record(&log_dir);
    let cut_id = hex32(&cut);

    // The start audit finds the batch missing from the log; the Repairer finds its body in
    // the city's own cache, checks it is the batch, and appends it to the log again.
    let city = Proc::start(dir.path(), &config, "city-2.log").await;
    let url = city.url.as_str();
    wait_for(
        "the cut batch restored from the body cache",
        Duration::from_secs(30),
        || async {
            let (_, batch) = get(&c, &format!("{url}/v1/batches/{cut_id}")).await;
            (batch["status"] == "stored").then_some(())
        },
    )
    .await;
    assert!(
        city.log_text()
            .lines()
            .any(|l| l.contains("recovered from another copy") && l.contains("body cache")),
        "{}",
        city.log_text()
    );
    let restored: Vec<_> = txs.iter().filter(|(_, b)| *b == cut_id).collect();
    assert!(!restored.is_empty());
    for (req, _) in restored {
        let (status, body) = get(&c, &format!("{url}/v1/tx/{}", tx_id(req))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["status"].as_str(), body["tier"].as_str()),
            (Some("stored"), Some("log")),
            "{body}"
        );
        assert_eq!(body["tx"], serde_json::to_value(&req.tx).unwrap(), "{body}");
    }
    // On the log again: it reads back from there too.
    let (_, status) = get(&c, &format!("{url}/v1/log/status")).await;
    assert_eq!(status["lost_batches_total"], 0, "{status}");
    city.stop().await;
}
