//! The federation levels with real processes on loopback: a city's batches go up to its
//! continent and the global node, a global checkpoint covers each within the configured
//! interval, and its inclusion proof checks offline (a tampered one does not); a SIGKILLed
//! continent or global node loses nothing; strangers and forgeries are refused and change
//! nothing; malformed input gets a JSON 4xx.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain::federation::verify::entries_root;
use citychain::messages::auth::RequestSigner;
use citychain::messages::federation::{
    CITY_BATCHES_PATH, CONTINENT_BATCHES_PATH, Certificate, CertifiedBatch, CitySubmission,
    ContinentBatch, ContinentBatchHeader, ContinentEntry, ContinentSubmission,
    SignedContinentBatch,
};
use citychain::messages::{Batch, BatchHeader, FlagKind, PohAck, Tier, encode, now_ms};
use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// POSTs `body` to `base + path`, signed by `signer` for node `audience` (no signature when
/// `signer` is `None`); the status and the JSON answer.
async fn signed_post(
    c: &reqwest::Client,
    signer: Option<&RequestSigner>,
    audience: &str,
    base: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = c
        .post(format!("{base}{path}"))
        .header("content-type", "application/octet-stream");
    if let Some(s) = signer {
        for (name, value) in s.headers("POST", path, audience, &body).unwrap() {
            req = req.header(name, value);
        }
    }
    let resp = req.body(body).send().await.expect("the node answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
    (status, json)
}

/// A refusal to provoke: what it is, who signs, the body, the status and code expected.
type Case = (
    &'static str,
    Option<RequestSigner>,
    Vec<u8>,
    u16,
    &'static str,
);

fn signer(id: &str, key: SigningKey) -> RequestSigner {
    RequestSigner::new(id, Arc::new(key))
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

fn header(city: &str, seq: u64) -> BatchHeader {
    Batch::build(city, seq, vec![], FlagKind::FreshTx, &[], now_ms()).header
}

/// A batch on the log tier, certified by `key`: the city's word is its only witness.
fn on_the_log(key: &SigningKey, city: &str, seq: u64) -> CertifiedBatch {
    let cert = Certificate {
        tier: Tier::Log,
        holders: vec!["city-tokyo".into()],
        acks: vec![],
    };
    CertifiedBatch::sign(key, header(city, seq), cert).unwrap()
}

/// Waits until the global node says a checkpoint covers city batch `batch`.
async fn wait_covered(c: &reqwest::Client, global: &str, batch: &str, within: Duration) -> Value {
    wait_for(
        &format!("a checkpoint to cover city batch {batch}"),
        within,
        || async {
            let (s, v) = get(c, &format!("{global}/v1/city-batches/{batch}")).await;
            (s == 200 && !v["checkpoint"].is_null()).then_some(v)
        },
    )
    .await
}

/// Rewrites a saved proof with `change`, checks that `checkpoint verify` refuses it.
fn refused_when(proof: &Path, keys: &[&str], what: &str, change: impl Fn(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(proof).unwrap()).unwrap();
    change(&mut v);
    let tampered = proof.with_file_name("tampered.json");
    std::fs::write(&tampered, v.to_string()).unwrap();
    let mut args = vec![
        "checkpoint",
        "verify",
        "--proof",
        tampered.to_str().unwrap(),
    ];
    args.extend_from_slice(keys);
    let (code, out) = run(&args);
    assert_eq!(code, Some(1), "a proof with {what} was accepted: {out}");
    assert!(
        out.contains("NOT PROVEN") || out.contains("BAD SIGNATURE") || out.contains("NOT A PROOF"),
        "{what}: {out}"
    );
}

fn flip_hex(v: &mut Value) {
    let s = v.as_str().unwrap();
    let first = if s.starts_with('0') { "1" } else { "0" };
    *v = Value::String(format!("{first}{}", &s[1..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_covered_by_a_global_checkpoint_and_its_proof_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let c = client();
    let (city, continent, global) = (
        fed.city_url(),
        fed.url_of(Role::Continent),
        fed.url_of(Role::Global),
    );
    let window = fed.node("continent-asia").config.continent.window;
    let interval = fed.node("global").config.global.checkpoint_interval;

    let key = SigningKey::generate().unwrap();
    let sent_ms = now_ms();
    let (status, stored) = post(&c, &city, &signed(&key, 1)).await;
    assert_eq!(status, 200, "{stored}");
    let batch = stored["batch_id"].as_str().unwrap().to_string();

    // The continent closes its batch within its window and the global node signs a
    // checkpoint within its interval; forwarding on loopback adds milliseconds, a
    // 2-core machine shared with other work at times a few seconds.
    let bound = window + interval + Duration::from_secs(5);
    let covered = wait_covered(&c, &global, &batch, bound).await;
    let at = covered["checkpoint"]["time_ms"].as_u64().unwrap();
    eprintln!("covered {} ms after the transaction was sent", at - sent_ms);
    assert!(
        at.saturating_sub(sent_ms) <= bound.as_millis() as u64,
        "covered {} ms after the transaction was sent",
        at - sent_ms
    );
    let continent_batch = covered["continent_batch_id"].as_str().unwrap().to_string();
    assert_eq!(covered["continent"], "asia");

    // Every level says where the batch ended up, and they agree.
    let (_, b) = get(&c, &format!("{city}/v1/batches/{batch}")).await;
    assert_eq!(b["continent"]["status"], "merged", "{b}");
    assert_eq!(
        b["continent"]["continent_batch_id"],
        continent_batch.as_str()
    );
    let (_, cb) = get(&c, &format!("{continent}/v1/city-batches/{batch}")).await;
    assert_eq!(cb["continent_batch_id"], continent_batch.as_str(), "{cb}");
    assert_eq!(cb["city_id"], "tokyo");
    let forwarded = wait_for(
        "the continent to record the global node's answer",
        Duration::from_secs(10),
        || async {
            let (_, v) = get(
                &c,
                &format!("{continent}/v1/continent-batches/{continent_batch}"),
            )
            .await;
            (!v["global"].is_null()).then_some(v)
        },
    )
    .await;
    assert_eq!(forwarded["global"]["record_index"], covered["record_index"]);
    // Within one interval of the global node holding it (its answer reached the
    // continent after it was durable there), a checkpoint covered it.
    let held = forwarded["global"]["time_ms"].as_u64().unwrap();
    let merged = b["continent"]["merged_at_ms"].as_u64().unwrap();
    eprintln!(
        "merged by the continent after {} ms, held by the global node after {} ms",
        merged - sent_ms,
        held - sent_ms
    );
    assert!(
        at <= held + (interval + Duration::from_secs(1)).as_millis() as u64,
        "the checkpoint came {} ms after the global node held the batch",
        at - held
    );
    assert!(
        forwarded["city_batches"]
            .as_array()
            .unwrap()
            .contains(&Value::String(batch.clone()))
    );
    let (_, gb) = get(
        &c,
        &format!("{global}/v1/continent-batches/{continent_batch}"),
    )
    .await;
    assert_eq!(gb["signer"], "continent-asia", "{gb}");
    let (s, latest) = get(&c, &format!("{global}/v1/checkpoints/latest")).await;
    assert_eq!(s, 200, "{latest}");
    let (_, up) = get(&c, &format!("{city}/v1/uplink")).await;
    assert_eq!(up["upstream"], "continent-asia", "{up}");

    // The proof, checked against the keys pinned from the nodes' own key files.
    let global_key = fed.node("global").config.node.key_path();
    let continent_key = fed.node("continent-asia").config.node.key_path();
    let city_key = fed.node("city-tokyo").config.node.key_path();
    let saved = dir.path().join("proof.json");
    let (code, out) = run(&[
        "checkpoint",
        "prove",
        "--node",
        &global,
        "--batch",
        &batch,
        "--public-key",
        global_key.to_str().unwrap(),
        "--continent-key",
        continent_key.to_str().unwrap(),
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok: city batch"), "{out}");

    // Offline: no node is asked.
    fed.shutdown().await.unwrap();
    let keys = [
        "--public-key",
        global_key.to_str().unwrap(),
        "--continent-key",
        continent_key.to_str().unwrap(),
    ];
    let mut args = vec!["checkpoint", "verify", "--proof", saved.to_str().unwrap()];
    args.extend_from_slice(&keys);
    args.extend_from_slice(&["--batch", &batch]);
    let (code, out) = run(&args);
    assert_eq!(code, Some(0), "{out}");

    refused_when(&saved, &keys, "another root", |v| {
        flip_hex(&mut v["checkpoint"]["root"])
    });
    refused_when(&saved, &keys, "a grown size", |v| {
        let n = v["checkpoint"]["size"].as_u64().unwrap();
        v["checkpoint"]["size"] = (n + 1).into();
    });
    refused_when(&saved, &keys, "a changed audit path", |v| {
        let path = v["record_proof"].as_array_mut().unwrap();
        match path.first_mut() {
            Some(h) => flip_hex(h),
            // A tree of one record has an empty path: a hash more is a lie too.
            None => path.push(Value::String("00".repeat(32))),
        }
    });
    refused_when(&saved, &keys, "a changed record", |v| {
        let mut bytes = B64.decode(v["record"].as_str().unwrap()).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        v["record"] = B64.encode(bytes).into();
    });
    refused_when(&saved, &keys, "another entry", |v| {
        let n = v["entry_index"].as_u64().unwrap();
        v["entry_index"] = (n + 1).into();
    });
    refused_when(&saved, &keys, "another batch", |v| {
        flip_hex(&mut v["batch_id"])
    });
    refused_when(&saved, &keys, "a changed signature", |v| {
        let mut sig = B64
            .decode(v["checkpoint"]["signature"].as_str().unwrap())
            .unwrap();
        sig[100] ^= 1;
        v["checkpoint"]["signature"] = B64.encode(sig).into();
    });
    // Signed by someone else than the pinned global node.
    let wrong = [
        "--public-key",
        city_key.to_str().unwrap(),
        "--continent-key",
        continent_key.to_str().unwrap(),
    ];
    refused_when(&saved, &wrong, "another signer", |_| {});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_continent_or_global_node_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let c = client();
    let (city, continent, global) = (
        fed.city_url(),
        fed.url_of(Role::Continent),
        fed.url_of(Role::Global),
    );
    let key = SigningKey::generate().unwrap();
    let mut batches = BTreeSet::new();
    let mut nonce = 0;
    let mut send = async |n: u64, batches: &mut BTreeSet<String>| {
        for _ in 0..n {
            nonce += 1;
            let (status, body) = post(&c, &city, &signed(&key, nonce)).await;
            assert_eq!(status, 200, "{body}");
            batches.insert(body["batch_id"].as_str().unwrap().to_string());
        }
    };

    // Sent and forwarded; the continent is killed while its batch may still be open.
    send(6, &mut batches).await;
    fed.kill("continent-asia").unwrap();
    send(6, &mut batches).await;
    wait_for(
        "the city to find its continent gone",
        Duration::from_secs(10),
        || async {
            let (_, up) = get(&c, &format!("{city}/v1/uplink")).await;
            (up["waiting"].as_u64()? > 0 && !up["last_error"].is_null()).then_some(())
        },
    )
    .await;
    fed.restart("continent-asia").await.unwrap();

    // Merged by the continent, and the global node killed while it may be receiving.
    send(6, &mut batches).await;
    let last = batches.iter().next_back().unwrap().clone();
    wait_for(
        "the continent to merge",
        Duration::from_secs(15),
        || async {
            let (s, _) = get(&c, &format!("{continent}/v1/city-batches/{last}")).await;
            (s == 200).then_some(())
        },
    )
    .await;
    fed.kill("global").unwrap();
    send(6, &mut batches).await;
    fed.restart("global").await.unwrap();

    // Every batch the city stored is covered by a checkpoint, merged once.
    for b in &batches {
        wait_covered(&c, &global, b, Duration::from_secs(30)).await;
    }
    let (_, cs) = get(&c, &format!("{continent}/v1/federation/status")).await;
    assert_eq!(cs["city_batches"], batches.len() as u64, "{cs}");
    let (_, gs) = get(&c, &format!("{global}/v1/federation/status")).await;
    assert_eq!(gs["city_batches"], batches.len() as u64, "{gs}");
    for (url, what) in [(&city, "city"), (&continent, "continent")] {
        wait_for(
            &format!("the {what}'s outbox to empty"),
            Duration::from_secs(10),
            || async {
                let (_, up) = get(&c, &format!("{url}/v1/uplink")).await;
                (up["waiting"] == 0).then_some(())
            },
        )
        .await;
    }
    fed.shutdown().await.unwrap();
}

/// The `[node]` section of a lone federation-level node in `dir/data`.
fn level_node(dir: &Path, id: &str, role: &str) -> String {
    format!(
        "[node]\nid = \"{id}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n",
        dir.join("data").display()
    )
}

fn b64(key: &SigningKey) -> String {
    B64.encode(key.public_key())
}

/// A continent serving the test city (`city-tokyo`, city tokyo), knowing three light
/// nodes' keys, and a global node serving `continent-asia`, each started alone.
struct Levels {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    continent: ChildNode,
    global: ChildNode,
    city_key: SigningKey,
    lights: Vec<SigningKey>,
    continent_key: SigningKey,
}

const CITY_SEED: [u8; 32] = [11; 32];
const CONTINENT_SEED: [u8; 32] = [12; 32];
const STRANGER_SEED: [u8; 32] = [13; 32];

async fn levels() -> Levels {
    let city_key = SigningKey::from_seed(CITY_SEED).unwrap();
    let continent_key = SigningKey::from_seed(CONTINENT_SEED).unwrap();
    // A light certificate needs k + survive_losses = 5 distinct holders.
    let lights: Vec<SigningKey> = (0..5)
        .map(|i| SigningKey::from_seed([20 + i; 32]).unwrap())
        .collect();
    let (cdir, gdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut continent = level_node(cdir.path(), "continent-asia", "continent");
    continent.push_str(&format!(
        "[continent]\nwindow = \"50ms\"\n[[auth.peers]]\nid = \"city-tokyo\"\nrole = \"city\"\ncity = \"tokyo\"\npublic_key = \"{}\"\n",
        b64(&city_key)
    ));
    for (i, k) in lights.iter().enumerate() {
        continent.push_str(&format!(
            "[[storage.nodes]]\nid = \"light-{}\"\nrole = \"light\"\nurl = \"http://127.0.0.1:9\"\ncontinent = \"asia\"\npublic_key = \"{}\"\n",
            i + 1,
            b64(k)
        ));
    }
    std::fs::create_dir_all(cdir.path().join("data")).unwrap();
    continent_key
        .save(&cdir.path().join("data").join("node.key"))
        .unwrap();
    let mut global = level_node(gdir.path(), "global", "global");
    global.push_str(&format!(
        "[global]\ncheckpoint_interval = \"200ms\"\n[[auth.peers]]\nid = \"continent-asia\"\nrole = \"continent\"\ncontinent = \"asia\"\npublic_key = \"{}\"\n",
        b64(&continent_key)
    ));
    let continent = spawn_node(cdir.path(), &continent, true).await;
    let global = spawn_node(gdir.path(), &global, true).await;
    Levels {
        _dirs: (cdir, gdir),
        continent,
        global,
        city_key,
        lights,
        continent_key,
    }
}

/// What a node holds, by its status.
async fn holds(c: &reqwest::Client, url: &str) -> (Value, Value, Value) {
    let (_, s) = get(c, &format!("{url}/v1/federation/status")).await;
    (
        s["city_batches"].clone(),
        s["continent_batches"].clone(),
        s["log_records"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_or_forged_submissions_are_refused_and_change_nothing() {
    let l = levels().await;
    let c = client();
    let (continent, global) = (l.continent.url.as_str(), l.global.url.as_str());
    let city = signer("city-tokyo", SigningKey::from_seed(CITY_SEED).unwrap());
    let stranger = SigningKey::from_seed(STRANGER_SEED).unwrap();
    let before = (holds(&c, continent).await, holds(&c, global).await);

    // A light certificate whose acks verify, and the same with forged acks.
    let good_light = |seq: u64, forge: bool| {
        let h = header("tokyo", seq);
        let acks = l
            .lights
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let signer = if forge { &stranger } else { k };
                PohAck::sign(
                    signer,
                    &format!("light-{}", i + 1),
                    h.id(),
                    b"piece",
                    now_ms(),
                )
                .unwrap()
            })
            .collect();
        let cert = Certificate {
            tier: Tier::Light,
            holders: (1..=l.lights.len()).map(|i| format!("light-{i}")).collect(),
            acks,
        };
        CertifiedBatch::sign(&l.city_key, h, cert).unwrap()
    };
    let body = |batches: Vec<CertifiedBatch>| encode(&CitySubmission { batches });
    let valid = on_the_log(&l.city_key, "tokyo", 1);

    let cases: Vec<Case> = vec![
        (
            "unsigned",
            None,
            body(vec![valid.clone()]),
            401,
            "unauthenticated",
        ),
        (
            "a stranger",
            Some(signer(
                "city-osaka",
                SigningKey::from_seed(STRANGER_SEED).unwrap(),
            )),
            body(vec![valid.clone()]),
            401,
            "unknown_peer",
        ),
        (
            "the city's name with another key",
            Some(signer(
                "city-tokyo",
                SigningKey::from_seed(STRANGER_SEED).unwrap(),
            )),
            body(vec![valid.clone()]),
            401,
            "bad_signature",
        ),
        (
            "another city's batch",
            Some(city.clone()),
            body(vec![on_the_log(&l.city_key, "osaka", 1)]),
            403,
            "wrong_city",
        ),
        (
            "a certificate signed by another key",
            Some(city.clone()),
            body(vec![on_the_log(&stranger, "tokyo", 2)]),
            403,
            "bad_certificate_signature",
        ),
        (
            "forged acks",
            Some(city.clone()),
            body(vec![good_light(3, true)]),
            403,
            "invalid_certificate",
        ),
        (
            "a valid batch beside a forged one",
            Some(city.clone()),
            body(vec![valid.clone(), good_light(4, true)]),
            403,
            "invalid_certificate",
        ),
    ];
    for (what, who, body, status, want) in cases {
        let (s, v) = signed_post(
            &c,
            who.as_ref(),
            "continent-asia",
            continent,
            CITY_BATCHES_PATH,
            body,
        )
        .await;
        assert_eq!((s, code(&v)), (status, want), "{what}: {v}");
    }
    let (s, _) = get(
        &c,
        &format!(
            "{continent}/v1/city-batches/{}",
            citychain::messages::hex32(&valid.id())
        ),
    )
    .await;
    assert_eq!(s, 404, "a refused request merged nothing");

    // The global node: only its continent, only its continent's batches, as signed.
    let continent_signer = signer(
        "continent-asia",
        SigningKey::from_seed(CONTINENT_SEED).unwrap(),
    );
    let cbatch = |continent: &str, key: &SigningKey, break_root: bool| {
        let entries = vec![ContinentEntry {
            header: header("tokyo", 7),
            tier: Tier::Log,
        }];
        let mut root = entries_root(&entries);
        if break_root {
            root[0] ^= 1;
        }
        let batch = ContinentBatch {
            header: ContinentBatchHeader {
                continent: continent.into(),
                seq: 0,
                parents: vec![],
                entries_root: root,
                entry_count: 1,
                created_at_ms: now_ms(),
            },
            entries,
        };
        SignedContinentBatch::sign(key, "continent-asia", batch).unwrap()
    };
    let gbody = |b: SignedContinentBatch| encode(&ContinentSubmission { batches: vec![b] });
    let cases: Vec<Case> = vec![
        (
            "unsigned",
            None,
            gbody(cbatch("asia", &l.continent_key, false)),
            401,
            "unauthenticated",
        ),
        (
            "a city",
            Some(city.clone()),
            gbody(cbatch("asia", &l.continent_key, false)),
            401,
            "unknown_peer",
        ),
        (
            "a batch signed by another key",
            Some(continent_signer.clone()),
            gbody(cbatch("asia", &stranger, false)),
            403,
            "bad_batch_signature",
        ),
        (
            "another continent's batch",
            Some(continent_signer.clone()),
            gbody(cbatch("europe", &l.continent_key, false)),
            403,
            "wrong_continent",
        ),
        (
            "entries the root does not commit to",
            Some(continent_signer.clone()),
            gbody(cbatch("asia", &l.continent_key, true)),
            400,
            "invalid_batch",
        ),
    ];
    for (what, who, body, status, want) in cases {
        let (s, v) = signed_post(
            &c,
            who.as_ref(),
            "global",
            global,
            CONTINENT_BATCHES_PATH,
            body,
        )
        .await;
        assert_eq!((s, code(&v)), (status, want), "{what}: {v}");
    }
    assert_eq!(
        (holds(&c, continent).await, holds(&c, global).await),
        before,
        "every refusal changed nothing"
    );

    // What is genuine goes through, the same way: a valid light certificate and a log one.
    let (s, v) = signed_post(
        &c,
        Some(&city),
        "continent-asia",
        continent,
        CITY_BATCHES_PATH,
        body(vec![valid.clone(), good_light(5, false)]),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["merged"].as_array().unwrap().len(), 2, "{v}");
    let (s, v) = signed_post(
        &c,
        Some(&continent_signer),
        "global",
        global,
        CONTINENT_BATCHES_PATH,
        gbody(cbatch("asia", &l.continent_key, false)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_json_4xx() {
    let l = levels().await;
    let c = client();
    let (continent, global) = (l.continent.url.as_str(), l.global.url.as_str());
    let city = signer("city-tokyo", SigningKey::from_seed(CITY_SEED).unwrap());
    let before = holds(&c, continent).await;

    let empty = encode(&CitySubmission { batches: vec![] });
    for (what, body, status, want) in [
        (
            "bytes that are no submission",
            b"not postcard at all".to_vec(),
            400,
            "invalid_body",
        ),
        ("no batches", empty, 400, "invalid_body"),
        ("nothing", Vec::new(), 400, "invalid_body"),
    ] {
        let (s, v) = signed_post(
            &c,
            Some(&city),
            "continent-asia",
            continent,
            CITY_BATCHES_PATH,
            body,
        )
        .await;
        assert_eq!((s, code(&v)), (status, want), "{what}: {v}");
    }
    // A signed header over other bytes.
    let path = CITY_BATCHES_PATH;
    let mut req = c.post(format!("{continent}{path}"));
    for (name, value) in city
        .headers("POST", path, "continent-asia", b"signed")
        .unwrap()
    {
        req = req.header(name, value);
    }
    let resp = req.body(b"sent".to_vec()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(code(&v), "body_mismatch");
    // Too large to read at all.
    let big = vec![0u8; 9 * 1024 * 1024];
    let (s, v) = signed_post(&c, Some(&city), "continent-asia", continent, path, big).await;
    assert_eq!((s, code(&v)), (413, "payload_too_large"), "{v}");
    assert_eq!(holds(&c, continent).await, before);

    let unknown = "ab".repeat(32);
    for (url, status, want) in [
        (
            format!("{continent}/v1/city-batches/xyz"),
            400,
            "invalid_id",
        ),
        (
            format!("{continent}/v1/continent-batches/{unknown}"),
            404,
            "not_found",
        ),
        (
            format!("{global}/v1/city-batches/{unknown}"),
            404,
            "not_found",
        ),
        (
            format!("{global}/v1/checkpoints/proof"),
            400,
            "invalid_parameter",
        ),
        (
            format!("{global}/v1/checkpoints/proof?batch=zz"),
            400,
            "invalid_id",
        ),
        (
            format!("{global}/v1/checkpoints/proof?batch={unknown}&size=3"),
            400,
            "invalid_parameter",
        ),
        (
            format!("{global}/v1/checkpoints/proof?batch={unknown}&checkpoint=x"),
            400,
            "invalid_parameter",
        ),
        (
            format!("{global}/v1/checkpoints/proof?batch={unknown}"),
            404,
            "not_found",
        ),
        (
            format!("{global}/v1/checkpoints/abc"),
            400,
            "invalid_parameter",
        ),
        (format!("{global}/v1/checkpoints/99"), 404, "not_found"),
    ] {
        let (s, v) = get(&c, &url).await;
        assert_eq!((s, code(&v)), (status, want), "{url}: {v}");
    }
    // A level node without a node above it has no uplink to show.
    let (s, v) = get(&c, &format!("{continent}/v1/uplink")).await;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
}
