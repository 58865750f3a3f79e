//! The short fault-injection run: nodes — the city included — are SIGKILLed and restarted
//! under signed load, and every transaction that got a 200 must still be stored where its
//! status says. (`scripts/fault-inject` runs the long version.)

use std::path::PathBuf;
use std::time::Duration;

use citychain_harness::chaos::{self, ChaosSpec};

/// Seed 10 plans, in this order: a city kill, a light outage (every light node), one light
/// node, a storage blackout (every light and full node), a full node — so in 15 s the
/// promises land on the light, full and log tiers and each kind is verified.
const SEED: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promise_survives_nodes_being_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ChaosSpec {
        rate: 40,
        ..ChaosSpec::new(
            SEED,
            Duration::from_secs(15),
            dir.path().to_path_buf(),
            PathBuf::from(env!("CARGO_BIN_EXE_citychain")),
        )
    };
    let report = chaos::run(spec).await.expect("the chaos run completes");
    let human = report.render_human();
    println!("{human}");
    assert!(report.promised > 0, "no transaction was promised:\n{human}");
    assert!(
        report.faults.len() >= 3,
        "fewer than 3 faults were injected:\n{human}"
    );
    assert!(
        report.missing.is_empty(),
        "{} promised transactions are missing:\n{human}",
        report.missing.len()
    );
    assert!(report.ok(), "the chaos run failed:\n{human}");
}
