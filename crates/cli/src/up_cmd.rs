//! `citychain up`: a whole federation on loopback, its summary table, and a one-line
//! status while it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain_harness::federation::{FedNode, Federation, FederationSpec, Topology};
use serde_json::Value;

use crate::cli::{Failed, Shutdown};

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
    print_summary(&fed, &dir, &key);

    let watch = async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
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
                let line = status_line(&http, &fed).await;
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

fn print_summary(fed: &Federation, dir: &Path, key: &Path) {
    let dir = dir.display();
    println!(
        "\ncitychain federation is up: {} on {}, {} nodes\n",
        plural(fed.spec.cities.len(), "city", "cities"),
        plural(fed.spec.continents().len(), "continent", "continents"),
        fed.nodes.len()
    );
    println!(
        "  {:<14} {:<22} {:<24} {:<24} PID",
        "ROLE", "NODE", "URL", "CONTINENT / CITY"
    );
    for n in ordered(fed) {
        let place = match (&n.continent, &n.city) {
            (Some(c), Some(city)) => format!("{c} / {city}"),
            (Some(c), None) => c.clone(),
            _ => "-".into(),
        };
        println!(
            "  {:<14} {:<22} {:<24} {:<24} {}",
            n.role.as_str(),
            n.id,
            n.url,
            place,
            n.pid().unwrap_or(0)
        );
    }
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
    println!("a status line when something changed; Ctrl-C stops every node.\n");
}

/// One line: transactions stored by each city, batches waiting in the outboxes on their
/// way up, city batches on the global log and the latest checkpoint. A node that does not
/// answer is named instead of its figures.
async fn status_line(http: &reqwest::Client, fed: &Federation) -> String {
    let mut silent = Vec::new();
    let mut stored = Vec::new();
    let mut city_waiting = 0;
    for c in &fed.spec.cities {
        let url = fed.city_url_of(&c.city);
        match metric(http, &url, citychain::metrics::TX_ACCEPTED).await {
            Some(n) => stored.push(format!("{} {n}", c.city)),
            None => silent.push(format!("city-{}", c.city)),
        }
        if let Some(v) = json(http, &format!("{url}/v1/uplink")).await {
            city_waiting += v["waiting"].as_u64().unwrap_or(0);
        }
    }
    let mut continent_waiting = 0;
    let mut merged = 0;
    let mut approved = None;
    for c in fed.spec.continents() {
        match json(
            http,
            &format!("{}/v1/federation/status", fed.continent_url(&c)),
        )
        .await
        {
            Some(v) => {
                continent_waiting += v["outbox"].as_u64().unwrap_or(0);
                merged += v["city_batches"].as_u64().unwrap_or(0);
                if let Some(n) = v["dpos"]["approved_batches"].as_u64() {
                    *approved.get_or_insert(0) += n;
                }
            }
            None => silent.push(format!("continent-{c}")),
        }
    }
    let global = json(
        http,
        &format!("{}/v1/federation/status", fed.url_of(Role::Global)),
    )
    .await;
    let at_global = match &global {
        Some(v) => format!(
            "global: {} city batches, checkpoint {}",
            v["city_batches"].as_u64().unwrap_or(0),
            match v["latest_checkpoint"]["seq"].as_u64() {
                Some(seq) => format!("#{seq}"),
                None => "none yet".into(),
            }
        ),
        None => {
            silent.push("global".into());
            "global: ?".into()
        }
    };
    let mut line = format!(
        "status: {} | tx stored: {} | city batches at continents: {merged} | waiting to go up: {city_waiting} at cities, {continent_waiting} at continents | {at_global}",
        plural(fed.spec.cities.len(), "city", "cities"),
        stored.join(", "),
    );
    if let Some(n) = approved {
        line.push_str(&format!(" | continent batches approved: {n}"));
    }
    if !silent.is_empty() {
        line.push_str(&format!(" | not answering: {}", silent.join(", ")));
    }
    line
}

async fn json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The sum of metric `name` over its label sets in the node's `/metrics` (0 when it has
/// not been counted yet).
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}
