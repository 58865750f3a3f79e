//! `citychain log verify` on real log files against the heads their city signed: a changed,
//! removed, truncated (whole trailing record), reordered or rebuilt log fails with exit 1
//! and names its first bad record; only a log that is exactly what its latest signed head
//! covers passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use citychain::crypto::SigningKey;
use citychain::storage::immutable_log::{ImmutableLog, LOG_FILE, MAGIC, RecordKind};
use citychain::storage::log_notary::LogNotary;
use common::binary;

const RECORDS: usize = 8;

fn payload(i: usize) -> Vec<u8> {
    format!("batch number {i}").into_bytes()
}

/// A city's data dir: `data/log/immutable.log` with [`RECORDS`] records, a head signed
/// after every append, and the node key beside the heads.
/// Opens the log, waiting out a lock held for a moment by a child process this test binary
/// is forking for another test (a forked child shares the parent's open files, and with
/// them the log's lock, until it execs).
fn open_log(dir: &Path) -> ImmutableLog {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ImmutableLog::open(dir) {
            Ok(log) => return log,
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.to_string().contains("already open") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("opening the log in {}: {e}", dir.display()),
        }
    }
}

async fn city_data(root: &Path) -> PathBuf {
    let data = root.join("data");
    let key = SigningKey::generate().unwrap();
    key.save(&data.join("node.key")).unwrap();
    let log = Arc::new(open_log(&data.join("log")));
    let (notary, _) = LogNotary::open(&data, log.clone(), key).unwrap();
    for i in 0..RECORDS {
        log.append(RecordKind::Batch, payload(i)).await.unwrap();
        notary.sign_now().unwrap();
    }
    data
}

fn verify(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(["log", "verify"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn verify_dir(dir: &Path) -> (Option<i32>, String) {
    verify(&["--dir", dir.to_str().unwrap()])
}

/// The byte range of every record's frame.
fn frames(log_dir: &Path) -> Vec<std::ops::Range<usize>> {
    let mut at = MAGIC.len();
    ImmutableLog::read_all(log_dir)
        .unwrap()
        .iter()
        .map(|r| {
            let len = 4 + postcard_len(r);
            at += len;
            at - len..at
        })
        .collect()
}

fn postcard_len(r: &citychain::storage::immutable_log::Record) -> usize {
    // preimage fields then the hash; varints as postcard writes them.
    let varint = |mut v: u64| {
        let mut n = 1;
        while v >= 0x80 {
            v >>= 7;
            n += 1;
        }
        n
    };
    varint(r.seq)
        + 32
        + varint(r.time_ms)
        + 1
        + varint(r.payload.len() as u64)
        + r.payload.len()
        + 32
}

fn expect_bad(dir: &Path, first_bad: usize, what: &str) {
    let (code, out) = verify_dir(dir);
    assert_eq!(code, Some(1), "{what}: {out}");
    assert!(out.contains("TAMPERED"), "{what}: {out}");
    assert!(
        out.contains(&format!("first bad record {first_bad}")),
        "{what}: expected first bad record {first_bad}: {out}"
    );
}

#[tokio::test]
async fn a_log_that_matches_its_latest_signed_head_passes() {
    let root = tempfile::tempdir().unwrap();
    let data = city_data(root.path()).await;
    let (code, out) = verify_dir(&data.join("log"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("ok, {RECORDS} records")), "{out}");
    // The data dir works as well as the log dir.
    let (code, out) = verify_dir(&data);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test]
async fn changed_removed_truncated_and_reordered_records_are_named() {
    let root = tempfile::tempdir().unwrap();
    let data = city_data(root.path()).await;
    let log_dir = data.join("log");
    let file = log_dir.join(LOG_FILE);
    let good = std::fs::read(&file).unwrap();
    let f = frames(&log_dir);
    assert_eq!(f.len(), RECORDS);
    let splice = |parts: &[&[u8]]| std::fs::write(&file, parts.concat()).unwrap();

    // Changed: one byte of record 3's payload.
    let mut bad = good.clone();
    bad[f[3].end - 40] ^= 0x01;
    splice(&[&bad]);
    expect_bad(&log_dir, 3, "changed");

    // Removed: record 5 taken out of the middle.
    splice(&[&good[..f[5].start], &good[f[5].end..]]);
    expect_bad(&log_dir, 5, "removed");

    // Truncated: the whole last record cut away, leaving a log that chains soundly.
    splice(&[&good[..f[RECORDS - 1].start]]);
    assert!(
        ImmutableLog::verify(&log_dir).is_ok(),
        "the chain alone cannot tell"
    );
    expect_bad(&log_dir, RECORDS - 1, "truncated");
    let (_, out) = verify_dir(&log_dir);
    assert!(out.contains("missing"), "{out}");
    // Two whole records cut: the first missing one is named.
    splice(&[&good[..f[RECORDS - 2].start]]);
    expect_bad(&log_dir, RECORDS - 2, "truncated by two");

    // Reordered: records 2 and 3 swapped.
    splice(&[
        &good[..f[2].start],
        &good[f[3].clone()],
        &good[f[2].clone()],
        &good[f[3].end..],
    ]);
    expect_bad(&log_dir, 2, "reordered");

    // Everything back: it passes again.
    splice(&[&good]);
    assert_eq!(verify_dir(&log_dir).0, Some(0));
}

#[tokio::test]
async fn a_record_changed_with_the_chain_rebuilt_is_caught_by_the_signed_roots() {
    let root = tempfile::tempdir().unwrap();
    let data = city_data(root.path()).await;
    let log_dir = data.join("log");
    let file = log_dir.join(LOG_FILE);
    let good = std::fs::read(&file).unwrap();
    let f = frames(&log_dir);

    // Keep records 0..4 byte for byte, then let the log's own writer chain forged
    // records 4.. onto them: every hash and link is right.
    std::fs::write(&file, &good[..f[4].start]).unwrap();
    {
        let log = open_log(&log_dir);
        for i in 4..RECORDS {
            log.append(RecordKind::Batch, format!("forged {i}").into_bytes())
                .await
                .unwrap();
        }
    }
    assert!(ImmutableLog::verify(&log_dir).is_ok(), "the chain is sound");
    expect_bad(&log_dir, 4, "rebuilt chain");
}

#[tokio::test]
async fn records_past_the_latest_head_or_a_missing_or_foreign_head_fail() {
    let root = tempfile::tempdir().unwrap();
    let data = city_data(root.path()).await;
    let log_dir = data.join("log");

    // A record chained on by hand after the last head: not vouched for.
    {
        let log = open_log(&log_dir);
        log.append(RecordKind::Batch, b"by hand".to_vec())
            .await
            .unwrap();
    }
    let (code, out) = verify_dir(&log_dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("first unsigned record {RECORDS}")),
        "{out}"
    );

    // Heads signed by another key than the node's.
    let other = SigningKey::generate().unwrap();
    let other_file = root.path().join("other.key");
    other.save(&other_file).unwrap();
    let (code, out) = verify(&[
        "--dir",
        log_dir.to_str().unwrap(),
        "--public-key",
        other_file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("SIGNED HEADS UNUSABLE"), "{out}");

    // No heads at all.
    std::fs::remove_file(data.join("log-heads.json")).unwrap();
    let (code, out) = verify_dir(&log_dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no signed head"), "{out}");
}

/// A measurement, not a test (nothing is asserted about time):
/// `CITYCHAIN_MEASURE_RECORDS=100000 cargo test -p citychain-cli --test log_verify -- --ignored --nocapture`
/// builds a log of that many 1 KiB records, then times `citychain log verify` on it, a
/// head signature with its file write, and an inclusion and a consistency proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on its own"]
async fn measure_verify_and_heads_on_a_large_log() {
    use std::time::Instant;
    let n: u64 = std::env::var("CITYCHAIN_MEASURE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let key = SigningKey::generate().unwrap();
    key.save(&data.join("node.key")).unwrap();
    let log = Arc::new(open_log(&data.join("log")));
    let (notary, _) = LogNotary::open(&data, log.clone(), key).unwrap();
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let log = log.clone();
        let mut body = vec![0u8; 1024];
        body[..8].copy_from_slice(&i.to_le_bytes());
        pending.push(tokio::spawn(async move {
            log.append(RecordKind::Batch, body).await.unwrap()
        }));
        if pending.len() == 1024 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    println!("appended {n} records of 1 KiB in {:?}", started.elapsed());

    let t = Instant::now();
    let signs = 20;
    for _ in 0..signs {
        // A head per call: one more record each time.
        log.append(RecordKind::Batch, vec![1; 16]).await.unwrap();
        notary.sign_now().unwrap().unwrap();
    }
    println!(
        "sign a head and rewrite the heads file: {:?} each (append included)",
        t.elapsed() / signs
    );
    let size = log.size();
    let t = Instant::now();
    for i in 0..1000 {
        log.inclusion_proof((i * 7919) % size, size).unwrap();
    }
    println!(
        "inclusion proof at {size} records: {:?} each",
        t.elapsed() / 1000
    );
    let t = Instant::now();
    for i in 1..=1000 {
        log.consistency_proof(1 + (i * 7919) % (size - 1), size)
            .unwrap();
    }
    println!(
        "consistency proof at {size} records: {:?} each",
        t.elapsed() / 1000
    );
    drop(notary);
    drop(log);

    let bytes = std::fs::metadata(data.join("log").join(LOG_FILE))
        .unwrap()
        .len();
    let t = Instant::now();
    let (code, out) = verify_dir(&data.join("log"));
    let took = t.elapsed();
    assert_eq!(code, Some(0), "{out}");
    println!(
        "log verify: {size} records, {} MiB in {took:?} ({:.0} MiB/s)",
        bytes / (1024 * 1024),
        bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
    );
}
