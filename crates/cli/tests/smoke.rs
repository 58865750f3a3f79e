//! The README's way in: `citychain up`, then `citychain send`, then Ctrl-C.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use citychain_harness::federation::ManifestEntry;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_send_and_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("fed");
    let mut up = Command::new(binary())
        .args(["up", "--dir"])
        .arg(&fed_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let manifest_path = fed_dir.join("federation.json");
    let client = client();
    let city = wait_for(
        "the federation to be up",
        Duration::from_secs(60),
        || async {
            let manifest: Vec<ManifestEntry> =
                serde_json::from_slice(&std::fs::read(&manifest_path).ok()?).ok()?;
            let city = manifest
                .iter()
                .find(|m| m.node_id == "city-tokyo")?
                .url
                .clone();
            let ready = client.get(format!("{city}/readyz")).send().await.ok()?;
            ready.status().is_success().then_some(city)
        },
    )
    .await;
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest.len(), 11);

    // `up` made a demo key and printed a ready-to-paste send command using it.
    let key = fed_dir.join("demo.key");
    assert!(key.exists());
    let out = Command::new(binary())
        .args(["send", "--node", &city, "--key"])
        .arg(&key)
        .args(["--to", "bob", "--amount", "1250", "--city", "tokyo"])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "send printed JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(out.status.success(), "{answer}");
    assert_eq!(answer["status"], "stored");
    assert_eq!(answer["tier"], "light");
    let (status, read) = get(
        &client,
        &format!("{city}/v1/tx/{}", answer["tx_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!((status, read["status"].as_str()), (200, Some("stored")));

    // Ctrl-C: `up` stops every node and exits 0.
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGINT) };
    let status = wait_for("up to exit", Duration::from_secs(30), || {
        let s = up.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "up exited with {status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(up.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains(&city), "up printed the city URL: {stdout}");
    assert!(stdout.contains("send --node"), "and an example: {stdout}");
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
