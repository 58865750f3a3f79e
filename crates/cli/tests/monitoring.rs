//! The monitoring kit's static checks as CI runs them: `scripts/check-monitoring --fast`
//! (Debian's promtool on `deploy/prometheus/prometheus.yml` and `alerts.yml`, and every
//! metric the alerts and the Grafana dashboard query is one the node defines). The full
//! check, a real Prometheus scraping a running `up`, is `scripts/check-monitoring` (README,
//! "Operating citychain").

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn check_monitoring_fast_passes_on_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = common::binary();
    let target = binary.parent().and_then(Path::parent).unwrap();
    let out = Command::new(root.join("scripts/check-monitoring"))
        .arg("--fast")
        .env("CITYCHAIN_BIN", &binary)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("scripts/check-monitoring runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/check-monitoring --fast failed:\n{said}"
    );
    assert!(said.contains("every check passed"), "{said}");
    assert!(!said.contains("FAIL"), "{said}");
    for check in ["promtool check config", "promtool check rules"] {
        assert!(said.contains(check), "no {check:?} in:\n{said}");
    }
}
