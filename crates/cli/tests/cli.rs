//! The command line as a user runs it: exit codes, `config check`, `keygen`, `tx`.

mod common;

use std::process::Command;

use common::binary;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_config_passes_config_check() {
    // The example configs live at the workspace root, two levels above this package.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = run(&["config", "check", path.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{}: {out}{err}", path.display());
            seen += 1;
        }
    }
    assert_eq!(seen, 5, "one example per role");
}

#[test]
fn config_check_reports_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[node]
id = "city-x"
role = "city"
listen = "127.0.0.1:0"
data_dir = "d"
continent = "asia"

[batcher]
max_batch_txs = 0
max_delay = "later"

[storage]
min_full_acks = 1
colour = "blue"
"#,
    )
    .unwrap();
    let (code, out, _) = run(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("city is required"), "{out}");
    assert!(out.contains("[batcher]"), "{out}");
    assert!(out.contains("unknown field `colour`"), "{out}");
}

#[test]
fn keygen_then_tx_prints_a_request_the_node_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alice.key");
    let (code, address, _) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert_eq!(address.trim().len(), 40, "a 20-byte hex address: {address}");
    let (code, _, err) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(1), "keygen never overwrites a key: {err}");

    let (code, body, err) = run(&[
        "tx",
        "--key",
        key.to_str().unwrap(),
        "--to",
        "bob",
        "--amount",
        "1250",
        "--city",
        "tokyo",
        "--payload",
        r#"{"memo":"lunch"}"#,
        "--nonce",
        "7",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let tx = citychain::messages::SignedTx::from_request_bytes(body.as_bytes()).unwrap();
    assert_eq!(tx.tx.sender, address.trim());
    assert_eq!(tx.tx.amount, 1250);
    assert_eq!(tx.tx.nonce, 7);
    assert_eq!(tx.tx.payload.unwrap()["memo"], "lunch");
    assert_eq!(tx.tx.objects, None);

    // --objects is signed into the transaction; a malformed one is refused before signing.
    let (code, body, err) = run(&[
        "tx",
        "--key",
        key.to_str().unwrap(),
        "--to",
        "bob",
        "--amount",
        "5",
        "--city",
        "tokyo",
        "--objects",
        r#"[{"id":"coin-7","kind":"owned","access":"write"}]"#,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let tx = citychain::messages::SignedTx::from_request_bytes(body.as_bytes()).unwrap();
    let objects = tx.tx.objects.unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].id, "coin-7");
    assert_eq!(objects[0].kind, citychain::messages::ObjectKind::Owned);
    let (code, _, err) = run(&[
        "tx",
        "--key",
        key.to_str().unwrap(),
        "--to",
        "bob",
        "--amount",
        "5",
        "--city",
        "tokyo",
        "--objects",
        r#"[{"id":"coin-7","kind":"borrowed","access":"write"}]"#,
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("--objects"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_failed_checks_exit_1() {
    let (code, _, _) = run(&["tx", "--amount", "5"]);
    assert_eq!(code, Some(2));
    let (code, _, _) = run(&["no-such-command"]);
    assert_eq!(code, Some(2));
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[
        "log",
        "verify",
        "--dir",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
}
