//! Per-stage CPU budget of one transaction, in-process:
//! `cargo run --release -p citychain-harness --example stage_budget [-- --batch 64 --json]`.
//!
//! Times the library functions a `fresh_tx` goes through on its way from `POST /v1/tx` to
//! the continent, on realistic data: a fresh ML-DSA-65 sender key signing transactions as
//! `citychain bench` does (about 7.2 KB of JSON each, 5.5 KB in a batch body, with
//! key and signature), batches of B
//! of them (`--batch`, default 1, 16, 64 and 256), sealed for a fresh ML-KEM-768 holder key
//! with a read key, cut into 4 + 2 pieces for six light nodes with keys of their own.
//!
//! Each stage runs until it has done at least `--min-ms` (200) of work, at least 5 times;
//! the table gives the median of one iteration (one batch of B) and that divided by B.
//! Stages are timed in CPU time of this thread (`CLOCK_THREAD_CPUTIME_ID`), so a busy
//! machine distorts less, except the index, whose write and fsync happen on the store's
//! writer thread: that one is wall time. Inputs an iteration consumes are prepared outside
//! the clock. Only the release build's numbers mean anything.
//!
//! What each stage calls, as the node does (the source that calls it):
//! - parse: `ParsedTx::parse` + `check_request` per body (`CityHandle::admit`);
//! - verify: `ParsedTx::verify` per transaction, the ML-DSA-65 check (`admit`);
//! - lookups: `CityStore::get_tx` (`admit`: a re-submission?) and `CityStore::lookup`
//!   (the Intake: id and `(sender, nonce)` pair) of a new transaction, each a redb read on
//!   this thread, measured on the index after the index stage wrote its batches;
//! - batch: `Batch::build_with_deps` with `max_parents` parents and no object edges, and
//!   the ids (`DagBatcher::close`);
//! - encode: postcard of the body, measured as `messages::encode` of the same
//!   transactions (the body encoder `Sealer` uses is private; this is the same postcard
//!   pass plus a 1-byte version); it is part of seal, so not added to the total;
//! - seal: `SealedBatch::new` (body encoding, AES-256-GCM, ML-KEM-768 capsule, read-key
//!   wrap, envelope bytes) as `close` calls it;
//! - erasure code: `Coding::encode` (k = 4, m = 2) and `Piece::to_bytes` of the six pieces
//!   (`PieceTier::store` / `write_pieces`);
//! - piece check: `Piece::from_bytes` of each piece, as each light node checks its own
//!   before storing it (six nodes' CPU together, `accept_piece`);
//! - ack sign: `PohAck::sign_piece` + encoding, one per light node (`accept_piece`);
//! - ack verify: decoding + `PohAck::verify_piece`, six on the city (`write_pieces`);
//! - index: `CityStore::record` of the `NewBatch` the Failover builds (`records` there is
//!   private: rebuilt here from public fields, outside the clock) into a real `city.redb`
//!   in a temporary directory, with the uplink outbox on, fsync included: WALL time. Each
//!   iteration records a new batch (its own seq, tx ids and nonce pairs) so none is a
//!   re-record;
//! - certificate: `CertifiedBatch::sign` + encoding, what the city signs per batch for
//!   its continent (`CityOutbox::forward`).
//!
//! Not counted: HTTP framing, actor hops, network, the light node's own piece write.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use citychain::city::admission::check_request;
use citychain::config::{BatcherConfig, LimitsConfig, ReadsConfig};
use citychain::crypto::vault::{ReadKey, VaultKey};
use citychain::crypto::{self, SigningKey};
use citychain::messages::federation::{Certificate, CertifiedBatch};
use citychain::messages::{
    self, Batch, Coding, FlagKind, NonceKey, ParsedTx, Piece, PohAck, SealedBatch, Sealer,
    SignedTx, Tier, Urgency, now_ms,
};
use citychain::storage::city_store::{BatchRecord, CityStore, NewBatch, TxRecord};
use citychain_harness::bench::BENCH_RECEIVER;
use citychain_harness::client::TxDraft;
use clap::Parser;
use serde::Serialize;
use serde_json::json;

const CITY: &str = "tokyo";
const CONTINENT: &str = "asia";
/// Least iterations per stage, however slow.
const MIN_ITERATIONS: usize = 5;
/// Most wall time per stage once `MIN_ITERATIONS` are done (keeps debug runs short).
const MAX_STAGE_WALL: Duration = Duration::from_secs(10);
/// The default erasure coding (`[storage.erasure]`): 4 data + 2 parity pieces.
const DATA_PIECES: u8 = 4;
const PARITY_PIECES: u8 = 2;

#[derive(Parser, Debug)]
#[command(about = "Per-stage CPU cost of one transaction through the city pipeline")]
struct Args {
    /// Batch size(s): repeat the flag or give a comma-separated list.
    #[arg(long = "batch", value_delimiter = ',', default_values_t = vec![1usize, 16, 64, 256])]
    batches: Vec<usize>,
    /// Least work per stage, in milliseconds of its clock.
    #[arg(long, default_value_t = 200)]
    min_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// CPU time of this thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Time elapsed since the first call.
fn wall() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// What one stage measured at one batch size.
#[derive(Serialize)]
struct Sample {
    /// "cpu" (this thread's CPU time) or "wall" (elapsed).
    clock: &'static str,
    /// Counted in the total (false for a part of another stage).
    in_total: bool,
    iterations: usize,
    /// Median of one iteration (one batch).
    per_batch_us: f64,
}

/// A sample that is a part of another stage, left out of the total.
fn part(sample: Result<Sample>) -> Result<Sample> {
    sample.map(|s| Sample {
        in_total: false,
        ..s
    })
}

/// Runs `run` on inputs from `setup` (made outside the clock) until it has used `min` of
/// `clock` and at least [`MIN_ITERATIONS`] times (or [`MAX_STAGE_WALL`] has passed), after
/// one warm-up; returns the iterations and the median.
fn measure<I, O>(
    (name, clock): (&'static str, fn() -> Duration),
    min: Duration,
    mut setup: impl FnMut(u64) -> I,
    mut run: impl FnMut(I) -> Result<O>,
) -> Result<Sample> {
    black_box(run(setup(0))?);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    let mut round = 1;
    while samples.len() < MIN_ITERATIONS || (spent < min && started.elapsed() < MAX_STAGE_WALL) {
        let input = setup(round);
        round += 1;
        let t0 = clock();
        black_box(run(input)?);
        let took = clock().saturating_sub(t0);
        spent += took;
        samples.push(took);
    }
    samples.sort_unstable();
    Ok(Sample {
        clock: name,
        in_total: true,
        iterations: samples.len(),
        per_batch_us: samples[samples.len() / 2].as_secs_f64() * 1e6,
    })
}

const CPU: (&str, fn() -> Duration) = ("cpu", thread_cpu);
const WALL: (&str, fn() -> Duration) = ("wall", wall);

/// [`measure`] in CPU time, with nothing to prepare per iteration.
fn cpu<O>(min: Duration, mut run: impl FnMut() -> Result<O>) -> Result<Sample> {
    measure(CPU, min, |_| (), |()| run())
}

/// One row of the table.
#[derive(Serialize)]
struct Stage {
    stage: &'static str,
    #[serde(flatten)]
    sample: Sample,
    per_tx_us: f64,
}

/// What one batch size measured, and the sizes of its data.
#[derive(Serialize)]
struct Measured {
    batch: usize,
    /// Average JSON request body.
    tx_request_bytes: usize,
    /// Average encoded size of one transaction in the batch body (canonical JSON, key and
    /// signature as bytes).
    tx_stored_bytes: usize,
    sealed_bytes: usize,
    piece_bytes: usize,
    stages: Vec<Stage>,
    total_per_batch_us: f64,
    total_per_tx_us: f64,
}

/// Measures every stage on a batch of `b` fresh transactions, with fresh keys: the
/// sender's, the city's, six light nodes', the continent's key holder's and the city's
/// read key.
fn measure_batch(b: usize, min: Duration) -> Result<Measured> {
    let (sender, city_key) = (SigningKey::generate()?, SigningKey::generate()?);
    let pieces_n = usize::from(DATA_PIECES + PARITY_PIECES);
    let light = (0..pieces_n)
        .map(|i| Ok((format!("light-{i}"), SigningKey::generate()?)))
        .collect::<crypto::Result<Vec<_>>>()?;
    let holders: Vec<String> = light.iter().map(|(n, _)| n.clone()).collect();
    let sealer = Sealer::new(CONTINENT, VaultKey::generate()?.public().clone())
        .with_read_key(Arc::new(ReadKey::generate()?));

    // The bodies `citychain bench` posts: fresh_tx, continent named, signed now.
    let now = now_ms();
    let bodies: Vec<Vec<u8>> = (0..b as u64)
        .map(|seq| {
            TxDraft::new(BENCH_RECEIVER, 1 + fastrand::u64(0..1_000), CITY, seq)
                .continent(CONTINENT)
                .timestamp_ms(now)
                .sign_body(&sender)
        })
        .collect::<crypto::Result<_>>()?;
    let body_bytes = bodies.iter().map(Vec::len).sum::<usize>() / b;
    let parsed: Vec<ParsedTx> = bodies
        .iter()
        .map(|body| ParsedTx::parse(body))
        .collect::<Result<_, _>>()?;
    let signed: Vec<SignedTx> = parsed
        .iter()
        .cloned()
        .map(ParsedTx::verify)
        .collect::<Result<_, _>>()?;
    let parents: Vec<_> = (0..BatcherConfig::default().max_parents as u32)
        .map(|i| crypto::hash(&i.to_be_bytes()))
        .collect();
    let build = || {
        let batch = Batch::build_with_deps(
            CITY,
            7,
            parents.clone(),
            FlagKind::FreshTx,
            &signed,
            Vec::new(),
            now_ms(),
        );
        let ids: Vec<_> = signed.iter().map(|t| t.id).collect();
        (batch, ids)
    };
    let (batch, tx_ids) = build();
    let seal = |(batch, ids): (Batch, Vec<_>)| {
        SealedBatch::new(batch, ids, Urgency::Normal, Instant::now(), &sealer)
    };
    let sealed = seal((batch.clone(), tx_ids.clone()))?;
    let coding = Coding::new(DATA_PIECES, PARITY_PIECES)?;
    let cut = || -> Result<Vec<Vec<u8>>> {
        Ok(coding
            .encode(sealed.id, &sealed.bytes)?
            .iter()
            .map(Piece::to_bytes)
            .collect())
    };
    let pieces = cut()?;
    let check = || -> Result<Vec<Piece>> {
        Ok(pieces
            .iter()
            .map(|p| Piece::from_bytes(p))
            .collect::<Result<_, _>>()?)
    };
    let checked = check()?;
    let sign_acks = || -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(checked.len());
        for (piece, (node, key)) in checked.iter().zip(&light) {
            let h = &piece.header;
            let ack = PohAck::sign_piece(key, node, sealed.id, h.piece, h.hash, now_ms())?;
            out.push(messages::encode(&ack));
        }
        Ok(out)
    };
    let ack_bytes = sign_acks()?;
    let verify_acks = || -> Result<Vec<PohAck>> {
        let mut out = Vec::with_capacity(ack_bytes.len());
        for ((bytes, piece), (node, key)) in ack_bytes.iter().zip(&checked).zip(&light) {
            let ack: PohAck = messages::decode(bytes)?;
            let (h, pk, now) = (&piece.header, key.public_key(), now_ms());
            ack.verify_piece(node, pk, &sealed.id, &h.piece, &h.hash, now)?;
            out.push(ack);
        }
        Ok(out)
    };
    let acks = verify_acks()?;

    // The index, in a city.redb of its own, opened as a federated city opens it.
    let dir = tempfile::tempdir()?;
    let store = CityStore::open_bounded(
        dir.path(),
        LimitsConfig::default().store_cache_bytes,
        true,
        ReadsConfig::default().body_cache_bytes,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new_batch = |round: u64| records(&sealed, &acks, &holders, round);

    let mut stages = Vec::new();
    let mut add = |stage, sample: Result<Sample>| -> Result<()> {
        let sample = sample?;
        let per_tx_us = sample.per_batch_us / b as f64;
        stages.push(Stage {
            stage,
            sample,
            per_tx_us,
        });
        Ok(())
    };
    let parse = ParsedTx::parse;
    let parse_all = || Ok(bodies.iter().try_for_each(|x| check_request(&parse(x)?))?);
    let parsing = cpu(min, parse_all);
    add("parse (ParsedTx::parse + check_request)", parsing)?;
    let verify_all = |ps: Vec<ParsedTx>| ps.into_iter().try_for_each(|p| p.verify().map(drop));
    let verify = measure(CPU, min, |_| parsed.clone(), |ps| Ok(verify_all(ps)?));
    add("verify (ML-DSA-65, ParsedTx::verify)", verify)?;
    add("batch (Batch::build_with_deps)", cpu(min, || Ok(build())))?;
    let encode = part(cpu(min, || Ok(messages::encode(&batch.body))));
    add("encode (postcard body; part of seal)", encode)?;
    let inputs = |_| (batch.clone(), tx_ids.clone());
    let sealing = measure(CPU, min, inputs, |input| Ok(seal(input)?));
    add("seal (SealedBatch::new: GCM+ML-KEM+wrap)", sealing)?;
    add("erasure code (4+2 encode + to_bytes)", cpu(min, cut))?;
    add("piece check x6 (Piece::from_bytes)", cpu(min, check))?;
    add("ack sign x6 (sign_piece + encode)", cpu(min, sign_acks))?;
    let verifying = cpu(min, verify_acks);
    add("ack verify x6 (decode + verify_piece)", verifying)?;
    let record = |new| Ok(rt.block_on(store.record(new))?);
    let index = measure(WALL, min, new_batch, record);
    add("index (CityStore::record, fsync) WALL", index)?;
    // Measured on the index the stage above filled, shown after verify (where it runs).
    let lookups = cpu(min, || {
        signed.iter().try_for_each(|tx| {
            black_box(store.get_tx(&tx.id)?);
            black_box(store.lookup(&tx.id, &tx.nonce_key())?);
            anyhow::Ok(())
        })
    });
    add("lookups (get_tx + lookup, redb reads)", lookups)?;
    let certificate = |_| {
        let (holders, acks) = (holders.clone(), acks.clone());
        let certificate = Certificate {
            tier: Tier::Light,
            holders,
            acks,
        };
        (sealed.batch.header.clone(), certificate)
    };
    let certify = measure(CPU, min, certificate, |(header, certificate)| {
        let signed = CertifiedBatch::sign(&city_key, header, certificate)?;
        Ok(messages::encode(&signed))
    });
    add("certificate (CertifiedBatch::sign+encode)", certify)?;
    let lookups = stages.remove(stages.len() - 2);
    stages.insert(2, lookups);
    let total = stages
        .iter()
        .filter(|s| s.sample.in_total)
        .map(|s| s.sample.per_batch_us)
        .sum::<f64>();
    Ok(Measured {
        batch: b,
        tx_request_bytes: body_bytes,
        tx_stored_bytes: messages::encode(&batch.body).len() / b,
        sealed_bytes: sealed.bytes.len(),
        piece_bytes: pieces[0].len(),
        stages,
        total_per_batch_us: total,
        total_per_tx_us: total / b as f64,
    })
}

/// The `NewBatch` the Failover records for `sealed` stored on the light tier with `acks`
/// (as its private `records` builds it), made new for `round`: its own batch seq, and tx
/// ids and nonce pairs derived from the real ones, so each round writes fresh keys.
fn records(sealed: &SealedBatch, acks: &[PohAck], holders: &[String], round: u64) -> NewBatch {
    let mut header = sealed.batch.header.clone();
    header.seq = round;
    let batch_id = header.id();
    let n = sealed.tx_ids.len() as u64;
    let tx_ids: Vec<_> = sealed
        .tx_ids
        .iter()
        .map(|id| crypto::hash(&[&id[..], &round.to_be_bytes()].concat()))
        .collect();
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: FlagKind,
    }
    let txs = tx_ids
        .iter()
        .zip(&sealed.batch.body)
        .map(|(id, stored)| {
            let flag = serde_json::from_str::<Kind>(&stored.canonical)
                .map(|k| k.kind)
                .expect("batched transactions were parsed before");
            let record = TxRecord {
                flag,
                batch_id,
                tier: Tier::Light,
                holders: holders.to_vec(),
                acks: acks.len() as u32,
                lost: false,
            };
            (*id, record)
        })
        .collect();
    let nonces = tx_ids
        .iter()
        .zip(&sealed.batch.body)
        .enumerate()
        .filter_map(|(j, (id, stored))| {
            let mut key = NonceKey::of_canonical(&stored.canonical)?;
            // Far above the real nonces, which the lookups stage asks for as new ones.
            let nonce = (1 << 40) + round * n + j as u64;
            key.0[20..].copy_from_slice(&nonce.to_be_bytes());
            Some((key, *id))
        })
        .collect();
    let batch = BatchRecord {
        header,
        tx_ids,
        tier: Tier::Light,
        holders: holders.to_vec(),
        acks: acks.to_vec(),
        lost: false,
    };
    NewBatch {
        nonces,
        read_key: sealed.read_key.as_deref().cloned(),
        sealed: Some(sealed.bytes.clone()),
        ..NewBatch::new(batch, txs, sealed.capsule.as_ref().clone())
    }
}

/// Cores and CPU model of this machine.
fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    (cores, model)
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn print_table(all: &[Measured], min_ms: u64) {
    let (cores, model) = machine();
    let profile = profile();
    println!("machine: {cores} cores, {model}; build profile: {profile}");
    if profile == "debug" {
        println!("(debug build: the numbers only show the shape; measure with --release)");
    }
    println!(
        "median of >= {min_ms} ms of work per stage (>= {MIN_ITERATIONS} iterations); cpu = this thread's CPU time, wall = elapsed"
    );
    for m in all {
        println!(
            "B={}: {} B per JSON request, {} B per tx in the batch body, {} B sealed, {} B per piece",
            m.batch, m.tx_request_bytes, m.tx_stored_bytes, m.sealed_bytes, m.piece_bytes
        );
    }
    let row = |name: &str, clock: &str| format!("{name:<42} {clock:>5}");
    let (mut head, mut sub) = (row("stage", "clock"), row("", ""));
    for m in all {
        head.push_str(&format!(" | {:>21}", format!("B={}", m.batch)));
        sub.push_str(&format!(" | {:>11} {:>9}", "batch µs", "tx µs"));
    }
    println!("{head}\n{sub}");
    let Some(first) = all.first() else { return };
    for (i, stage) in first.stages.iter().enumerate() {
        // A part of another stage is indented under it.
        let indent = if stage.sample.in_total { "" } else { "  " };
        let mut line = row(&format!("{indent}{}", stage.stage), stage.sample.clock);
        for s in all.iter().map(|m| &m.stages[i]) {
            line.push_str(&format!(
                " | {:>11.1} {:>9.1}",
                s.sample.per_batch_us, s.per_tx_us
            ));
        }
        println!("{line}");
    }
    let mut line = row("TOTAL (without the encode part)", "");
    for m in all {
        line.push_str(&format!(
            " | {:>11.1} {:>9.1}",
            m.total_per_batch_us, m.total_per_tx_us
        ));
    }
    println!("{line}");
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.batches.contains(&0) {
        return Err(anyhow!("--batch must be at least 1"));
    }
    let min = Duration::from_millis(args.min_ms);
    let mut all = Vec::new();
    for &b in &args.batches {
        if !args.json {
            eprintln!("measuring B={b} ...");
        }
        all.push(measure_batch(b, min).with_context(|| format!("batch size {b}"))?);
    }
    if args.json {
        let (cores, model) = machine();
        let report = json!({
            "machine": { "cores": cores, "cpu": model },
            "profile": profile(),
            "min_ms_per_stage": args.min_ms,
            "batches": all,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&all, args.min_ms);
    }
    Ok(())
}
