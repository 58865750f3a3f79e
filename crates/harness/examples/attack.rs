//! Attacks that measure a node's limits (the README's "RSS under a flood"), against any
//! running node on loopback:
//!
//! ```sh
//! # 500 connections that each declare a 2 MB batch, send all but 64 KB of it, and stop
//! cargo run --release -p citychain-harness --example attack -- \
//!     stall --node http://127.0.0.1:PORT --put --pid PID
//! # the same against a city: 60 KB transaction bodies, 50 KB sent
//! cargo run --release -p citychain-harness --example attack -- \
//!     stall --node http://127.0.0.1:PORT --declare 60000 --send 50000 --pid PID
//! # 15,000 signed transactions at once (signed first), from 60 loopback addresses
//! cargo run --release -p citychain-harness --example attack -- \
//!     burst --node http://127.0.0.1:PORT --count 15000 --peers 60 --pid PID
//! ```
//!
//! Attack connections come from `127.0.0.2` upwards (Linux routes all of 127.0.0.0/8 to
//! loopback), so an honest client on `127.0.0.1` (`citychain bench`) is another peer. With
//! `--pid`, the node's resident memory (`VmRSS`) is sampled every 20 ms: before, at its
//! peak, and after the attack.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use citychain::crypto::SigningKey;
use citychain_harness::client::{TxDraft, request_body};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Stalled bodies and bursts against a citychain node, with its memory")]
struct Args {
    #[command(subcommand)]
    attack: Attack,
}

#[derive(Subcommand, Debug)]
enum Attack {
    /// Connections whose request bodies stop arriving.
    Stall {
        /// The node's base URL, e.g. http://127.0.0.1:7101.
        #[arg(long)]
        node: String,
        #[arg(long, default_value_t = 500)]
        connections: usize,
        /// Declared Content-Length.
        #[arg(long, default_value_t = 2 * 1024 * 1024)]
        declare: usize,
        /// Bytes of the body actually sent before stopping.
        #[arg(long, default_value_t = 2 * 1024 * 1024 - 64 * 1024)]
        send: usize,
        /// Send batches to a storage node (`PUT /internal/v1/batches/{id}`) instead of
        /// transactions to a city (`POST /v1/tx`).
        #[arg(long)]
        put: bool,
        /// Loopback addresses to spread the connections over (127.0.0.2 and up).
        #[arg(long, default_value_t = 1)]
        peers: u8,
        /// The node's process id, to sample its resident memory.
        #[arg(long)]
        pid: Option<u32>,
        /// Longest wait for the node to close a stalled connection.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Pre-signed transactions, each on its own connection, all started at once.
    Burst {
        #[arg(long)]
        node: String,
        #[arg(long, default_value_t = 15_000)]
        count: usize,
        /// Loopback addresses to spread the connections over (127.0.0.2 and up).
        #[arg(long, default_value_t = 60)]
        peers: u8,
        #[arg(long)]
        pid: Option<u32>,
        /// City the transactions name.
        #[arg(long, default_value = "tokyo")]
        city: String,
        /// How long after the burst the node's memory is read again.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
}

fn peer(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("--node must be http://IP:PORT")
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Samples a process's resident memory until dropped; keeps the peak (KiB).
struct RssWatch {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            while let Some(mib) = rss_mib(pid) {
                p.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Some(Self { peak, task })
    }

    fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until the peer closes; the status of the first answer, and whether it closed
/// within `wait`.
async fn until_closed(stream: &mut TcpStream, wait: Duration) -> (Option<u16>, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut head = Vec::new();
    loop {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (status_of(&head), true),
            Ok(Ok(n)) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n]);
                }
            }
            Err(_) => return (status_of(&head), false),
        }
    }
}

fn status_of(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[allow(clippy::too_many_arguments)]
async fn stall(
    node: String,
    connections: usize,
    declare: usize,
    send: usize,
    put: bool,
    peers: u8,
    pid: Option<u32>,
    wait: Duration,
) {
    let to = addr_of(&node);
    let before = pid.and_then(rss_mib);
    let watch = RssWatch::start(pid);
    let body = Arc::new(vec![if put { 0x5A } else { b' ' }; send]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let head = if put {
                format!(
                    "PUT /internal/v1/batches/{i:064x} HTTP/1.1\r\nHost: node\r\nContent-Type: application/octet-stream\r\nContent-Length: {declare}\r\n\r\n"
                )
            } else {
                format!(
                    "POST /v1/tx HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {declare}\r\n\r\n"
                )
            };
            let body = body.clone();
            let from = peer((i % peers.max(1) as usize) as u8);
            tokio::spawn(async move {
                let mut stream = connect_from(from, to).await.ok()?;
                let _ = async {
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(&body).await
                }
                .await;
                let stopped = Instant::now();
                let (status, closed) = until_closed(&mut stream, wait).await;
                Some((status, closed.then(|| stopped.elapsed())))
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut closes = Vec::new();
    let mut open = 0;
    let mut failed_to_connect = 0;
    for t in tasks {
        match t.await.expect("attacker task") {
            None => failed_to_connect += 1,
            Some((status, closed)) => {
                *statuses
                    .entry(status.map_or("none".into(), |s| s.to_string()))
                    .or_default() += 1;
                match closed {
                    Some(d) => closes.push(d),
                    None => open += 1,
                }
            }
        }
    }
    closes.sort();
    println!(
        "stall: {connections} connections ({declare} bytes declared, {send} sent) in {:.1?}",
        started.elapsed()
    );
    println!("  answers: {statuses:?}; could not connect: {failed_to_connect}");
    println!(
        "  closed after the client stopped: p50 {:.2?}, max {:.2?}; still open after {wait:?}: {open}",
        percentile(&closes, 0.5),
        closes.last().copied().unwrap_or_default()
    );
    if let (Some(pid), Some(w)) = (pid, watch) {
        println!(
            "  node RSS: {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after",
            before.unwrap_or_default(),
            w.peak_mib(),
            rss_mib(pid).unwrap_or_default()
        );
    }
}

async fn burst(
    node: String,
    count: usize,
    peers: u8,
    pid: Option<u32>,
    city: String,
    settle: Duration,
) {
    let to = addr_of(&node);
    let key = SigningKey::generate().expect("a key");
    let signing = Instant::now();
    let bodies: Vec<Vec<u8>> = (0..count as u64)
        .map(|n| {
            let req = TxDraft::new("bob", 1 + n, city.as_str(), n)
                .sign(&key)
                .expect("signing");
            request_body(&req)
        })
        .collect();
    eprintln!("signed {count} transactions in {:.1?}", signing.elapsed());
    let before = pid.and_then(rss_mib);
    let watch = RssWatch::start(pid);
    // Every client connects and sends at once, as a real flood does; latency counts from
    // that common start.
    let start = Instant::now();
    let tasks: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let from = peer((i % peers.max(1) as usize) as u8);
            tokio::spawn(async move {
                let Ok(mut stream) = connect_from(from, to).await else {
                    return (None, start.elapsed(), Duration::ZERO);
                };
                let connected = start.elapsed();
                let mut req = format!(
                    "POST /v1/tx HTTP/1.1\r\nHost: city\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(&body);
                if stream.write_all(&req).await.is_err() {
                    return (None, start.elapsed(), connected);
                }
                let (status, _) = until_closed(&mut stream, Duration::from_secs(120)).await;
                (status, start.elapsed(), connected)
            })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::<String, Vec<Duration>>::new();
    // From the moment a connection was established to its answer: the node's own time.
    let mut after_connect = std::collections::BTreeMap::<String, Vec<Duration>>::new();
    let mut connects = Vec::new();
    for t in tasks {
        let (status, took, connected) = t.await.expect("burst task");
        let key = status.map_or("none".into(), |s| s.to_string());
        by_status.entry(key.clone()).or_default().push(took);
        after_connect
            .entry(key)
            .or_default()
            .push(took.saturating_sub(connected));
        connects.push(connected);
    }
    connects.sort();
    let elapsed = start.elapsed();
    let peak = watch.as_ref().map(RssWatch::peak_mib);
    let mut all: Vec<Duration> = by_status.values().flatten().copied().collect();
    all.sort();
    println!("burst: {count} transactions, answered in {elapsed:.1?}");
    for (status, times) in &mut by_status {
        times.sort();
        println!(
            "  {status}: {} (p50 {:.0?}, p99 {:.0?}, max {:.0?})",
            times.len(),
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.last().copied().unwrap_or_default()
        );
    }
    println!(
        "  all answers: p50 {:.0?}, p99 {:.0?}",
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    println!(
        "  connection established after: p50 {:.0?}, p99 {:.0?}, max {:.0?}",
        percentile(&connects, 0.5),
        percentile(&connects, 0.99),
        connects.last().copied().unwrap_or_default()
    );
    for (status, times) in &mut after_connect {
        times.sort();
        println!(
            "  {status} answered after its connection was up: p50 {:.0?}, p99 {:.0?}, max {:.0?}",
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.last().copied().unwrap_or_default()
        );
    }
    if let (Some(pid), Some(peak)) = (pid, peak) {
        drop(watch);
        tokio::time::sleep(settle).await;
        println!(
            "  node RSS: {:.1} MiB before, {peak:.1} MiB peak, {:.1} MiB {settle:?} after",
            before.unwrap_or_default(),
            rss_mib(pid).unwrap_or_default()
        );
    }
}

#[tokio::main]
async fn main() {
    match Args::parse().attack {
        Attack::Stall {
            node,
            connections,
            declare,
            send,
            put,
            peers,
            pid,
            wait,
        } => stall(node, connections, declare, send, put, peers, pid, wait).await,
        Attack::Burst {
            node,
            count,
            peers,
            pid,
            city,
            settle,
        } => burst(node, count, peers, pid, city, settle).await,
    }
}
