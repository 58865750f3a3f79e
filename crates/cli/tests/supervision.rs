//! The supervision tree under injected panics: restart strategies, restart types, the
//! intensity limit, and no acknowledged transaction lost. Each node is a real child process.

mod common;

use std::path::Path;
use std::time::Duration;

use citychain::crypto::SigningKey;
use common::*;
use serde_json::Value;

/// A city node writing only to its immutable log (unless `extra` names a chain), with
/// fault injection on and `extra` appended to its `[supervisor]` section.
async fn city(dir: &Path, extra: &str) -> ChildNode {
    let config = format!(
        r#"{node}

[supervisor]
{chain}
fault_injection = true
backoff_initial = "5ms"
{extra}
"#,
        node = city_node_section(dir),
        chain = if extra.contains("chain =") {
            ""
        } else {
            "chain = [\"log\"]"
        },
    );
    spawn_node(dir, &config, true).await
}

async fn actors(url: &str) -> Vec<Value> {
    let (_, v) = get(&client(), &format!("{url}/v1/actors")).await;
    v.as_array().unwrap().clone()
}

fn restarts(actors: &[Value], name: &str) -> u64 {
    actors
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {actors:?}"))["restarts"]
        .as_u64()
        .unwrap()
}

async fn inject(url: &str, actor: &str) {
    let resp = client()
        .post(format!("{url}/v1/actors/{actor}/panic"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
}

/// Waits until `actor` has restarted `n` times and everything runs again.
async fn wait_restarted(url: &str, actor: &str, n: u64) -> Vec<Value> {
    wait_for(
        &format!("{actor} to restart"),
        Duration::from_secs(10),
        || async {
            let a = actors(url).await;
            let all_running = a.iter().all(|x| x["status"] == "running");
            (restarts(&a, actor) == n && all_running).then_some(a)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_actor_is_restarted_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "max_restarts = 20").await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let mut promised = Vec::new();
    let mut nonce = 0;
    for actor in [
        "intake",
        "dag_batcher",
        "flagger",
        "prioritizer",
        "storage_writer",
        "repairer",
    ] {
        for _ in 0..5 {
            nonce += 1;
            let req = signed(&key, nonce);
            let (status, body) = post(&c, &node.url, &req).await;
            assert_eq!(status, 200, "{body}");
            promised.push(tx_id(&req));
        }
        inject(&node.url, actor).await;
        let a = wait_restarted(&node.url, actor, 1).await;
        let failure = a.iter().find(|x| x["name"] == actor).unwrap()["last_failure"].clone();
        assert!(
            failure.as_str().unwrap().contains("fault injected"),
            "{failure}"
        );
    }
    // The restarted pipeline takes new work, and everything acknowledged is still there.
    let (status, body) = post(&c, &node.url, &signed(&key, 1000)).await;
    assert_eq!(status, 200, "{body}");
    for id in &promised {
        let (status, body) = get(&c, &format!("{}/v1/tx/{id}", node.url)).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("stored")),
            "{id}"
        );
    }
    let metrics = metrics(&c, &node.url).await;
    assert!(
        metrics.contains("citychain_actor_restarts_total{actor=\"flagger\"} 1"),
        "{metrics}"
    );
    // Only the failed actor restarted each time (one_for_one).
    let a = actors(&node.url).await;
    for name in [
        "intake",
        "dag_batcher",
        "flagger",
        "prioritizer",
        "storage_writer",
        "repairer",
    ] {
        assert_eq!(restarts(&a, name), 1, "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_and_rest_for_one_restart_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "strategy = \"one_for_all\"").await;
    inject(&node.url, "dag_batcher").await;
    let a = wait_restarted(&node.url, "dag_batcher", 1).await;
    for name in ["intake", "flagger", "prioritizer", "storage_writer"] {
        assert_eq!(restarts(&a, name), 1, "one_for_all restarts {name}: {a:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "strategy = \"rest_for_one\"").await;
    inject(&node.url, "flagger").await;
    let a = wait_restarted(&node.url, "flagger", 1).await;
    // Started after the flagger: the batcher and the intake; before it: the others.
    assert_eq!(restarts(&a, "dag_batcher"), 1, "{a:?}");
    assert_eq!(restarts(&a, "intake"), 1, "{a:?}");
    assert_eq!(restarts(&a, "prioritizer"), 0, "{a:?}");
    assert_eq!(restarts(&a, "storage_writer"), 0, "{a:?}");
    let (status, body) = post(
        &client(),
        &node.url,
        &signed(&SigningKey::generate().unwrap(), 1),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_actor_is_not_restarted_and_the_node_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(
        dir.path(),
        "[supervisor.restart]\nprioritizer = \"temporary\"",
    )
    .await;
    inject(&node.url, "prioritizer").await;
    let c = client();
    wait_for("readiness to fail", Duration::from_secs(10), || async {
        let r = c.get(format!("{}/readyz", node.url)).send().await.ok()?;
        (r.status().as_u16() == 503).then_some(())
    })
    .await;
    let a = actors(&node.url).await;
    let p = a.iter().find(|x| x["name"] == "prioritizer").unwrap();
    assert_eq!(p["status"], "failed", "{a:?}");
    assert_eq!(p["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_restart_limit_the_node_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = city(dir.path(), "max_restarts = 2\nwithin = \"1m\"").await;
    for n in 1..=2 {
        inject(&node.url, "flagger").await;
        wait_restarted(&node.url, "flagger", n).await;
    }
    inject(&node.url, "flagger").await;
    let status = wait_for(
        "the node to give up and exit",
        Duration::from_secs(20),
        || {
            let s = node.child.try_wait().unwrap();
            async move { s }
        },
    )
    .await;
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(log.contains("supervisor gave up"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[supervisor]\nchain = [\"log\"]\n",
        city_node_section(dir.path())
    );
    let node = spawn_node(dir.path(), &config, true).await;
    let resp = client()
        .post(format!("{}/v1/actors/flagger/panic", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

/// Light nodes that accept connections and never answer: a hung peer.
fn hung_peers(n: usize) -> (Vec<std::net::TcpListener>, String) {
    use base64::Engine;
    let mut listeners = Vec::new();
    let mut entries = String::new();
    for i in 0..n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let key = SigningKey::generate().unwrap();
        entries.push_str(&format!(
            "[[storage.nodes]]\nid = \"hung-{i}\"\nrole = \"light\"\nurl = \"http://{}\"\ncontinent = \"asia\"\npublic_key = \"{}\"\n",
            l.local_addr().unwrap(),
            base64::engine::general_purpose::STANDARD.encode(key.public_key())
        ));
        listeners.push(l);
    }
    (listeners, entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_on_a_failed_intake_get_503_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_hung, entries) = hung_peers(6);
    // The light tier hangs for 3 s before the batch falls through to the log, so
    // requests are in flight when the Intake panics.
    let node = city(
        dir.path(),
        &format!(
            "chain = [\"light\", \"log\"]\n[storage]\nlight_deadline = \"3s\"\n[prioritizer]\nprobe_interval = \"1h\"\n{entries}"
        ),
    )
    .await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let req = signed(&key, 1);
    let url = node.url.clone();
    let c2 = c.clone();
    let req2 = req.clone();
    let started = std::time::Instant::now();
    let pending = tokio::spawn(async move { post(&c2, &url, &req2).await });
    wait_for(
        "the transaction to be in flight",
        Duration::from_secs(5),
        || async {
            let (s, b) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&req))).await;
            (s == 200 && b["status"] == "pending").then_some(())
        },
    )
    .await;
    inject(&node.url, "intake").await;
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at once, not after the tier deadline"
    );

    // The batch itself went on to the log: a retry finds it durable.
    let (status, body) = wait_for(
        "the batch to reach the log",
        Duration::from_secs(15),
        || async {
            let (s, b) = post(&c, &node.url, &req).await;
            (s == 200).then_some((s, b))
        },
    )
    .await;
    assert_eq!(body["tier"], "log", "{status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_actor_restarts_and_completes_batches_after() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "max_restarts = 5").await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let first = signed(&key, 1);
    let (status, body) = post(&c, &node.url, &first).await;
    assert_eq!(status, 200, "{body}");
    inject(&node.url, "failover").await;
    let a = wait_restarted(&node.url, "failover", 1).await;
    assert_eq!(restarts(&a, "intake"), 0, "one_for_one: {a:?}");
    // Tier results after the restart reach the new incarnation through the same mailbox.
    let second = signed(&key, 2);
    let (status, body) = post(&c, &node.url, &second).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier"], "log");
    for req in [&first, &second] {
        let (status, body) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(req))).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("stored")));
    }
}
