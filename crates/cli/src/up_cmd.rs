//! `citychain up`: a whole federation on loopback, its summary table, a one-line status
//! while it runs, and a status page for the whole federation (`status_page`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{Failed, Shutdown};
use crate::fed_status;
use crate::status_page::{STATUS_URL_FILE, StatusServer};
use anyhow::Context;
use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain_harness::federation::{FedNode, Federation, FederationSpec, Topology};

pub(crate) async fn up(
    dir: PathBuf,
    topology: Topology,
    status_every: Duration,
    node_args: Vec<String>,
) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("locating the citychain binary")?;
    let mut spec = FederationSpec::world(dir.clone(), binary, topology).map_err(Failed::Usage)?;
    spec.node_args = node_args;
    let continents = spec.continents();
    eprintln!(
        "starting a local federation in {}/: {} ({} on {} continent(s)), {} light node(s) per city, {} full node(s) and {} representative(s) per continent, {} processes...",
        dir.display(),
        spec.cities
            .iter()
            .map(|c| format!("{}/{}", c.city, c.continent))
            .collect::<Vec<_>>()
            .join(", "),
        plural(spec.cities.len(), "city", "cities"),
        continents.len(),
        spec.lights,
        spec.fulls,
        spec.representatives_per_continent,
        spec.node_count(),
    );
    std::fs::create_dir_all(&dir)?;
    // The demo sender key exists before any node is ready, so the printed example works
    // the moment the federation answers.
    let key = dir.join("demo.key");
    if !key.exists() {
        SigningKey::generate()?.save(&key)?;
    }
    // Caught from now on, so a Ctrl-C while the nodes start still stops them cleanly.
    let mut shutdown = Shutdown::install();
    let mut fed = Federation::launch(spec).await?;
    let page = StatusServer::start(fed.manifest()).context("serving the status page")?;
    let url_file = dir.join(STATUS_URL_FILE);
    std::fs::write(&url_file, format!("{}\n", page.url))
        .with_context(|| format!("writing {}", url_file.display()))?;
    print_summary(&fed, &dir, &key, &page.url);

    let watch = async {
        let http = fed_status::client();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_status = String::new();
        let mut next_status = tokio::time::Instant::now() + status_every;
        loop {
            tick.tick().await;
            for (id, status) in fed.exited() {
                eprintln!(
                    "node {id} exited ({status}); restart it with: citychain node --config {}",
                    fed.node(&id).config_path.display()
                );
            }
            if !status_every.is_zero() && tokio::time::Instant::now() >= next_status {
                next_status += status_every;
                // Quiet while nothing happens: a line only when something changed.
                let line = fed_status::collect(&http, &fed.manifest()).await.line();
                if line != last_status {
                    println!("{line}");
                    last_status = line;
                }
            }
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    tokio::select! {
        _ = shutdown.wait() => {}
        r = watch => r?,
    }
    eprintln!("stopping every node...");
    let _ = std::fs::remove_file(&url_file);
    page.stop().await;
    fed.shutdown().await?;
    eprintln!("stopped.");
    Ok(())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The nodes top down: the global node, then each continent with its full nodes, each of
/// its cities with their light nodes.
fn ordered(fed: &Federation) -> Vec<&FedNode> {
    let mut out: Vec<&FedNode> = fed
        .nodes
        .iter()
        .filter(|n| n.role == Role::Global)
        .collect();
    for continent in fed.spec.continents() {
        let of = |n: &&FedNode| n.continent.as_deref() == Some(&continent);
        out.extend(
            fed.nodes
                .iter()
                .filter(of)
                .filter(|n| n.role == Role::Continent),
        );
        out.extend(fed.nodes.iter().filter(of).filter(|n| n.role == Role::Full));
        out.extend(
            fed.nodes
                .iter()
                .filter(of)
                .filter(|n| n.role == Role::Representative),
        );
        for city in fed.spec.cities.iter().filter(|c| c.continent == continent) {
            let at = |n: &&FedNode| n.city.as_deref() == Some(&city.city);
            out.extend(fed.nodes.iter().filter(at).filter(|n| n.role == Role::City));
            out.extend(
                fed.nodes
                    .iter()
                    .filter(at)
                    .filter(|n| n.role == Role::Light),
            );
        }
    }
    out
}

fn print_summary(fed: &Federation, dir: &Path, key: &Path, status_url: &str) {
    let dir = dir.display();
    println!(
        "\ncitychain federation is up: {} on {}, {} nodes\n",
        plural(fed.spec.cities.len(), "city", "cities"),
        plural(fed.spec.continents().len(), "continent", "continents"),
        fed.nodes.len()
    );
    // Wide enough for the status page's URL, the longest.
    let url = status_url.len().max(24);
    println!(
        "  {:<14} {:<22} {:<url$} {:<24} PID",
        "ROLE", "NODE", "URL", "CONTINENT / CITY"
    );
    for n in ordered(fed) {
        let place = match (&n.continent, &n.city) {
            (Some(c), Some(city)) => format!("{c} / {city}"),
            (Some(c), None) => c.clone(),
            _ => "-".into(),
        };
        println!(
            "  {:<14} {:<22} {:<url$} {:<24} {}",
            n.role.as_str(),
            n.id,
            n.url,
            place,
            n.pid().unwrap_or(0)
        );
    }
    println!(
        "  {:<14} {:<22} {:<url$} {:<24} {}",
        "status page",
        "up",
        status_url,
        "the whole federation",
        std::process::id()
    );
    let global = fed.url_of(Role::Global);
    println!("\nsend a transaction to a city (its city and continent come from the node):");
    for c in &fed.spec.cities {
        println!(
            "  cargo run --release -- send --node {} --key {} --to bob --amount 1250   # {} ({})",
            fed.city_url_of(&c.city),
            key.display(),
            c.city,
            c.continent
        );
    }
    let first = &fed.spec.cities[0];
    let city = fed.city_url_of(&first.city);
    let continent = fed.continent_url(&first.continent);
    println!("\nfollow it to a global checkpoint (README: \"Follow one transaction\"):");
    let steps = [
        (
            format!("curl -s {city}/v1/tx/TX_ID"),
            ".batch_id".to_string(),
        ),
        (
            format!("curl -s {city}/v1/batches/BATCH_ID"),
            ".continent: where its continent merged it".into(),
        ),
        (
            format!("curl -s {continent}/v1/city-batches/BATCH_ID"),
            format!("{}'s continent node", first.city),
        ),
        (
            format!("curl -s {global}/v1/city-batches/BATCH_ID"),
            ".checkpoint: the first covering it".into(),
        ),
    ];
    let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (command, note) in steps {
        println!("  {command:<width$}  # {note}");
    }
    println!(
        "  cargo run --release -- checkpoint prove --node {global} --batch BATCH_ID --save proof.json"
    );
    println!("  cargo run --release -- checkpoint verify --proof proof.json");
    println!("  cargo run --release -- bench --node {city} --rate 500 --duration 10s");
    println!("\nthe domain engines (README: \"Domain engines\"):");
    let mut engines = Vec::new();
    if let Some(fence) = citychain_harness::federation::example_fence(&first.city)
        && let Ok(fence) = serde_json::from_str::<serde_json::Value>(fence)
    {
        let centre = &fence["properties"]["centre"];
        engines.push((
            format!(
                "cargo run --release -- send --node {city} --key {} --to bob --amount 5 --pop {},{}",
                key.display(),
                centre[1],
                centre[0]
            ),
            format!("inside {}'s fence; elsewhere 400 pop_outside_city", first.city),
        ));
    }
    engines.push((
        format!("curl -s {city}/v1/rewards"),
        "points per storage node for its proofs of hold".into(),
    ));
    if fed.spec.representatives_per_continent > 0 {
        engines.push((
            format!("curl -s {continent}/v1/dpos/representatives"),
            "stake and votes; .approval of each continent batch".into(),
        ));
    }
    let width = engines.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (command, note) in engines {
        println!("  {command:<width$}  # {note}");
    }
    println!(
        "\nmanifest: {dir}/federation.json   logs: {dir}/logs/   key holders' keys (open sealed batches): {dir}/vault/"
    );
    println!(
        "Prometheus targets (file_sd): {dir}/prometheus-targets.json   scrape config, alerts, dashboard: deploy/"
    );
    println!(
        "status page: {status_url} (also in {dir}/{STATUS_URL_FILE}); each city's own page is its URL + /status; in a terminal: citychain status --dir {dir}"
    );
    println!("a status line when something changed; Ctrl-C stops every node.\n");
}
