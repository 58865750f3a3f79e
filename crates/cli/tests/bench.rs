//! `citychain bench` against a real city process: a presigned run (the whole run signed
//! before the clock starts) and a run that signs while it sends both deliver every
//! scheduled transaction durably, and each report names the client's cores and build and
//! whether it presigned. Speed is not asserted here: the figures are the bench's to report.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn bench(url: &str, extra: &[&str]) -> Value {
    let out = Command::new(binary())
        .args([
            "bench",
            "--node",
            url,
            "--rate",
            "100",
            "--duration",
            "2s",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_and_live_signed_runs_store_every_transaction_and_say_how_they_ran() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[supervisor]\nchain = [\"log\"]\n",
        city_node_section(dir.path())
    );
    let node = spawn_node(dir.path(), &config, true).await;
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    let mut stored = 0;
    for (extra, presigned) in [(&["--presign"][..], true), (&[][..], false)] {
        let report = bench(&node.url, extra);
        assert_eq!(report["sent"], 200, "{report}");
        assert_eq!(report["ok"], 200, "{report}");
        assert_eq!(report["duplicates"], 0, "{report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{report}");
        assert_eq!(report["tiers"]["log"], 200, "{report}");
        let info = &report["client"];
        assert_eq!(info["presigned"], presigned, "{report}");
        assert_eq!(info["cores"].as_u64(), Some(cores), "{report}");
        let build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        assert_eq!(info["build"], build, "{report}");
        stored += 200;
        // The node agrees: every acknowledged transaction is counted as stored.
        let m = metrics(&client(), &node.url).await;
        let accepted: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("citychain_tx_accepted_total "))
            .map_or(0, |v| v.trim().parse().unwrap());
        assert_eq!(accepted, stored, "{m}");
    }

    // A presigned run too large to hold is refused before anything is signed or sent.
    let out = Command::new(binary())
        .args([
            "bench",
            "--node",
            &node.url,
            "--rate",
            "100000",
            "--duration",
            "11s",
            "--presign",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than 1000000"), "{err}");
}
