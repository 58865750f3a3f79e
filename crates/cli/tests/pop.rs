//! Proof of place against a real city process: a transaction whose `pop` is outside its
//! city's fence is refused and changes nothing, one inside is stored, a city that
//! requires `pop` refuses a transaction without it, `citychain send --pop` carries the
//! position, and a fence that is not one stops `config check` with the reason.

mod common;

use std::path::Path;
use std::process::Command;

use citychain::crypto::SigningKey;
use citychain_harness::federation::example_fence;
use common::*;
use serde_json::Value;

/// A city (tokyo) writing to its log, fenced by the example fence `up` gives tokyo, named
/// by a path relative to its config file.
async fn fenced_city(dir: &Path, require: bool) -> ChildNode {
    std::fs::create_dir_all(dir.join("fences")).unwrap();
    std::fs::write(
        dir.join("fences/tokyo.geojson"),
        example_fence("tokyo").unwrap(),
    )
    .unwrap();
    let config = format!(
        "{}\n[supervisor]\nchain = [\"log\"]\n\n[pop]\nrequire = {require}\nfence_file = \"fences/tokyo.geojson\"\n",
        city_node_section(dir)
    );
    spawn_node(dir, &config, true).await
}

fn code(answer: &Value) -> &str {
    answer
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no error code in {answer}"))
}

/// `citychain_pop_checks_total{outcome=...}`, 0 when absent.
fn pop_checks(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("citychain_pop_checks_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

const SHINJUKU: (f64, f64) = (35.6938, 139.7034);
const OSAKA: (f64, f64) = (34.6937, 135.5023);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_outside_its_citys_fence_is_refused_and_one_inside_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = fenced_city(dir.path(), false).await;
    let c = client();
    let key = SigningKey::generate().unwrap();

    // Outside: 400, nothing stored, its nonce still free.
    let outside = draft(1, 10).pop(OSAKA.0, OSAKA.1).sign(&key).unwrap();
    let (status, answer) = post(&c, &node.url, &outside).await;
    assert_eq!(
        (status, code(&answer)),
        (400, "pop_outside_city"),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tokyo") && message.contains("34.6937"),
        "{message}"
    );
    let (status, _) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&outside))).await;
    assert_eq!(status, 404, "a refused transaction leaves nothing behind");

    // Inside, with the same nonce: stored, and its position reads back as signed.
    let inside = draft(1, 10).pop(SHINJUKU.0, SHINJUKU.1).sign(&key).unwrap();
    let (status, answer) = post(&c, &node.url, &inside).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "stored");
    let (status, read) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&inside))).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["tx"]["pop"]["lat"], SHINJUKU.0);
    assert_eq!(read["tx"]["pop"]["lon"], SHINJUKU.1);

    // Without a position (not required here), and with impossible coordinates.
    let (status, answer) = post(&c, &node.url, &signed(&key, 2)).await;
    assert_eq!(status, 200, "{answer}");
    let impossible = draft(3, 10).pop(95.0, 139.0).sign(&key).unwrap();
    let (status, answer) = post(&c, &node.url, &impossible).await;
    assert_eq!((status, code(&answer)), (400, "invalid_field"), "{answer}");

    let m = metrics(&c, &node.url).await;
    assert_eq!(pop_checks(&m, "pop_outside_city"), 1, "{m}");
    assert_eq!(pop_checks(&m, "inside"), 1, "{m}");
    assert_eq!(pop_checks(&m, "absent"), 1, "{m}");
    assert_eq!(pop_checks(&m, "invalid_field"), 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_that_requires_pop_refuses_a_transaction_without_it_and_send_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = fenced_city(dir.path(), true).await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let bare = signed(&key, 1);
    let (status, answer) = post(&c, &node.url, &bare).await;
    assert_eq!((status, code(&answer)), (400, "pop_required"), "{answer}");
    let (status, _) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&bare))).await;
    assert_eq!(status, 404);

    // The command line: `send --pop LAT,LON`, refused outside (exit 1), stored inside.
    let key_file = dir.path().join("alice.key");
    key.save(&key_file).unwrap();
    let send = |pop: &str, nonce: &str| {
        let out = Command::new(binary())
            .args(["send", "--node", &node.url, "--key"])
            .arg(&key_file)
            .args([
                "--to", "bob", "--amount", "5", "--nonce", nonce, "--pop", pop,
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (exit, out) = send(&format!("{},{}", OSAKA.0, OSAKA.1), "7");
    assert_eq!(exit, Some(1), "{out}");
    assert!(out.contains("pop_outside_city"), "{out}");
    let (exit, out) = send(&format!("{},{}", SHINJUKU.0, SHINJUKU.1), "7");
    assert_eq!(exit, Some(0), "{out}");
    assert!(out.contains("\"stored\""), "{out}");
    let (exit, out) = send("north,east", "8");
    assert_eq!(
        exit,
        Some(2),
        "a position that is not one is a usage error: {out}"
    );
    assert!(out.contains("LAT,LON"), "{out}");
}

#[test]
fn a_fence_that_is_not_one_fails_config_check_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("line.geojson"),
        r#"{"type":"LineString","coordinates":[[139,35],[140,36]]}"#,
    )
    .unwrap();
    let path = dir.path().join("city.toml");
    for (pop, why) in [
        ("fence_file = \"line.geojson\"", "not a LineString"),
        ("fence_file = \"missing.geojson\"", "missing.geojson"),
        ("require = true", "needs a fence"),
    ] {
        std::fs::write(
            &path,
            format!("{}\n[pop]\n{pop}\n", city_node_section(dir.path())),
        )
        .unwrap();
        let out = Command::new(binary())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{pop}: {text}");
        assert!(
            text.contains("[pop]") && text.contains(why),
            "{pop}: {text}"
        );
    }
}
