//! The input rules of `POST /v1/tx` and the JSON error body of every protocol error,
//! against real nodes (child processes) on loopback: node-internal kinds refused,
//! re-submissions answered as duplicates however old, duplicate JSON keys refused, a
//! `(sender, nonce)` pair accepted once (also across a restart and under concurrency),
//! control characters refused in names; and malformed request lines, conflicting lengths,
//! over-long URLs, over-large headers and slow headers answered with a JSON error.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use citychain::crypto::SigningKey;
use citychain::messages::{FlagKind, now_ms};
use citychain_harness::client::{TxClient, TxDraft};
use common::*;
use serde_json::Value;

/// A city writing only to its immutable log, with `intake` as its `[intake]` section.
async fn city(dir: &Path, intake: &str) -> ChildNode {
    let config = format!(
        "{}\n[supervisor]\nchain = [\"log\"]\n\n[intake]\n{intake}\n",
        city_node_section(dir)
    );
    spawn_node(dir, &config, true).await
}

async fn post_body(url: &str, body: Vec<u8>) -> (u16, Value) {
    post_raw(&client(), url, "application/json", body).await
}

fn code(answer: &Value) -> &str {
    answer
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no error code in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_internal_kinds_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "").await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let internal = [
        FlagKind::Checkpoint,
        FlagKind::RepairReq,
        FlagKind::RepairAck,
        FlagKind::PohRequest,
        FlagKind::PohAck,
        FlagKind::SystemTx,
    ];
    for (i, kind) in internal.into_iter().enumerate() {
        let req = draft(i as u64, 10).kind(kind).sign(&key).unwrap();
        let (status, answer) = post(&c, &node.url, &req).await;
        assert_eq!(
            (status, code(&answer)),
            (403, "kind_not_allowed"),
            "{kind:?}"
        );
        let (status, _) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&req))).await;
        assert_eq!(status, 404, "a refused {kind:?} leaves nothing behind");
    }
    let fresh = signed(&key, 100);
    let (status, answer) = post(&c, &node.url, &fresh).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["flag"], "fresh_tx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_transaction_resent_after_the_skew_window_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    // Signed three seconds ago: inside a ten-second window, outside a one-second one.
    let old = draft(1, 10)
        .timestamp_ms(now_ms() - 3_000)
        .sign(&key)
        .unwrap();
    let stored = {
        let node = city(dir.path(), "max_clock_skew = \"10s\"").await;
        let (status, answer) = post(&client(), &node.url, &old).await;
        assert_eq!(status, 200, "{answer}");
        answer
    };
    // The same city, restarted with a window the transaction is now outside of.
    let node = city(dir.path(), "max_clock_skew = \"1s\"").await;
    let c = client();
    let (status, answer) = post(&c, &node.url, &old).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true);
    assert_eq!(answer["tx_id"], stored["tx_id"]);
    assert_eq!(answer["batch_id"], stored["batch_id"]);
    // A new transaction as old is still refused.
    let other = draft(2, 10)
        .timestamp_ms(now_ms() - 3_000)
        .sign(&key)
        .unwrap();
    let (status, answer) = post(&c, &node.url, &other).await;
    assert_eq!((status, code(&answer)), (400, "timestamp_skew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_anywhere_in_the_body_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "").await;
    let key = SigningKey::generate().unwrap();
    let mut payload = serde_json::Map::new();
    payload.insert("memo".into(), Value::from("lunch"));
    let req = draft(1, 10).payload(payload).sign(&key).unwrap();
    let body = String::from_utf8(serde_json::to_vec(&req).unwrap()).unwrap();
    // The amount twice: two parsers could disagree about which one was signed.
    let amount = body.replacen("\"amount\":10,", "\"amount\":10,\"amount\":99999,", 1);
    // A key repeated inside the payload and inside pop, and at the top level.
    let nested = body.replacen("\"memo\":\"lunch\"", "\"memo\":\"lunch\",\"memo\":\"x\"", 1);
    let top = body.replacen("{\"tx\":", "{\"public_key\":\"AA==\",\"tx\":", 1);
    for bad in [amount, nested, top] {
        assert_ne!(bad, body, "the test edits the body");
        let (status, answer) = post_body(&node.url, bad.clone().into_bytes()).await;
        assert_eq!((status, code(&answer)), (400, "duplicate_key"), "{bad}");
    }
    let (status, _) = get(&client(), &format!("{}/v1/tx/{}", node.url, tx_id(&req))).await;
    assert_eq!(status, 404, "nothing was stored");
    let (status, answer) = post_body(&node.url, body.into_bytes()).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_and_nonce_pair_is_accepted_once_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let first = draft(7, 10).sign(&key).unwrap();
    let second = draft(7, 99).sign(&key).unwrap();
    {
        let node = city(dir.path(), "").await;
        let c = client();
        let (status, answer) = post(&c, &node.url, &first).await;
        assert_eq!(status, 200, "{answer}");
        let (status, answer) = post(&c, &node.url, &second).await;
        assert_eq!((status, code(&answer)), (409, "nonce_reused"), "{answer}");
        let (status, answer) = post(&c, &node.url, &first).await;
        assert_eq!(
            (status, answer["duplicate"].clone()),
            (200, Value::from(true))
        );
        let (status, _) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&second))).await;
        assert_eq!(status, 404, "the refused transaction left nothing behind");
    }
    let node = city(dir.path(), "").await;
    let c = client();
    let (status, answer) = post(&c, &node.url, &second).await;
    assert_eq!(
        (status, code(&answer)),
        (409, "nonce_reused"),
        "the nonce is still used after a restart"
    );
    let (status, answer) = post(&c, &node.url, &first).await;
    assert_eq!(
        (status, answer["duplicate"].clone()),
        (200, Value::from(true))
    );

    // Eight different transactions with one nonce at once: exactly one wins.
    let racers: Vec<_> = (0..8)
        .map(|i| draft(8, 100 + i).sign(&key).unwrap())
        .collect();
    let tx = TxClient::new(c.clone(), &node.url);
    let answers = futures::future::join_all(racers.iter().map(|r| tx.post(r))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.as_ref().unwrap().status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
}

fn receiver(nonce: u64, to: &str) -> TxDraft {
    TxDraft {
        to: to.into(),
        ..draft(nonce, 10)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "").await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let cases = [
        receiver(1, "bob\u{0}"),
        receiver(2, "bob\r\nX-Injected: 1"),
        receiver(3, "bob\u{202e}evil"),
        receiver(4, "bob\u{7f}"),
        TxDraft {
            city: "tok\tyo".into(),
            ..draft(5, 10)
        },
        draft(6, 10).continent("as\u{1b}[31mia"),
    ];
    for d in cases {
        let req = d.sign(&key).unwrap();
        let (status, answer) = post(&c, &node.url, &req).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "invalid_name"),
            "{:?}",
            req.tx
        );
        let (status, _) = get(&c, &format!("{}/v1/tx/{}", node.url, tx_id(&req))).await;
        assert_eq!(status, 404);
    }
    // Letters of any script are names.
    let ok = receiver(7, "Zoë-東京_1").sign(&key).unwrap();
    let (status, answer) = post(&c, &node.url, &ok).await;
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_config_with_a_control_character_in_a_node_id_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[supervisor]\nchain = [\"log\"]\n",
            city_node_section(dir.path()).replace("city-tokyo", "city\\u0007tokyo")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("node.id"), "{text}");
}

/// What a raw answer was: its status and its body as JSON.
struct RawAnswer {
    status: u16,
    json: Value,
    head: String,
}

/// Sends `request` on a fresh connection (in `pieces`, to look like a slow client if
/// more than one) and reads one answer: the head, then exactly `Content-Length` bytes.
fn raw_exchange(addr: &str, request: &[u8]) -> RawAnswer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The node may answer and close before it has read everything (431, 400): a write
    // error then is not the test's concern, the answer is.
    let _ = s.write_all(request);
    read_answer(&mut s, &mut Vec::new())
}

/// Reads one answer from `s`, starting with what `buf` holds of it; leaves in `buf`
/// what came after it (the next answer on a kept-alive connection).
fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> RawAnswer {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s
            .read(&mut chunk)
            .expect("the node answers before the read timeout");
        assert!(
            n > 0,
            "the node closed without an answer: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the body ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
    let json = serde_json::from_slice(&buf[head_end..head_end + length])
        .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {head}"));
    buf.drain(..head_end + length);
    RawAnswer { status, json, head }
}

/// Every protocol-level refusal of the node at `url` has its status and a JSON error;
/// `body_path` is the request line of a route that reads a body, with any header lines it
/// needs to get that far (no trailing line break).
fn protocol_errors_have_json_bodies(url: &str, body_path: &str) {
    let addr = url.trim_start_matches("http://");
    let check = |what: &str, answer: RawAnswer, status: u16, expected_code: &str| {
        assert_eq!(answer.status, status, "{what}: {}", answer.head);
        assert_eq!(code(&answer.json), expected_code, "{what}: {}", answer.json);
        assert!(answer.json.pointer("/error/message").is_some(), "{what}");
        assert!(
            answer
                .head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {}",
            answer.head
        );
    };
    let answer = raw_exchange(addr, b"THIS IS NOT HTTP\r\n\r\n");
    check("a malformed request line", answer, 400, "bad_request");
    let answer = raw_exchange(
        addr,
        b"POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    );
    check("conflicting lengths", answer, 400, "bad_request");
    let answer = raw_exchange(
        addr,
        b"POST /v1/tx HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    );
    check(
        "a length and a chunked encoding",
        answer,
        400,
        "bad_request",
    );
    let long_url = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9 * 1024));
    let answer = raw_exchange(addr, long_url.as_bytes());
    check("a 9 KiB URL", answer, 414, "uri_too_long");
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let answer = raw_exchange(addr, big_header.as_bytes());
    check("a 40 KiB header", answer, 431, "headers_too_large");
    // An unfinished head of exactly the parser's 128 KiB: the node reads all of it before
    // it answers, so closing leaves no unread bytes (which would reset the connection
    // and could lose the answer on the client's side).
    let mut huge_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    huge_head.resize(128 * 1024, b'a');
    let answer = raw_exchange(addr, &huge_head);
    check(
        "a head over the parser's buffer",
        answer,
        431,
        "headers_too_large",
    );
    let answer = raw_exchange(
        addr,
        format!(
            "{body_path}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{{"
        )
        .as_bytes(),
    );
    check("an over-large body", answer, 413, "payload_too_large");
    let answer = raw_exchange(addr, b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        answer.head.to_ascii_lowercase().contains("allow: get\r\n"),
        "{}",
        answer.head
    );
    check("a method the path lacks", answer, 405, "method_not_allowed");

    // Keep-alive still works: two requests on one connection, both answered in full.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(code(&read_answer(&mut s, &mut buf).json), "not_found");
    assert_eq!(code(&read_answer(&mut s, &mut buf).json), "not_found");

    // A client that never finishes its headers is answered 408 once the node gives up.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let answer = read_answer(&mut s, &mut Vec::new());
    check("slow headers", answer, 408, "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_on_a_city_have_json_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "").await;
    let url = node.url.clone();
    tokio::task::spawn_blocking(move || {
        protocol_errors_have_json_bodies(&url, "POST /v1/tx HTTP/1.1")
    })
    .await
    .unwrap();
}

/// A method a city path does not serve is 405 `method_not_allowed` with `Allow` (it was a
/// 404 "no route", though the path exists), and a path that does not exist stays 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_city_path_does_not_serve_is_405_with_the_allowed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let node = city(dir.path(), "").await;
    let client = client();
    let tx = format!("/v1/tx/{}", "ab".repeat(32));
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/tx", "POST"),
        (reqwest::Method::DELETE, tx.as_str(), "GET"),
        (reqwest::Method::POST, "/readyz", "GET"),
        (reqwest::Method::PUT, "/v1/actors/intake/panic", "POST"),
        (reqwest::Method::POST, "/openapi.json", "GET"),
    ] {
        let res = client
            .request(method.clone(), format!("{}{path}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(res.headers()["allow"], allow, "{method} {path}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let body: Value = res.json().await.unwrap();
        assert_eq!(code(&body), "method_not_allowed", "{method} {path}: {body}");
    }
    let res = client
        .delete(format!("{}/v1/nowhere", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_on_a_storage_node_have_json_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[node]\nid = \"light-1\"\nrole = \"light\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n{}",
        dir.path().join("data").display(),
        serves_test_city()
    );
    let node = spawn_node(dir.path(), &config, true).await;
    let url = node.url.clone();
    // Signed as the city the node serves, so the body limit is what answers.
    let path = format!(
        "{}/{}",
        citychain::messages::storage::BATCHES_PATH,
        "ab".repeat(32)
    );
    let signer = citychain::messages::auth::RequestSigner::new(
        TEST_CITY,
        std::sync::Arc::new(test_city_key()),
    );
    let auth: String = signer
        .headers("PUT", &path, "light-1", b"{")
        .unwrap()
        .iter()
        .map(|(k, v)| format!("\r\n{k}: {v}"))
        .collect();
    let put = format!("PUT {path} HTTP/1.1{auth}");
    tokio::task::spawn_blocking(move || protocol_errors_have_json_bodies(&url, &put))
        .await
        .unwrap();
}
