//! Resource limits under attack, against real node processes on loopback: request bodies
//! that stop arriving (on a light node and on a city), a flood of signed transactions, and
//! one peer trying to hold every connection.
//!
//! The attacker connects from `127.0.0.2` (and `127.0.0.3…` for the flood), the honest
//! client from `127.0.0.1`, so per-peer limits can tell them apart. Memory is the node's
//! own resident set (`VmRSS` of the child process), sampled every 20 ms during the attack.
//! The bounds below are what the README states ("RSS under a flood") for the node's
//! default limits.

mod attack;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attack::{RawConn, RssWatch, Stalled, addr_of, peer, rss_mib, stall};
use base64::Engine;
use citychain::crypto::SigningKey;
use citychain::messages::auth::RequestSigner;

use common::*;
use futures::StreamExt;

/// Connections whose bodies stop arriving, per attack.
const STALLED: usize = 500;
/// Longest a test waits for the node to close a stalled connection.
const WAIT_FOR_CLOSE: Duration = Duration::from_secs(20);
/// A stalled connection must be closed this soon after its client stopped sending: the
/// default body idle timeout (5 s), the answer, and a second of lingering.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);
/// A light node's resident memory while 500 stalled 2 MB bodies are held against it.
const LIGHT_RSS_BOUND_MIB: f64 = 200.0;
/// A city's resident memory while 500 stalled bodies are held against it.
const CITY_STALL_RSS_BOUND_MIB: f64 = 200.0;
/// A city's resident memory during a flood of 2,000 transactions.
const CITY_FLOOD_RSS_BOUND_MIB: f64 = 300.0;

fn light_config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[node]\nid = \"light-1\"\nrole = \"light\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n{extra}{}",
        dir.join("data").display(),
        serves_test_city()
    )
}

/// A lone city writing to its own immutable log.
fn log_city_config(dir: &std::path::Path) -> String {
    format!(
        "{}\n[supervisor]\nchain = [\"log\"]\n",
        city_node_section(dir)
    )
}

/// Runs `attackers` to completion while an honest client keeps working; `honest` is called
/// over and over (with a growing counter) until every attacker is done, and must succeed
/// each time. Returns what became of each attacker and how many honest calls were made
/// while every attacker had sent all it would and was holding its connection.
async fn attack_while_honest<F, Fut>(
    attackers: Vec<tokio::task::JoinHandle<Stalled>>,
    sent: Arc<AtomicU64>,
    mut honest: F,
) -> (Vec<Stalled>, usize)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let total = attackers.len();
    let mut during = 0;
    let mut n = 0;
    while !attackers.iter().all(|a| a.is_finished()) {
        let all_sent = sent.load(Ordering::Relaxed) as usize == total;
        n += 1;
        honest(n).await;
        if all_sent && !attackers.iter().all(|a| a.is_finished()) {
            during += 1;
        }
        // Pacing between honest requests, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut results = Vec::new();
    for a in attackers {
        results.push(a.await.expect("the attacker task runs"));
    }
    (results, during)
}

/// What a stalled-body attack must end in: every connection closed within
/// `CLOSED_WITHIN` of its client stopping, answered 408 or 503 if at all, the node's peak
/// RSS (`rss` = before, peak, after, in MiB) under `bound_mib`, and honest work tried
/// (`during`) while every attacker held on.
fn judge_stall(what: &str, results: &[Stalled], rss: [f64; 3], bound_mib: f64, during: usize) {
    let [before, peak, after] = rss;
    let slowest = summarize(what, results);
    println!(
        "{what}: RSS {before:.1} MiB before, {peak:.1} MiB peak, {after:.1} MiB after; {during} honest requests while every attacker held on"
    );
    let open = results.iter().filter(|r| r.closed_after.is_none()).count();
    assert_eq!(open, 0, "{open} stalled connections were never closed");
    assert!(
        slowest <= CLOSED_WITHIN,
        "a stalled connection stayed open {slowest:?} after its client stopped"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r.status, Some(408) | Some(503) | None)),
        "stalled bodies get 408 or 503: {results:?}"
    );
    assert!(
        peak < bound_mib,
        "{what}: the node grew to {peak:.1} MiB (bound {bound_mib} MiB)"
    );
    assert!(during > 0, "no honest request was tried during the attack");
}

fn summarize(what: &str, results: &[Stalled]) -> Duration {
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for r in results {
        let key = r.status.map_or("none".to_string(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
    }
    let slowest = results
        .iter()
        .filter_map(|r| r.closed_after)
        .max()
        .unwrap_or_default();
    let open = results.iter().filter(|r| r.closed_after.is_none()).count();
    println!("{what}: answers {statuses:?}; still open: {open}; slowest close: {slowest:?}");
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_on_a_light_node_are_cut_off_and_its_memory_stays_bounded() {
    const DECLARED: usize = 2 * 1024 * 1024;
    const SENT: usize = DECLARED - 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(dir.path(), &light_config(dir.path(), ""), true).await;
    let pid = node.child.id();
    let to = addr_of(&node.url);
    let key = SigningKey::generate().unwrap();
    let peers = test_city_client();
    let honest_batches: Vec<_> = (1..=60).map(|seq| sealed_batch(&key, seq, 2)).collect();
    let put = |n: u64| {
        let (peers, url) = (peers.clone(), node.url.clone());
        let (id, bytes) = honest_batches[(n as usize - 1) % honest_batches.len()].clone();
        async move {
            peers
                .put_batch(
                    storage_peer("light-1", &url),
                    &id,
                    bytes,
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|e| panic!("an honest write failed during the attack: {e}"));
        }
    };
    put(1).await;

    let before = rss_mib(pid);
    let watch = RssWatch::start(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let body = Arc::new(vec![0x5Au8; SENT]);
    // The attacker holds the city's key (the worst case: an allowed peer that stalls), so
    // its requests pass authentication and reach the body limits.
    let signer = RequestSigner::new(TEST_CITY, Arc::new(test_city_key()));
    let attackers = (0..STALLED)
        .map(|i| {
            let path = format!("/internal/v1/batches/{i:064x}");
            let auth: String = signer
                .headers("PUT", &path, "light-1", b"a body that never arrives")
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}: {v}\r\n"))
                .collect();
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: light\r\nContent-Type: application/octet-stream\r\nContent-Length: {DECLARED}\r\n{auth}\r\n"
            );
            tokio::spawn(stall(
                peer(2),
                to,
                head,
                body.clone(),
                WAIT_FOR_CLOSE,
                sent.clone(),
            ))
        })
        .collect();
    let (results, during) = attack_while_honest(attackers, sent, put).await;
    let peak = watch.stop().await;
    put(59).await;
    let after = rss_mib(pid);
    judge_stall(
        "light node, stalled 2 MB bodies",
        &results,
        [before, peak, after],
        LIGHT_RSS_BOUND_MIB,
        during,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_on_a_city_are_cut_off_and_honest_transactions_pass() {
    const DECLARED: usize = 60_000;
    const SENT: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let city = spawn_node(dir.path(), &log_city_config(dir.path()), true).await;
    let pid = city.child.id();
    let to = addr_of(&city.url);
    let key = SigningKey::generate().unwrap();
    let client = client();
    let post_one = |n: u64| {
        let (client, url, req) = (client.clone(), city.url.clone(), signed(&key, n));
        async move {
            let (status, body) = post(&client, &url, &req).await;
            assert_eq!(status, 200, "an honest transaction failed: {body}");
        }
    };
    post_one(0).await;

    let before = rss_mib(pid);
    let watch = RssWatch::start(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let plain = Arc::new(vec![b' '; SENT]);
    // Every tenth attacker sends a chunked body instead: no declared length at all.
    let chunk = {
        let mut c = format!("{:x}\r\n", 4096).into_bytes();
        c.extend_from_slice(&[b' '; 4096]);
        c.extend_from_slice(b"\r\n");
        c
    };
    let chunked = Arc::new(chunk.repeat(10));
    let attackers = (0..STALLED)
        .map(|i| {
            let (head, body) = if i % 10 == 0 {
                (
                    "POST /v1/tx HTTP/1.1\r\nHost: city\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                    chunked.clone(),
                )
            } else {
                (
                    format!("POST /v1/tx HTTP/1.1\r\nHost: city\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n"),
                    plain.clone(),
                )
            };
            tokio::spawn(stall(peer(2), to, head, body, WAIT_FOR_CLOSE, sent.clone()))
        })
        .collect();
    let (results, during) = attack_while_honest(attackers, sent, post_one).await;
    let peak = watch.stop().await;
    post_one(10_000).await;
    let after = rss_mib(pid);
    judge_stall(
        "city, stalled bodies",
        &results,
        [before, peak, after],
        CITY_STALL_RSS_BOUND_MIB,
        during,
    );
}

/// The city's only storage before its log is a full node that accepts connections and
/// never answers, so nothing admitted is answered for `STUCK`: whatever the admission bound
/// does not let in must be refused at once, not queued behind the stuck tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_transactions_ends_in_200s_and_quick_503_overloaded() {
    const FLOOD: usize = 2000;
    const PEERS: usize = 20;
    const STUCK: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_key = SigningKey::generate().unwrap();
    let config = format!(
        r#"{}
[supervisor]
chain = ["full", "log"]

[intake]
request_timeout = "30s"

[prioritizer]
probe_interval = "60s"

[storage]
full_deadline = "{}s"

[[storage.nodes]]
id = "full-1"
role = "full"
url = "http://{}"
continent = "asia"
public_key = "{}"
"#,
        city_node_section(dir.path()),
        STUCK.as_secs(),
        black_hole.local_addr().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(hole_key.public_key()),
    );
    let city = spawn_node(dir.path(), &config, true).await;
    let pid = city.child.id();
    let to = addr_of(&city.url);

    let key = SigningKey::generate().unwrap();
    let requests: Vec<(String, Vec<u8>)> = (0..FLOOD as u64)
        .map(|n| {
            let req = signed(&key, n);
            (tx_id(&req), serde_json::to_vec(&req).unwrap())
        })
        .collect();
    // Every connection is open before the first request goes out, so they all arrive at
    // once; 100 per source address.
    let conns: Vec<RawConn> = futures::stream::iter(0..FLOOD)
        .map(|i| async move {
            RawConn::open(peer(2 + (i % PEERS) as u8), to)
                .await
                .expect("connecting to the city")
        })
        .buffered(128)
        .collect()
        .await;

    let before = rss_mib(pid);
    let watch = RssWatch::start(pid);
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(requests.iter().cloned())
        .map(|(mut conn, (id, body))| {
            tokio::spawn(async move {
                let mut req = format!(
                    "POST /v1/tx HTTP/1.1\r\nHost: city\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(&body);
                conn.send(&req).await.expect("sending the request");
                let answer = conn.answer(Duration::from_secs(60)).await;
                (id, start.elapsed(), answer)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let peak = watch.stop().await;
    let after = rss_mib(pid);

    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for (id, took, answer) in &answers {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|| panic!("no answer for {id} after {took:?}"));
        match answer.status {
            200 => ok.push((id.clone(), *took)),
            503 => {
                assert_eq!(answer.error_code(), "overloaded", "{:?}", answer.json());
                let retry: u64 = answer
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("503 without a Retry-After: {answer:?}"));
                assert!(retry >= 1);
                refused.push(*took);
            }
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    let fastest_ok = ok.iter().map(|(_, t)| *t).min().unwrap_or_default();
    println!(
        "flood of {FLOOD}: {} answered 200 (first after {fastest_ok:?}), {} refused 503 overloaded (slowest after {slowest_refusal:?}); city RSS {before:.1} MiB before, {peak:.1} MiB peak, {after:.1} MiB after",
        ok.len(),
        refused.len()
    );
    assert!(!ok.is_empty(), "nothing was admitted");
    assert!(
        !refused.is_empty(),
        "all {FLOOD} transactions were admitted: nothing bounds admission"
    );
    assert!(
        slowest_refusal < STUCK,
        "a refusal took {slowest_refusal:?}: it waited behind the stuck tier instead of being refused at once"
    );
    assert!(
        peak < CITY_FLOOD_RSS_BOUND_MIB,
        "the city grew to {peak:.1} MiB (bound {CITY_FLOOD_RSS_BOUND_MIB} MiB)"
    );

    // Every 200 is a promise: each of those transactions is stored.
    let client = client();
    futures::stream::iter(ok)
        .for_each_concurrent(32, |(id, _)| {
            let (client, url) = (client.clone(), city.url.clone());
            async move {
                let (status, body) = get(&client, &format!("{url}/v1/tx/{id}")).await;
                assert_eq!(status, 200, "acknowledged {id} is unknown: {body}");
                assert_eq!(body["status"], "stored", "{body}");
            }
        })
        .await;
    drop(black_hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_connection() {
    const PER_PEER: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[limits]\nmax_connections_per_peer = {PER_PEER}\nkeep_alive = \"60s\"\n");
    let node = spawn_node(dir.path(), &light_config(dir.path(), &extra), true).await;
    let to = addr_of(&node.url);
    let t = Duration::from_secs(5);

    let mut held = Vec::new();
    for _ in 0..PER_PEER {
        let mut conn = RawConn::open(peer(1), to).await.unwrap();
        let answer = conn.get("/healthz", t).await.expect("an answer");
        assert_eq!(answer.status, 200);
        held.push(conn);
    }
    // One more from the same address is refused, and the connection closed.
    let mut extra_conn = RawConn::open(peer(1), to).await.unwrap();
    let answer = extra_conn.get("/healthz", t).await.expect("an answer");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.error_code(), "overloaded");
    assert!(answer.header("retry-after").is_some(), "{answer:?}");
    assert!(
        extra_conn.closed_within(t).await,
        "the refused connection is closed"
    );
    // Another address is served as usual.
    let mut other = RawConn::open(peer(2), to).await.unwrap();
    assert_eq!(other.get("/healthz", t).await.unwrap().status, 200);
    // The held connections still work, and once one closes there is room again.
    assert_eq!(held[0].get("/healthz", t).await.unwrap().status, 200);
    drop(held.pop());
    wait_for("room for the peer again", t, || async {
        let mut conn = RawConn::open(peer(1), to).await.ok()?;
        (conn.get("/healthz", t).await?.status == 200).then_some(())
    })
    .await;
}
