//! Deployment artifacts: `citychain deploy-configs` writes a federation whose configs and
//! keys agree with each other and with the hosts it was given, and `scripts/check-deploy`
//! (kubectl kustomize, kubernetes-validate, check-jsonschema, hadolint, `config check`)
//! passes on the Dockerfile, the Compose file and the kustomizations in the repository.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use citychain::config::{Config, Role};
use citychain::crypto::SigningKey;
use citychain::crypto::vault::VaultKey;
use citychain_harness::federation::ManifestEntry;

fn run(args: &[&str]) -> Output {
    Command::new(common::binary())
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn generate(out: &Path) -> Output {
    run(&[
        "deploy-configs",
        "--out",
        out.to_str().unwrap(),
        "--cities",
        "3",
        "--host",
        "{node_id}.{role}.example",
        "--port",
        "9000",
        "--mongo-uri",
        "mongodb://db-{continent}:27017",
    ])
}

/// Every file in `dir/keys`, by name.
fn keys(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir.join("keys"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

struct Planned {
    nodes: Vec<ManifestEntry>,
    configs: BTreeMap<String, Config>,
    public_keys: BTreeMap<String, String>,
}

impl Planned {
    fn read(dir: &Path) -> Self {
        let nodes: Vec<ManifestEntry> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("federation.json")).unwrap())
                .unwrap();
        let mut configs = BTreeMap::new();
        let mut public_keys = BTreeMap::new();
        for n in &nodes {
            let path = dir.join("configs").join(format!("{}.toml", n.node_id));
            configs.insert(n.node_id.clone(), Config::load(&path).unwrap());
            let key =
                SigningKey::load(&dir.join("keys").join(format!("{}.key", n.node_id))).unwrap();
            public_keys.insert(
                n.node_id.clone(),
                base64::engine::general_purpose::STANDARD.encode(key.public_key()),
            );
        }
        Self {
            nodes,
            configs,
            public_keys,
        }
    }

    fn url(id: &str) -> String {
        let role = id.split('-').next().unwrap();
        let role = match role {
            "rep" => "representative",
            r => r,
        };
        format!("http://{id}.{role}.example:9000")
    }

    /// The ids on `id`'s allow-list, each checked against that node's own key file.
    fn peers(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.configs[id].auth.peers {
            assert_eq!(
                p.public_key, self.public_keys[&p.id],
                "{id} lists {} with a key that is not its key file's",
                p.id
            );
            out.push(p.id.clone());
        }
        out.sort();
        out
    }

    /// The storage nodes `id` writes to or checks, each checked against its key file and
    /// its host.
    fn storage(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.configs[id].storage.nodes {
            assert_eq!(s.public_key, self.public_keys[&s.id], "{id} → {}", s.id);
            assert_eq!(s.url, Self::url(&s.id), "{id} → {}", s.id);
            out.push(s.id.clone());
        }
        out.sort();
        out
    }
}

#[test]
fn deploy_configs_writes_a_federation_whose_configs_and_keys_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let fed = Planned::read(dir.path());
    // 3 × (city + 6 light) + 2 × (continent + 2 full + 3 representatives) + global.
    assert_eq!(fed.nodes.len(), 3 * 7 + 2 * 6 + 1);
    assert_eq!(keys(dir.path()).len(), fed.nodes.len());

    for n in &fed.nodes {
        // Each file passes the command an operator runs on it.
        let path = dir
            .path()
            .join("configs")
            .join(format!("{}.toml", n.node_id));
        let check = run(&["config", "check", path.to_str().unwrap()]);
        assert!(check.status.success(), "{}", text(&check));
        let c = &fed.configs[&n.node_id];
        assert_eq!(n.url, Planned::url(&n.node_id));
        assert_eq!(n.pid, None);
        assert_eq!(c.node.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.node.data_dir, PathBuf::from("/data"));
        assert_eq!(
            c.node.key_path(),
            PathBuf::from(format!("/etc/citychain/keys/{}.key", n.node_id))
        );
    }

    // Storage nodes and representatives are numbered from 0, like StatefulSet pods.
    assert_eq!(fed.peers("light-tokyo-0"), ["city-tokyo"]);
    assert_eq!(fed.peers("light-seoul-5"), ["city-seoul"]);
    assert_eq!(fed.peers("light-paris-3"), ["city-paris"]);
    assert_eq!(fed.peers("full-asia-1"), ["city-seoul", "city-tokyo"]);
    assert_eq!(fed.peers("full-europe-0"), ["city-paris"]);
    assert_eq!(fed.peers("continent-asia"), ["city-seoul", "city-tokyo"]);
    assert_eq!(fed.peers("global"), ["continent-asia", "continent-europe"]);
    assert_eq!(fed.peers("rep-europe-2"), ["continent-europe"]);
    assert!(fed.peers("city-tokyo").is_empty());

    let lights =
        |city: &str| -> Vec<String> { (0..6).map(|i| format!("light-{city}-{i}")).collect() };
    let mut tokyo = lights("tokyo");
    tokyo.extend(["full-asia-0".into(), "full-asia-1".into()]);
    tokyo.sort();
    assert_eq!(fed.storage("city-tokyo"), tokyo);
    let mut asia = [lights("tokyo"), lights("seoul")].concat();
    asia.extend(["full-asia-0".into(), "full-asia-1".into()]);
    asia.sort();
    assert_eq!(fed.storage("continent-asia"), asia);

    let uplink = |id: &str| {
        let u = fed.configs[id].uplink.as_ref().unwrap();
        (u.id.clone(), u.url.clone())
    };
    assert_eq!(
        uplink("city-paris"),
        ("continent-europe".into(), Planned::url("continent-europe"))
    );
    assert_eq!(
        uplink("continent-asia"),
        ("global".into(), Planned::url("global"))
    );
    for (i, rep) in fed.configs["continent-asia"]
        .dpos
        .representatives
        .iter()
        .enumerate()
    {
        assert_eq!(rep.id, format!("rep-asia-{i}"));
        assert_eq!(rep.url, Planned::url(&rep.id));
        assert_eq!(rep.public_key, fed.public_keys[&rep.id]);
    }

    // Each city writes its continent's MongoDB, seals for its continent's key holder
    // (whose key stays in vault/, on no node) and carries its fence inline.
    let city = &fed.configs["city-seoul"];
    assert_eq!(
        city.storage.mongo.uris,
        BTreeMap::from([("asia".to_string(), "mongodb://db-asia:27017".to_string())])
    );
    let holder = VaultKey::load(&dir.path().join("vault/asia.key")).unwrap();
    assert_eq!(
        city.vault.as_ref().unwrap().keys[0].public_key,
        holder.public().to_base64()
    );
    assert!(city.pop.fence.is_some() && city.pop.fence_file.is_none());
    assert!(fed.configs["continent-asia"].storage.mongo.uris.is_empty());
    assert_eq!(fed.configs["global"].node.role, Role::Global);
}

#[test]
fn a_second_run_keeps_every_key_and_rewrites_the_configs() {
    let dir = tempfile::tempdir().unwrap();
    assert!(generate(dir.path()).status.success());
    let before = keys(dir.path());
    let config = dir.path().join("configs/city-tokyo.toml");
    std::fs::write(&config, "not a config").unwrap();
    let again = generate(dir.path());
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(keys(dir.path()), before);
    Config::load(&config).unwrap();
}

#[test]
fn templates_that_cannot_name_every_node_apart_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for (args, says) in [
        (vec!["--host", "node.example"], "must contain {node_id}"),
        (vec!["--host", "{node}.example"], "unknown placeholder"),
        (
            vec!["--mongo-uri", "mongodb://{region}:27017"],
            "unknown placeholder",
        ),
        (vec!["--port", "0"], "--port must not be 0"),
        (vec!["--data-dir", "data"], "must be an absolute path"),
        (vec!["--cities", "0"], "--cities must be 1 to 24"),
    ] {
        let mut all = vec!["deploy-configs", "--out", out];
        all.extend(&args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
    // Nothing was written for a refused command line.
    assert!(!dir.path().join("configs").exists());
}

/// A one-connection HTTP server answering `status` to whatever it is asked.
fn answer_once(status: &'static str) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).unwrap();
        write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
    });
    (url, server)
}

#[test]
fn probe_passes_on_2xx_only() {
    let (url, server) = answer_once("200 OK");
    let o = run(&["probe", &url]);
    server.join().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (url, server) = answer_once("503 Service Unavailable");
    let o = run(&["probe", &url]);
    server.join().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("503"), "{}", text(&o));
    // Nothing listening fails too, as an unhealthy container's check must.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = run(&[
        "probe",
        &format!("http://{port}/healthz"),
        "--timeout",
        "1s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// `scripts/check-deploy` with this build's binary: every kustomization renders and is
/// valid Kubernetes, the Compose file is valid, the Dockerfile lints clean, every
/// generated config passes `config check` and the manifests run exactly those nodes.
#[test]
fn check_deploy_passes_on_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = common::binary();
    // The target directory the binary was built in: the tools' virtualenv goes there.
    let target = binary.parent().and_then(Path::parent).unwrap();
    let out = Command::new(root.join("scripts/check-deploy"))
        .env("CITYCHAIN_BIN", &binary)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("scripts/check-deploy runs");
    let said = text(&out);
    assert!(out.status.success(), "scripts/check-deploy failed:\n{said}");
    assert!(said.contains("check-deploy: ok"), "{said}");
    for line in [
        "deploy/compose/generate wrote 27 configs, 27 pass citychain config check",
        "deploy/k8s/generate wrote 27 configs, 27 pass citychain config check",
        "kubernetes: deploy/k8s/base: 45 objects rendered: ok",
        "kubernetes: deploy/k8s/overlays/two-cities: 46 objects rendered: ok",
        "compose: deploy/compose/compose.yaml: ok",
        "dockerfile: Dockerfile: ok",
    ] {
        assert!(said.contains(line), "no {line:?} in:\n{said}");
    }
}
