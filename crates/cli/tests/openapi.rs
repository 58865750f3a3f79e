//! The city's OpenAPI document against a real city: `GET /openapi.json` serves the
//! document the code generates, an OpenAPI 3 document listing every public route; and
//! schemathesis (`scripts/check-openapi`, which installs it on first use) sends requests
//! generated from it, valid and invalid, and finds every answer documented: no 5xx but
//! documented 503s, no undocumented status, every content type and body as documented,
//! and 405 with `Allow` for a method a path does not have.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every public route of a city, by hand: a route the document stops describing fails here
/// even if it is also dropped from the code's list of routes.
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/tx"),
    ("get", "/v1/tx/{tx_id}"),
    ("get", "/v1/batches/{batch_id}"),
    ("get", "/v1/objects/{object_id}"),
    ("get", "/v1/nodes"),
    ("get", "/v1/rewards"),
    ("get", "/v1/rewards/{node_id}"),
    ("get", "/v1/actors"),
    ("post", "/v1/actors/{name}/panic"),
    ("get", "/v1/uplink"),
    ("get", "/v1/log/head"),
    ("get", "/v1/log/status"),
    ("get", "/v1/log/proof/inclusion"),
    ("get", "/v1/log/proof/consistency"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// How long schemathesis may take, its install included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_serves_its_openapi_document_listing_every_public_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();

    let res = client()
        .get(format!("{city}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let text = res.text().await.unwrap();
    assert_eq!(
        text,
        citychain::http::openapi::json(),
        "the city serves the document its code generates"
    );
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "openapi {version}");
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in PUBLIC_ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not in the document"
        );
    }
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        PUBLIC_ROUTES.len(),
        "the document describes routes this test does not know: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(paths.keys().all(|p| !p.starts_with("/internal/")));
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_of_a_city_as_its_document_says() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();

    let (ok, output) = check_openapi(&city).await;
    assert!(ok, "scripts/check-openapi failed:\n{output}");
    // Both passes ran: the generated requests, and the reads with a real transaction's ids.
    assert_eq!(output.matches("Test cases:").count(), 2, "{output}");
    assert!(
        output.contains("the reads, with the ids of transaction"),
        "{output}"
    );
    fed.shutdown().await.unwrap();
}

/// Runs `scripts/check-openapi` against `city` (with the seeded reads), returning whether
/// it passed and everything it printed.
async fn check_openapi(city: &str) -> (bool, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = binary();
    // The binary is TARGET/debug/citychain: schemathesis goes under TARGET too.
    let target = bin.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let mut cmd = tokio::process::Command::new(root.join("scripts/check-openapi"));
    cmd.arg(city)
        .env("CARGO_TARGET_DIR", &target)
        .env("CITYCHAIN_BIN", &bin)
        .env("CHECK_OPENAPI_SEED", "1")
        .env("CHECK_OPENAPI_MAX_EXAMPLES", "10")
        .current_dir(&root)
        .kill_on_drop(true);
    let out = tokio::time::timeout(CHECK_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("scripts/check-openapi took over {CHECK_TIMEOUT:?}"))
        .expect("scripts/check-openapi runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}
