//! The README's way in: `citychain up` (two cities on two continents), `citychain send`
//! to each city, a global checkpoint over both and its proof checked offline, then
//! Ctrl-C; and `up`'s refusal of shapes that cannot run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use citychain_harness::federation::ManifestEntry;
use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_manifest(path: &Path) -> Option<Vec<ManifestEntry>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn url_of<'a>(manifest: &'a [ManifestEntry], id: &str) -> &'a str {
    &manifest
        .iter()
        .find(|m| m.node_id == id)
        .unwrap_or_else(|| panic!("federation.json names {id}"))
        .url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_two_cities_whose_transactions_reach_a_global_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("fed");
    let mut up = Command::new(binary());
    up.args([
        "up",
        "--log-format",
        "json",
        "--status-every",
        "1s",
        "--dir",
    ])
    .arg(&fed_dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    // A failing assertion ends the test's thread: `up` then gets Ctrl-C and stops its
    // nodes, instead of outliving the test with all of them.
    citychain_harness::die_with_parent(&mut up, libc::SIGINT);
    let mut up = up.spawn().unwrap();

    // federation.json is written once every node listens; `up` is ready when all answer.
    let manifest_path = fed_dir.join("federation.json");
    let client = client();
    let manifest = wait_for(
        "the federation to be up",
        Duration::from_secs(120),
        || async {
            let manifest = read_manifest(&manifest_path)?;
            for m in &manifest {
                let ready = client.get(format!("{}/readyz", m.url)).send().await.ok()?;
                if !ready.status().is_success() {
                    return None;
                }
            }
            Some(manifest)
        },
    )
    .await;

    // The default topology: tokyo (asia) and paris (europe), six light nodes each, two
    // full nodes, three representatives and a continent node per continent, one global
    // node.
    assert_eq!(manifest.len(), 27);
    let count = |role: &str, city: Option<&str>, continent: Option<&str>| {
        manifest
            .iter()
            .filter(|m| m.role.as_str() == role)
            .filter(|m| city.is_none() || m.city.as_deref() == city)
            .filter(|m| continent.is_none() || m.continent.as_deref() == continent)
            .count()
    };
    for (city, continent) in [("tokyo", "asia"), ("paris", "europe")] {
        assert_eq!(count("city", Some(city), Some(continent)), 1);
        assert_eq!(count("light", Some(city), Some(continent)), 6);
        assert_eq!(count("full", None, Some(continent)), 2);
        assert_eq!(count("continent", None, Some(continent)), 1);
        assert_eq!(count("representative", None, Some(continent)), 3);
    }
    assert_eq!(count("global", None, None), 1);
    let global = url_of(&manifest, "global").to_string();

    // Each city takes `citychain send` without --city or --continent: both come from the
    // city node, so each transaction names its own city's continent.
    let key = fed_dir.join("demo.key");
    assert!(key.exists());
    let key = key.to_str().unwrap();
    let mut sent = Vec::new();
    for (city, continent) in [("tokyo", "asia"), ("paris", "europe")] {
        let url = url_of(&manifest, &format!("city-{city}")).to_string();
        let (code, out, err) = run(&[
            "send", "--node", &url, "--key", key, "--to", "bob", "--amount", "1250",
        ]);
        assert_eq!(code, Some(0), "send to {city}: {out}{err}");
        let answer: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["status"], "stored", "{answer}");
        assert_eq!(answer["tier"], "light", "{answer}");
        // A transaction of another continent is refused, and says why.
        let other = if continent == "asia" {
            "europe"
        } else {
            "asia"
        };
        let (code, out, _) = run(&[
            "send",
            "--node",
            &url,
            "--key",
            key,
            "--to",
            "bob",
            "--amount",
            "1",
            "--continent",
            other,
        ]);
        assert_eq!(code, Some(1), "{city} took a transaction of {other}: {out}");
        assert!(out.contains("wrong_continent"), "{out}");
        // Each city is fenced by its example fence: a position in the other city is
        // refused, one at its own centre is stored.
        let centre = |c: &str| {
            let fence: Value =
                serde_json::from_str(citychain_harness::federation::example_fence(c).unwrap())
                    .unwrap();
            let c = &fence["properties"]["centre"];
            format!("{},{}", c[1], c[0])
        };
        let elsewhere = if city == "tokyo" { "paris" } else { "tokyo" };
        for (pop, want) in [(centre(city), Some(0)), (centre(elsewhere), Some(1))] {
            let (code, out, err) = run(&[
                "send", "--node", &url, "--key", key, "--to", "bob", "--amount", "2", "--pop", &pop,
            ]);
            assert_eq!(code, want, "{city}, pop {pop}: {out}{err}");
            if want == Some(1) {
                assert!(out.contains("pop_outside_city"), "{out}");
            }
        }
        // What `citychain tx --node` prints for this city names it and its continent.
        let (code, out, err) = run(&[
            "tx", "--node", &url, "--key", key, "--to", "bob", "--amount", "1",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let tx: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (tx["tx"]["city_id"].as_str(), tx["tx"]["continent"].as_str()),
            (Some(city), Some(continent)),
            "{tx}"
        );
        sent.push((city, continent, url, answer));
    }

    // Every level knows each batch, and a global checkpoint covers both, each through its
    // own continent.
    for (city, continent, url, answer) in &sent {
        let (s, tx) = get(
            &client,
            &format!("{url}/v1/tx/{}", answer["tx_id"].as_str().unwrap()),
        )
        .await;
        assert_eq!((s, tx["status"].as_str()), (200, Some("stored")), "{tx}");
        let batch = answer["batch_id"].as_str().unwrap().to_string();
        let covered = wait_for(
            &format!("a global checkpoint to cover {city}'s batch {batch}"),
            Duration::from_secs(30),
            || async {
                let (s, v) = get(&client, &format!("{global}/v1/city-batches/{batch}")).await;
                (s == 200 && !v["checkpoint"].is_null()).then_some(v)
            },
        )
        .await;
        assert_eq!(covered["continent"], *continent, "{covered}");
        let continent_node = url_of(&manifest, &format!("continent-{continent}"));
        let (s, cb) = get(
            &client,
            &format!("{continent_node}/v1/city-batches/{batch}"),
        )
        .await;
        assert_eq!(s, 200, "{cb}");
        assert_eq!(cb["city_id"], *city);
        assert_eq!(cb["continent_batch_id"], covered["continent_batch_id"]);
        // Its continent batch is approved by the continent's three representatives.
        let continent_batch = covered["continent_batch_id"].as_str().unwrap().to_string();
        let approval = wait_for(
            &format!("{continent}'s representatives to approve {continent_batch}"),
            Duration::from_secs(30),
            || async {
                let (s, v) = get(
                    &client,
                    &format!("{continent_node}/v1/continent-batches/{continent_batch}"),
                )
                .await;
                (s == 200 && v["approval"]["status"] == "approved").then(|| v["approval"].clone())
            },
        )
        .await;
        assert!(
            approval["stake"].as_u64().unwrap() * 3
                >= approval["total_stake"].as_u64().unwrap() * 2,
            "{approval}"
        );
        let (_, b) = get(&client, &format!("{url}/v1/batches/{batch}")).await;
        assert_eq!(b["continent"]["status"], "merged", "{b}");
        assert_eq!(
            b["continent"]["continent_batch_id"],
            covered["continent_batch_id"]
        );
        // Its light pieces are on its own city's light nodes only.
        for holder in b["holders"].as_array().unwrap() {
            let h = holder.as_str().unwrap();
            let m = manifest.iter().find(|m| m.node_id == h).unwrap();
            assert_eq!(m.city.as_deref(), Some(*city), "{h} holds {city}'s batch");
        }

        let proof = dir.path().join(format!("proof-{city}.json"));
        let (code, out, err) = run(&[
            "checkpoint",
            "prove",
            "--node",
            &global,
            "--batch",
            &batch,
            "--save",
            proof.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(0), "{out}{err}");
        let (code, out, err) = run(&[
            "checkpoint",
            "verify",
            "--proof",
            proof.to_str().unwrap(),
            "--batch",
            &batch,
        ]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.starts_with("ok"), "{out}");
    }

    // The status line counts what both cities stored (two each: one without a position,
    // one at the city centre), once something changed.
    let stdout_path = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let mut stdout = up.stdout.take().unwrap();
        let buf = stdout_path.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
    };
    wait_for(
        "a status line with both cities' transactions",
        Duration::from_secs(20),
        || {
            let text = stdout_path.lock().unwrap().clone();
            async move {
                text.lines()
                    .any(|l| {
                        l.starts_with("status:")
                            && l.contains("tokyo 2")
                            && l.contains("paris 2")
                            && l.contains("checkpoint #")
                    })
                    .then_some(())
            }
        },
    )
    .await;

    // Ctrl-C: `up` stops every node and exits 0.
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_for("up to exit", Duration::from_secs(60), || {
        let s = up.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "up exited with {status}");
    reader.join().unwrap();
    let stdout = stdout_path.lock().unwrap().clone();
    for (city, continent, url, _) in &sent {
        assert!(
            stdout.contains(url.as_str()),
            "up printed {city}'s URL: {stdout}"
        );
        assert!(
            stdout.contains(&format!("{continent} / {city}")),
            "and its place: {stdout}"
        );
    }
    assert!(stdout.contains("send --node"), "and an example: {stdout}");
    assert!(
        stdout.contains("checkpoint prove"),
        "and the proof: {stdout}"
    );
    assert!(
        stdout.contains("--pop 35.6812,139.7671") && stdout.contains("/v1/dpos/representatives"),
        "and the domain engines: {stdout}"
    );
    // `up --log-format json` starts every node with it: each log is JSON lines.
    for m in &manifest {
        let log = std::fs::read_to_string(fed_dir.join("logs").join(format!("{}.log", m.node_id)))
            .unwrap_or_else(|e| panic!("{}'s log: {e}", m.node_id));
        assert!(log.lines().next().is_some(), "{} logged nothing", m.node_id);
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}'s log line is not JSON ({e}): {line}", m.node_id));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
        }
    }
    for m in manifest {
        let pid = m.pid.unwrap() as libc::pid_t;
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(
            !alive,
            "{} (pid {pid}) still runs after up exited",
            m.node_id
        );
    }
}

#[test]
fn up_refuses_shapes_that_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("fed");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--light-per-city", "4"],
            "--light-per-city must be at least 5",
        ),
        (&["--cities", "0"], "--cities must be 1 to 24"),
        (
            &["--cities", "2", "--continents", "3"],
            "needs at least 3 cities",
        ),
        (
            &["--continents", "7", "--cities", "8"],
            "--continents must be 1 to 6",
        ),
        (
            &["--cities", "9", "--continents", "2"],
            "more than 4 per continent",
        ),
        (
            &["--full-per-continent", "0"],
            "--full-per-continent must be at least 1",
        ),
        (&["--cities", "two"], "invalid value 'two'"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["up", "--dir", fed_dir.to_str().unwrap()];
        args.extend_from_slice(flags);
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(2), "up {flags:?}: {out}{err}");
        assert!(err.contains(says), "up {flags:?} says {says:?}: {err}");
        assert!(!fed_dir.exists(), "up {flags:?} started something");
    }
    // Without a node to ask, `tx` needs the city.
    let key = dir.path().join("k.key");
    let (code, _, _) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    let (code, _, err) = run(&[
        "tx",
        "--key",
        key.to_str().unwrap(),
        "--to",
        "bob",
        "--amount",
        "1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--city is required"), "{err}");
}
