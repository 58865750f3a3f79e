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

/// A light node started from the example config, with its data and listen address moved
/// into `dir`; returns the config's path.
fn light_config_in(dir: &std::path::Path) -> std::path::PathBuf {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/light.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("listen = \"127.0.0.1:7101\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "data_dir = \"data/light-1\"",
            &format!("data_dir = {:?}", dir.join("data").display().to_string()),
        );
    assert!(text.contains("127.0.0.1:0") && text.contains(&*dir.to_string_lossy()));
    let path = dir.join("light.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `node --config CONFIG` with `extra` arguments and `env` until it listens, stops it
/// with SIGINT, and returns what it wrote on stderr.
fn node_log(config: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let dir = config.parent().unwrap();
    let log = dir.join("stderr.log");
    let listening = dir.join("data").join(citychain::node::LISTEN_ADDR_FILE);
    // The previous run's, which the node removes only once it runs.
    let _ = std::fs::remove_file(&listening);
    let mut child = Command::new(binary())
        .args(["node", "--config", config.to_str().unwrap()])
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !listening.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the node exited with {status} before listening: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the node stopped with {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not stop on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::read_to_string(&log).unwrap()
}

/// Every line of `log` is one JSON object with a timestamp, a level and a target.
fn assert_json_lines(log: &str) {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "a starting node logs at info level");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v.get(field).is_some(), "no {field:?} in {line}");
        }
    }
}

#[test]
fn log_format_json_writes_one_json_object_per_line_from_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = light_config_in(dir.path());
    let text = node_log(&config, &[], &[]);
    assert!(
        text.lines().any(|l| !l.trim().is_empty())
            && text.lines().all(|l| !l.trim_start().starts_with('{')),
        "text logs by default: {text}"
    );
    assert_json_lines(&node_log(&config, &["--log-format", "json"], &[]));
    assert_json_lines(&node_log(&config, &[], &[("CITYCHAIN_LOG_FORMAT", "json")]));

    let (code, _, err) = run(&["--log-format", "xml", "keygen", "--out", "k"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("possible values: text, json"), "{err}");
}

#[test]
fn bash_accepts_the_completion_script_and_it_completes_subcommands() {
    let (code, script, err) = run(&["completions", "bash"]);
    assert_eq!(code, Some(0), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("citychain.bash");
    std::fs::write(&path, script).unwrap();
    // Source it in a real bash, then ask it what `citychain lo<TAB>` completes to.
    let probe = format!(
        "source {} && complete -p citychain && COMP_WORDS=(citychain lo) COMP_CWORD=1 \
         COMP_LINE='citychain lo' COMP_POINT=12 && _citychain citychain lo citychain \
         && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("-F _citychain citychain"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "log"),
        "`lo` completes to `log`: {stdout}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, script, err) = run(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(script.contains("citychain"), "{shell}: {script}");
    }
}

#[test]
fn man_writes_a_page_per_command_that_man_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let (code, stdout, err) = run(&["man", "--out", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{err}");
    for page in [
        "citychain.1",
        "citychain-up.1",
        "citychain-bench.1",
        "citychain-log-verify.1",
    ] {
        let path = out.join(page);
        let roff = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            roff.starts_with(".ie") || roff.contains(".TH"),
            "{page} is roff: {roff}"
        );
    }
    // Rendered by man(1) itself, as a user reads it.
    let rendered = Command::new("man")
        .arg("-l")
        .arg(out.join("citychain-bench.1"))
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(text.contains("--max-in-flight"), "{text}");
    assert!(text.contains("--log-format"), "{text}");
}
