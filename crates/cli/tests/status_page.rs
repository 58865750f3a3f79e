//! The operators' views of a running federation: a city's `GET /v1/status` and its
//! `/status` page, `citychain up`'s federation page, and `citychain status --dir`.
//!
//! The JSON and the command are checked on real nodes in ordinary tests. The pages are
//! checked in a real browser, Debian's headless chromium: it loads the page, runs its
//! script against the live node, and the test reads the DOM the script built and saves
//! a screenshot. Those tests are ignored by default (chromium is a large install); run
//! them with `scripts/check-status-page`, which installs chromium when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citychain::crypto::SigningKey;
use citychain_harness::federation::ManifestEntry;
use common::*;
use serde_json::Value;

/// Every test here runs a whole federation (11 processes); one at a time on a small
/// machine.
static ONE_FEDERATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cargo target directory (the binary under test is in `TARGET/debug/`).
fn target_dir() -> PathBuf {
    binary()
        .parent()
        .and_then(Path::parent)
        .expect("the binary is in TARGET/PROFILE/")
        .to_path_buf()
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `citychain up --cities 1 --representatives 0` as a child process, stopped with Ctrl-C
/// (SIGINT) when dropped, also when the test fails.
struct Up {
    child: Child,
    dir: tempfile::TempDir,
    manifest: Vec<ManifestEntry>,
    status_url: String,
}

impl Up {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fed = dir.path().join("fed");
        let mut up = Command::new(binary());
        up.args([
            "up",
            "--cities",
            "1",
            "--representatives",
            "0",
            "--status-every",
            "0s",
            "--dir",
        ])
        .arg(&fed)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        citychain_harness::die_with_parent(&mut up, libc::SIGINT);
        let child = up.spawn().unwrap();
        let client = client();
        // The page's URL is written once every node is ready and the page is served.
        let (manifest, status_url) = wait_for(
            "up to be ready and write DIR/status_url",
            Duration::from_secs(120),
            || async {
                let url = std::fs::read_to_string(fed.join("status_url")).ok()?;
                let manifest: Vec<ManifestEntry> =
                    serde_json::from_slice(&std::fs::read(fed.join("federation.json")).ok()?)
                        .ok()?;
                for m in &manifest {
                    let ready = client.get(format!("{}/readyz", m.url)).send().await.ok()?;
                    if !ready.status().is_success() {
                        return None;
                    }
                }
                Some((manifest, url.trim().to_string()))
            },
        )
        .await;
        Up {
            child,
            dir,
            manifest,
            status_url,
        }
    }

    fn fed_dir(&self) -> PathBuf {
        self.dir.path().join("fed")
    }

    fn node(&self, id: &str) -> &ManifestEntry {
        self.manifest
            .iter()
            .find(|m| m.node_id == id)
            .unwrap_or_else(|| panic!("federation.json names {id}"))
    }

    fn status(&self, json: bool) -> (Option<i32>, String, String) {
        let dir = self.fed_dir();
        let mut args = vec!["status", "--dir", dir.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        run(&args)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one transaction to the city at `url` (tokyo, asia); its 200 answer.
async fn send_one(url: &str) -> Value {
    let key = SigningKey::generate().unwrap();
    let (status, answer) = post(&client(), url, &signed(&key, 1)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn city_status_json_shows_its_transactions_by_tier_nodes_uplink_and_actors() {
    let _one = ONE_FEDERATION.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();

    let (code, before) = get(&client, &format!("{city}/v1/status")).await;
    assert_eq!(code, 200, "{before}");
    let answer = send_one(&city).await;
    let tier = answer["tier"].as_str().unwrap();
    let (code, s) = get(&client, &format!("{city}/v1/status")).await;
    assert_eq!(code, 200, "{s}");

    assert_eq!(s["node_id"], "city-tokyo");
    assert_eq!(s["city"], "tokyo");
    assert_eq!(s["continent"], "asia");
    assert_eq!(s["ready"], true, "{s}");
    // The transaction, newest first, with the tier and batch its answer named.
    let recent = &s["recent"][0];
    assert_eq!(recent["tx_id"], answer["tx_id"], "{s}");
    assert_eq!(recent["tier"], answer["tier"]);
    assert_eq!(recent["batch_id"], answer["batch_id"]);
    // Counted once on that tier, in the index and since start.
    let count = |v: &Value, path: &[&str]| {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} is a number: {v}"))
    };
    assert_eq!(
        count(&s, &["since_start", "txs", tier]),
        count(&before, &["since_start", "txs", tier]) + 1
    );
    assert_eq!(
        count(&s, &["since_start", "batches", tier]),
        count(&before, &["since_start", "batches", tier]) + 1
    );
    assert_eq!(
        count(&s, &["stored", "txs"]),
        count(&before, &["stored", "txs"]) + 1
    );
    assert!(count(&s, &["stored", "batches"]) > count(&before, &["stored", "batches"]));
    // The storage nodes as GET /v1/nodes shows them: six light, two full, scored 0-9.
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 8, "{s}");
    for n in nodes {
        assert!(n["score"].as_u64().is_some_and(|v| v <= 9), "{n}");
        assert!(n["up"].is_boolean(), "{n}");
    }
    // The uplink to asia's continent node, and the supervision tree.
    assert_eq!(s["uplink"]["upstream"], "continent-asia", "{s}");
    assert!(s["uplink"]["waiting"].is_u64());
    let actors = s["actors"].as_array().unwrap();
    let intake = actors
        .iter()
        .find(|a| a["name"] == "intake")
        .expect("intake");
    assert_eq!(intake["status"], "running");
    assert!(intake["restarts"].is_u64());

    // The page: one self-contained HTML file that may only talk to its own node.
    let page = client.get(format!("{city}/status")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(html.contains("/v1/status"));
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(!html.contains(external), "the page loads {external}");
    }
    assert!(!html.contains("innerHTML"), "the page inserts markup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_dir_reports_the_federation_and_exits_1_when_a_node_is_killed() {
    let _one = ONE_FEDERATION.lock().await;
    let up = Up::start().await;
    let city = up.node("city-tokyo").url.clone();
    let answer = send_one(&city).await;

    // Once the transaction's batch is on the global log and a checkpoint covers it.
    let json = wait_for(
        "status --json to show the transaction up to a checkpoint",
        Duration::from_secs(60),
        || async {
            let (code, out, err) = up.status(true);
            assert_eq!(code, Some(0), "{out}\n{err}");
            let v: Value = serde_json::from_str(&out).expect("status --json prints JSON");
            (v["global"]["city_batches"].as_u64() >= Some(1)
                && v["global"]["latest_checkpoint"]["seq"].is_u64()
                && v["cities"][0]["uplink_waiting"] == 0)
                .then_some(v)
        },
    )
    .await;
    assert_eq!(json["nodes"].as_array().unwrap().len(), 11, "{json}");
    assert!(json["not_answering"].as_array().unwrap().is_empty());
    let tokyo = &json["cities"][0];
    assert_eq!(tokyo["city"], "tokyo");
    assert_eq!(tokyo["stored_txs"], 1, "{json}");
    let tier = answer["tier"].as_str().unwrap();
    assert_eq!(tokyo["txs_by_tier"][tier], 1, "{json}");
    assert_eq!(tokyo["storage_total"], 8);
    assert_eq!(json["continents"][0]["continent"], "asia");
    assert!(json["continents"][0]["city_batches"].as_u64() >= Some(1));

    // The human report names every node and the figures.
    let (code, report, _) = up.status(false);
    assert_eq!(code, Some(0), "{report}");
    for m in &up.manifest {
        assert!(report.contains(&m.node_id), "{report}");
    }
    assert!(report.contains("tokyo      tx stored 1 in"), "{report}");
    assert!(report.contains("latest checkpoint #"), "{report}");
    println!("{report}");

    // up's page serves the same collection.
    let base = up.status_url.trim_end_matches("/status").to_string();
    let (code, page_json) = get(&client(), &format!("{base}/v1/federation")).await;
    assert_eq!(code, 200);
    assert_eq!(page_json["cities"][0]["stored_txs"], 1, "{page_json}");

    // A node killed: named, and exit 1.
    let global = up.node("global");
    let pid = global.pid.expect("the global node's pid") as i32;
    // SAFETY: the pid of a node `up` started and still runs (up reaps it, not us).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (code, report, err) = wait_for(
        "status to see the global node gone",
        Duration::from_secs(20),
        || async {
            let out = up.status(false);
            (out.0 != Some(0)).then_some(out)
        },
    )
    .await;
    assert_eq!(code, Some(1), "{report}\n{err}");
    assert!(err.contains("1 of 11 nodes not answering: global"), "{err}");
    assert!(report.contains("NOT ANSWERING"), "{report}");
    println!("{report}{err}");
    let (code, out, _) = up.status(true);
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["not_answering"], serde_json::json!(["global"]));
    assert_eq!(v["global"]["answering"], false);

    // No federation there: exit 1 with the reason.
    let (code, _, err) = run(&["status", "--dir", "/nonexistent-citychain-dir"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("federation.json"), "{err}");
}

// ---- headless chromium ----

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: run scripts/check-status-page, which installs Debian's chromium (apt-get install -y chromium)",
        path.display()
    );
    path
}

/// Runs headless chromium on `url` with `extra` arguments (a fresh profile, no
/// background networking: the machine has no way out); its stdout.
async fn chromium_run(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finishes within 60 s")
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM of `url` after its script ran (virtual time: its first poll has answered).
async fn dom(url: &str) -> String {
    chromium_run(
        url,
        &[
            "--virtual-time-budget=5000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--dump-dom".into(),
        ],
    )
    .await
}

/// Waits until the DOM of `url` satisfies `ok`; the DOM.
async fn dom_where(what: &str, url: &str, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        last = dom(url).await;
        if ok(&last) {
            return last;
        }
    }
    panic!("the page never showed {what}; its last DOM:\n{last}");
}

/// Saves a 1280×1000 screenshot of `url` to `path` and checks it is a PNG of some size.
async fn screenshot(url: &str, path: &Path) {
    let _ = std::fs::remove_file(path);
    chromium_run(
        url,
        &[
            "--virtual-time-budget=5000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--window-size=1280,1000".into(),
            format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank page of that size compresses to a few KiB; a rendered one is far larger.
    assert!(png.len() > 30_000, "a {} byte screenshot", png.len());
    println!("screenshot: {} ({} bytes)", path.display(), png.len());
}

/// The text of the element whose opening tag contains `marker`, up to its closing `</tr>`.
fn row<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let start = dom.find(marker)?;
    let end = dom[start..].find("</tr>")? + start;
    Some(&dom[start..end])
}

/// Whether the city page's DOM shows transaction `tx_id` on `tier` in its recent
/// transactions, and every storage node of `nodes` (`GET /v1/nodes`) with its score and
/// state.
fn shows_tx_and_scores(dom: &str, tx_id: &str, tier: &str, nodes: &Value) -> bool {
    let tx_shown = row(dom, &format!("data-tx=\"{tx_id}\"")).is_some_and(|r| {
        r.contains(&format!(">{tx_id}<"))
            && r.contains(&format!("class=\"tier tier-{tier}\">{tier}<"))
    });
    let nodes = nodes.as_array().expect("GET /v1/nodes answers a list");
    !nodes.is_empty()
        && tx_shown
        && nodes.iter().all(|n| {
            let id = n["node_id"].as_str().unwrap();
            let state = if n["up"] == true { ">up<" } else { ">down<" };
            row(dom, &format!("data-node=\"{id}\"")).is_some_and(|r| {
                r.contains(&format!("<span class=\"v\">{}</span>", n["score"])) && r.contains(state)
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian chromium: run scripts/check-status-page"]
async fn chromium_shows_the_city_status_page() {
    let _one = ONE_FEDERATION.lock().await;
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let city = fed.city_url();
    let answer = send_one(&city).await;
    let tx_id = answer["tx_id"].as_str().unwrap().to_string();
    let tier = answer["tier"].as_str().unwrap().to_string();
    let url = format!("{city}/status");
    // Scores follow measured latency, so they may move between two reads: the page must
    // show the scores /v1/nodes answers just before it is loaded, on some load.
    let client = client();
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let shown = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed the transaction and the nodes' scores; its last DOM:\n{last}"
        );
        let (_, nodes) = get(&client, &format!("{city}/v1/nodes")).await;
        last = dom(&url).await;
        if shows_tx_and_scores(&last, &tx_id, &tier, &nodes) {
            break last;
        }
    };
    assert!(
        shown.contains("data-actor=\"intake\""),
        "the actors are listed"
    );
    assert!(shown.contains(">continent-asia<"), "the uplink is shown");
    let ready = shown
        .find("id=\"ready\"")
        .map(|at| &shown[at..(at + 60).min(shown.len())]);
    assert!(
        ready.is_some_and(|r| r.contains("class=\"pill ok\"") && r.contains(">ready<")),
        "the city is shown ready: {ready:?}"
    );

    screenshot(&url, &target_dir().join("status-page.png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian chromium: run scripts/check-status-page"]
async fn chromium_shows_the_federation_page_of_up() {
    let _one = ONE_FEDERATION.lock().await;
    chromium();
    let up = Up::start().await;
    let city = up.node("city-tokyo").url.clone();
    let answer = send_one(&city).await;
    let tier = answer["tier"].as_str().unwrap().to_string();

    // Once a checkpoint is signed over the transaction's batch, the page shows its number.
    let dom = dom_where(
        "tokyo's transaction and a checkpoint",
        &up.status_url,
        |d| {
            row(d, "data-city=\"tokyo\"").is_some_and(|r| r.contains(&format!(">{tier} 1<")))
                && d.contains("id=\"checkpoint\">#")
        },
    )
    .await;
    let tokyo = row(&dom, "data-city=\"tokyo\"").unwrap();
    assert!(tokyo.contains(">ready<"), "{tokyo}");
    let asia = row(&dom, "data-continent=\"asia\"").expect("the continent's row");
    assert!(asia.contains(">continent-asia<"), "{asia}");
    for m in &up.manifest {
        assert!(
            dom.contains(&format!("data-node=\"{}\"", m.node_id)),
            "{} is listed",
            m.node_id
        );
    }
    assert!(dom.contains("all nodes answering"));

    screenshot(
        &up.status_url,
        &target_dir().join("federation-status-page.png"),
    )
    .await;
}
