//! `citychain bench` against a real city process: a presigned run (the whole run signed
//! before the clock starts), a run that signs while it sends and closed loops all deliver
//! every transaction they count durably, and each report names its mode, the client's
//! cores and build and whether it presigned. Speed is not asserted here: the figures are the bench's to report.

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
async fn open_closed_and_presigned_runs_store_every_transaction_and_say_how_they_ran() {
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
        assert_eq!(report["mode"], "open", "{report}");
        assert_eq!(report["concurrency"], Value::Null, "{report}");
        assert_eq!(report["max_in_flight"], 1024, "{report}");
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
        // Every stored batch went through each stage once, timed.
        let value = |prefix: &str| -> u64 {
            m.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
        };
        let batches = value("citychain_batches_stored_total{tier=\"log\"} ");
        assert!(batches > 0, "{m}");
        for stage in ["batch", "queue", "first_tier", "index"] {
            let timed = value(&format!(
                "citychain_stage_seconds_count{{stage=\"{stage}\"}} "
            ));
            assert_eq!(timed, batches, "stage {stage}: {m}");
        }
    }

    // One request outstanding at most: a send due while one is outstanding is skipped and
    // counted, never sent on a second connection.
    let report = bench(&node.url, &["--max-in-flight", "1"]);
    assert_eq!(report["max_in_flight"], 1, "{report}");
    let sent = report["sent"].as_u64().unwrap();
    let skipped = report["errors"]["client_saturated"].as_u64().unwrap_or(0);
    assert_eq!(sent + skipped, 200, "{report}");
    assert_eq!(report["ok"].as_u64(), Some(sent), "{report}");
    assert_eq!(report["tiers"]["log"].as_u64(), Some(sent), "{report}");
    stored += sent;

    // A closed loop: four requests outstanding for 2 s, each answered before its worker
    // sends again; with --presign and a --rate ceiling it sends at most rate × duration.
    for (extra, presigned) in [
        (&["--closed-loop", "4"][..], false),
        (
            &["--closed-loop", "2", "--rate", "50", "--presign"][..],
            true,
        ),
    ] {
        let out = Command::new(binary())
            .args(["bench", "--node", &node.url, "--duration", "2s", "--json"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stdout}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["mode"], "closed", "{report}");
        let workers: u64 = extra[1].parse().unwrap();
        assert_eq!(report["concurrency"].as_u64(), Some(workers), "{report}");
        assert_eq!(report["client"]["presigned"], presigned, "{report}");
        let sent = report["sent"].as_u64().unwrap();
        assert!(sent > workers, "each worker sent again: {report}");
        assert_eq!(report["ok"].as_u64(), Some(sent), "{report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{report}");
        if presigned {
            assert!(sent <= 100, "no more than the ceiling: {report}");
        }
        stored += sent;
        let m = metrics(&client(), &node.url).await;
        let accepted: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("citychain_tx_accepted_total "))
            .map_or(0, |v| v.trim().parse().unwrap());
        assert_eq!(accepted, stored, "{m}");
    }
    // Usage: an open loop needs --rate, a presigned closed loop needs its ceiling.
    let usage = |args: &[&str]| {
        let out = Command::new(binary())
            .args(["bench", "--node", &node.url, "--duration", "1s"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = usage(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rate"), "{err}");
    let (code, err) = usage(&["--closed-loop", "2", "--presign"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("give --rate"), "{err}");
    let (code, err) = usage(&["--rate", "10", "--max-in-flight", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--max-in-flight must be at least 1"), "{err}");

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
