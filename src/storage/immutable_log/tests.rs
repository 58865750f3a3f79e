//! The log's promises: chained, durable, group-committed, and any damage caught.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::format::{FRAME_HEADER_LEN, check_record, hash_preimage, record_hash};
use super::*;
use crate::crypto;

fn payload(i: usize) -> Vec<u8> {
    format!("batch number {i}").into_bytes()
}

/// A log in a fresh temp dir holding `n` records with `payload(i)`.
async fn log_with(n: usize) -> (tempfile::TempDir, ImmutableLog, Vec<AppendReceipt>) {
    let dir = tempfile::tempdir().unwrap();
    let log = ImmutableLog::open(dir.path()).unwrap();
    let mut receipts = Vec::new();
    for i in 0..n {
        receipts.push(log.append(RecordKind::Batch, payload(i)).await.unwrap());
    }
    (dir, log, receipts)
}

fn log_bytes(dir: &Path) -> Vec<u8> {
    fs::read(dir.join(LOG_FILE)).unwrap()
}

fn write_log(dir: &Path, bytes: &[u8]) {
    fs::write(dir.join(LOG_FILE), bytes).unwrap();
}

fn corrupt_error(result: Result<impl fmt::Debug>) -> VerifyError {
    match result {
        Err(LogError::Corrupt(e)) => e,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Waits, without sleeping, until `n` appends are queued for the writer thread.
async fn wait_queued(log: &ImmutableLog, n: usize) {
    while log.queued() < n {
        tokio::task::yield_now().await;
    }
}

#[test]
fn the_log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ImmutableLog>();
}

#[test]
fn record_body_is_hash_preimage_then_hash() {
    let preimage = hash_preimage(7, &[9; 32], 1234, RecordKind::Checkpoint, &[1, 2, 3]);
    let hash = record_hash(&preimage);
    let record = Record {
        seq: 7,
        prev_hash: [9; 32],
        time_ms: 1234,
        kind: RecordKind::Checkpoint,
        payload: vec![1, 2, 3],
        hash,
    };
    let body = postcard::to_stdvec(&record).unwrap();
    assert_eq!(body, [preimage.as_slice(), &hash].concat());
    assert_eq!(check_record(&body, 7, &[9; 32]), Ok(record));
    let expected = crypto::hash(&crypto::tagged(
        "citychain/log/v1",
        &postcard::to_stdvec(&(
            7u64,
            &[9u8; 32],
            1234u64,
            RecordKind::Checkpoint,
            &vec![1u8, 2, 3],
        ))
        .unwrap(),
    ));
    assert_eq!(hash, expected);
}

#[tokio::test]
async fn appends_chain_and_reopen_continues_the_chain() {
    let (dir, log, receipts) = log_with(3).await;
    assert_eq!(
        receipts.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(log.head(), (3, receipts[2].hash));
    drop(log);

    let log = ImmutableLog::open(dir.path()).unwrap();
    assert_eq!(log.head(), (3, receipts[2].hash));
    let next = log
        .append(RecordKind::Checkpoint, b"root".to_vec())
        .await
        .unwrap();
    assert_eq!(next.seq, 3);
    assert_eq!(log.head(), (4, next.hash));
    drop(log);

    let records = ImmutableLog::read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[0].prev_hash, [0; 32]);
    for (i, pair) in records.windows(2).enumerate() {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "chain broken after record {i}"
        );
        assert!(pair[1].time_ms >= pair[0].time_ms);
    }
    assert_eq!(records[3].seq, 3);
    assert_eq!(records[3].prev_hash, receipts[2].hash);
    assert_eq!(records[3].hash, next.hash);
    assert_eq!(records[3].kind, RecordKind::Checkpoint);
}

#[tokio::test]
async fn verify_passes_on_a_good_log_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = ImmutableLog::open(dir.path()).unwrap();
    let empty = ImmutableLog::verify(dir.path()).unwrap();
    assert_eq!(
        empty,
        VerifyReport {
            records: 0,
            bytes: MAGIC.len() as u64,
            head_hash: [0; 32]
        }
    );
    let mut last = None;
    for i in 0..5 {
        last = Some(log.append(RecordKind::Batch, payload(i)).await.unwrap());
    }
    let report = ImmutableLog::verify(dir.path()).unwrap();
    assert_eq!(report.records, 5);
    assert_eq!(report.head_hash, last.unwrap().hash);
    assert_eq!(report.bytes, log_bytes(dir.path()).len() as u64);
}

#[tokio::test]
async fn read_all_returns_payloads_in_order() {
    let (dir, log, receipts) = log_with(10).await;
    drop(log);
    let records = ImmutableLog::read_all(dir.path()).unwrap();
    let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, (0..10).map(payload).collect::<Vec<_>>());
    let hashes: Vec<_> = records.iter().map(|r| r.hash).collect();
    assert_eq!(hashes, receipts.iter().map(|r| r.hash).collect::<Vec<_>>());
}

/// The product promise: any single changed byte is caught by `verify`.
#[tokio::test]
async fn flipping_any_byte_makes_verify_fail() {
    let (dir, log, _) = log_with(3).await;
    drop(log);
    let good = log_bytes(dir.path());
    ImmutableLog::verify(dir.path()).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let mut undetected = Vec::new();
    for offset in 0..good.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[offset] ^= mask;
            write_log(scratch.path(), &bad);
            match ImmutableLog::verify(scratch.path()) {
                Err(LogError::Corrupt(e)) => {
                    assert!(e.offset <= offset as u64, "{e} reported past byte {offset}")
                }
                other => undetected.push((offset, mask, format!("{other:?}"))),
            }
        }
    }
    assert!(undetected.is_empty(), "undetected flips: {undetected:?}");
}

/// A frame holding a well-formed record with a correct hash of its own contents.
fn frame(seq: u64, prev_hash: &Hash32, payload: &[u8]) -> Vec<u8> {
    let preimage = hash_preimage(seq, prev_hash, 1, RecordKind::Batch, payload);
    let hash = record_hash(&preimage);
    let body = [preimage.as_slice(), &hash].concat();
    [&(body.len() as u32).to_le_bytes()[..], &body].concat()
}

#[tokio::test]
async fn self_consistent_records_that_break_the_chain_are_caught() {
    let (dir, log, receipts) = log_with(3).await;
    drop(log);
    let good = log_bytes(dir.path());
    let records = ImmutableLog::read_all(dir.path()).unwrap();
    let first_frame = MAGIC.len() + 4 + postcard::to_stdvec(&records[0]).unwrap().len();
    let second_frame = first_frame + 4 + postcard::to_stdvec(&records[1]).unwrap().len();

    // Record 1 replaced by a record that hashes correctly but hangs off nothing.
    let forged = [
        &good[..first_frame],
        &frame(1, &[7; 32], b"forged"),
        &good[second_frame..],
    ]
    .concat();
    write_log(dir.path(), &forged);
    let e = corrupt_error(ImmutableLog::verify(dir.path()));
    assert_eq!((e.seq, e.offset), (1, first_frame as u64));
    assert!(e.reason.contains("prev_hash"), "{e}");

    // Record 1 removed: record 2 follows record 0.
    write_log(
        dir.path(),
        &[&good[..first_frame], &good[second_frame..]].concat(),
    );
    let e = corrupt_error(ImmutableLog::verify(dir.path()));
    assert_eq!((e.seq, e.offset), (1, first_frame as u64));
    assert!(e.reason.contains("sequence"), "{e}");

    // A correctly chained record appended by hand is accepted: the checks are the
    // chain, not some property of how our writer happened to produce bytes.
    let extended = [&good[..], &frame(3, &receipts[2].hash, b"by hand")].concat();
    write_log(dir.path(), &extended);
    assert_eq!(ImmutableLog::verify(dir.path()).unwrap().records, 4);
}

#[tokio::test]
async fn torn_tail_is_reported_by_verify_and_cut_by_open() {
    let (dir, log, receipts) = log_with(3).await;
    drop(log);
    let good = log_bytes(dir.path());
    let last_frame = good.len() - (FRAME_HEADER_LEN as usize + postcard_len(&dir));

    // Every cut inside the final frame, header included, is a torn write.
    for cut in last_frame + 1..good.len() {
        let scratch = tempfile::tempdir().unwrap();
        write_log(scratch.path(), &good[..cut]);

        let e = corrupt_error(ImmutableLog::verify(scratch.path()));
        assert!(e.reason.contains("truncated"), "cut at {cut}: {e}");
        assert_eq!((e.seq, e.offset), (2, last_frame as u64));
        assert_eq!(ImmutableLog::read_all(scratch.path()).unwrap().len(), 2);

        let log = ImmutableLog::open(scratch.path()).unwrap();
        assert_eq!(log.head(), (2, receipts[1].hash), "cut at {cut}");
        assert_eq!(log_bytes(scratch.path()), good[..last_frame]);
        let again = log.append(RecordKind::Batch, payload(9)).await.unwrap();
        assert_eq!(again.seq, 2);
        drop(log);
        let report = ImmutableLog::verify(scratch.path()).unwrap();
        assert_eq!((report.records, report.head_hash), (3, again.hash));
    }
}

/// Body length of the last record of the log in `dir`.
fn postcard_len(dir: &tempfile::TempDir) -> usize {
    let last = ImmutableLog::read_all(dir.path()).unwrap().pop().unwrap();
    postcard::to_stdvec(&last).unwrap().len()
}

#[tokio::test]
async fn torn_header_of_a_new_log_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &MAGIC[..5]);
    let e = corrupt_error(ImmutableLog::verify(dir.path()));
    assert!(e.reason.contains("truncated"), "{e}");
    let log = ImmutableLog::open(dir.path()).unwrap();
    assert_eq!(log.head(), (0, [0; 32]));
    log.append(RecordKind::Batch, payload(0)).await.unwrap();
    drop(log);
    assert_eq!(ImmutableLog::verify(dir.path()).unwrap().records, 1);
}

#[tokio::test]
async fn zero_filled_tail_is_treated_as_torn() {
    let (dir, log, receipts) = log_with(2).await;
    drop(log);
    let good = log_bytes(dir.path());
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 100]);
    write_log(dir.path(), &padded);

    let e = corrupt_error(ImmutableLog::verify(dir.path()));
    assert!(e.reason.contains("truncated"), "{e}");
    let log = ImmutableLog::open(dir.path()).unwrap();
    assert_eq!(log.head(), (2, receipts[1].hash));
    drop(log);
    assert_eq!(log_bytes(dir.path()), good);
}

#[tokio::test]
async fn open_refuses_damage_that_is_not_a_torn_tail() {
    let (dir, log, _) = log_with(3).await;
    drop(log);
    let good = log_bytes(dir.path());
    let body_len = postcard_len(&dir);
    let cases = [
        ("a byte inside the first record", MAGIC.len() + 4 + 40),
        ("payload byte of the last record", good.len() - 40),
        ("hash byte of the last record", good.len() - 1),
        ("magic", 2),
    ];
    for (what, offset) in cases {
        let mut bad = good.clone();
        bad[offset] ^= 0x55;
        write_log(dir.path(), &bad);
        let e = corrupt_error(ImmutableLog::open(dir.path()));
        assert!(e.offset <= offset as u64, "{what}: {e}");
        assert_eq!(log_bytes(dir.path()), bad, "{what}: open must not repair");
    }

    // Absurd length on the final frame: not something a torn write produces.
    let mut bad = good.clone();
    let last_frame = good.len() - 4 - body_len;
    bad[last_frame + 3] = 0x10;
    write_log(dir.path(), &bad);
    let e = corrupt_error(ImmutableLog::open(dir.path()));
    assert!(e.reason.contains("exceeds"), "{e}");

    // Garbage after the last record.
    let mut bad = good.clone();
    bad.extend_from_slice(&[7; 3]);
    bad.extend_from_slice(&good[MAGIC.len()..]);
    write_log(dir.path(), &bad);
    corrupt_error(ImmutableLog::open(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_distinct_consecutive_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(RecordKind::Batch, payload(i)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    assert_eq!(log.head().0, 200);
    assert!(log.fsync_count() <= 200);
    let report = ImmutableLog::verify(dir.path()).unwrap();
    assert_eq!((report.records, report.head_hash), log.head());
}

#[tokio::test]
async fn appends_arriving_during_a_write_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
    // Hold the writer as if its fsync were slow, and let 200 appends pile up.
    let gate = log.writer.gate().lock().await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(RecordKind::Batch, payload(i)).await })
        })
        .collect();
    // The writer holds the first request at the gate, or has not taken it yet.
    wait_queued(&log, 199).await;
    drop(gate);

    let mut by_seq = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        by_seq.push((task.await.unwrap().unwrap().seq, i));
    }
    by_seq.sort_unstable();
    assert_eq!(
        by_seq.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
    let fsyncs = log.fsync_count();
    assert!((1..=2).contains(&fsyncs), "{fsyncs} fsyncs for 200 appends");

    let records = ImmutableLog::read_all(dir.path()).unwrap();
    for (seq, task) in by_seq {
        assert_eq!(records[seq as usize].payload, payload(task));
    }
    assert_eq!(ImmutableLog::verify(dir.path()).unwrap().records, 200);
}

#[tokio::test]
async fn failed_fsync_fails_the_whole_group_and_closes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
    let first = log.append(RecordKind::Batch, payload(0)).await.unwrap();

    let gate = log.writer.gate().lock().await;
    let tasks: Vec<_> = (1..=5)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(RecordKind::Batch, payload(i)).await })
        })
        .collect();
    wait_queued(&log, 4).await;
    log.shared
        .hooks
        .fail_next_sync
        .store(true, Ordering::SeqCst);
    drop(gate);

    let mut failed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Err(LogError::Io(_)) | Err(LogError::Closed) => failed += 1,
            Ok(receipt) => panic!("acknowledged {receipt:?} after a failed fsync"),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(failed, 5);
    assert_eq!(
        log.head(),
        (1, first.hash),
        "head moved past what is on disk"
    );
    assert!(matches!(
        log.append(RecordKind::Batch, payload(6)).await,
        Err(LogError::Closed)
    ));
    drop(log);

    // The bytes were written before the fsync "failed": reopening finds a sound log.
    let log = ImmutableLog::open(dir.path()).unwrap();
    assert!(log.head().0 >= 1);
    drop(log);
    ImmutableLog::verify(dir.path()).unwrap();
}

#[tokio::test]
async fn a_lone_failed_append_gets_the_io_error() {
    let (_dir, log, _) = log_with(1).await;
    log.shared
        .hooks
        .fail_next_sync
        .store(true, Ordering::SeqCst);
    let result = log.append(RecordKind::Batch, payload(1)).await;
    assert!(matches!(result, Err(LogError::Io(_))), "{result:?}");
    assert_eq!(log.head().0, 1);
}

#[tokio::test]
async fn closed_log_refuses_appends() {
    let (_dir, log, _) = log_with(1).await;
    log.close();
    assert!(matches!(
        log.append(RecordKind::Batch, payload(1)).await,
        Err(LogError::Closed)
    ));
    assert_eq!(log.head().0, 1);
}

#[tokio::test]
async fn oversized_payload_is_refused_without_using_a_seq() {
    let (_dir, log, _) = log_with(1).await;
    let result = log
        .append(RecordKind::Batch, vec![0; MAX_PAYLOAD_LEN + 1])
        .await;
    match result {
        Err(LogError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(
        log.append(RecordKind::Batch, payload(1)).await.unwrap().seq,
        1
    );
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let (dir, log, _) = log_with(1).await;
    match ImmutableLog::open(dir.path()) {
        Err(LogError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
        other => panic!("expected the lock to refuse, got {other:?}"),
    }
    drop(log);
    ImmutableLog::open(dir.path()).unwrap();
}

/// A real (empty) batch's id and its sealed encoding, as the log tier appends it.
fn batch_bytes(seq: u64) -> (crate::messages::BatchId, Vec<u8>) {
    let (batch, bytes) = crate::testkit::sealed_empty_batch(seq);
    (batch.id(), bytes)
}

#[tokio::test]
async fn read_batch_finds_batches_by_id_before_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let log = ImmutableLog::open(dir.path()).unwrap();
    let batches: Vec<_> = (0..5).map(batch_bytes).collect();
    for (i, (_, bytes)) in batches.iter().enumerate() {
        log.append(RecordKind::Batch, bytes.clone()).await.unwrap();
        // Records that are not batches are never found as one.
        log.append(RecordKind::Checkpoint, payload(i))
            .await
            .unwrap();
    }
    // A batch record whose payload is no batch is stored but not indexed.
    log.append(RecordKind::Batch, b"not a batch".to_vec())
        .await
        .unwrap();
    let (unknown, _) = batch_bytes(99);
    for (id, bytes) in &batches {
        assert_eq!(log.read_batch(id).unwrap().as_ref(), Some(bytes));
    }
    assert_eq!(log.read_batch(&unknown).unwrap(), None);
    drop(log);

    let log = ImmutableLog::open(dir.path()).unwrap();
    for (id, bytes) in &batches {
        assert_eq!(log.read_batch(id).unwrap().as_ref(), Some(bytes));
    }
    assert_eq!(log.read_batch(&unknown).unwrap(), None);
    // Appends after the reopen are found too, at offsets past the scanned records.
    let (late, late_bytes) = batch_bytes(5);
    log.append(RecordKind::Batch, late_bytes.clone())
        .await
        .unwrap();
    assert_eq!(log.read_batch(&late).unwrap(), Some(late_bytes));
    assert_eq!(
        log.read_batch(&batches[2].0).unwrap().as_ref(),
        Some(&batches[2].1)
    );
}

#[cfg(unix)]
#[tokio::test]
async fn read_batch_checks_the_record_it_reads() {
    use std::os::unix::fs::FileExt;

    let dir = tempfile::tempdir().unwrap();
    let log = ImmutableLog::open(dir.path()).unwrap();
    let (id, bytes) = batch_bytes(0);
    log.append(RecordKind::Batch, bytes).await.unwrap();
    // Flip the last byte (the record's hash) behind the open log's back.
    let len = log_bytes(dir.path()).len() as u64;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(LOG_FILE))
        .unwrap();
    let mut last = [0u8; 1];
    fs::File::open(dir.path().join(LOG_FILE))
        .unwrap()
        .read_exact_at(&mut last, len - 1)
        .unwrap();
    file.write_all_at(&[last[0] ^ 1], len - 1).unwrap();

    let e = corrupt_error(log.read_batch(&id));
    assert_eq!((e.seq, e.offset), (0, MAGIC.len() as u64), "{e}");
    assert!(e.reason.contains("hash"), "{e}");
}

/// The tree the writer extends and the tree a reopening scan builds are the same, and
/// every record's inclusion proof verifies against it with the record's own bytes.
#[tokio::test]
async fn the_merkle_tree_proves_every_record_before_and_after_reopening() {
    let (dir, log, _) = log_with(13).await;
    let (size, root) = log.tree_head();
    assert_eq!(size, 13);
    let mut bodies = Vec::new();
    for index in 0..size {
        let body = log.record_body(index).unwrap().unwrap();
        let proof = log.inclusion_proof(index, size).unwrap();
        merkle::verify_inclusion(&root, size, index, &body, &proof).unwrap();
        assert_eq!(
            Record::decode(&body).unwrap().payload,
            payload(index as usize)
        );
        bodies.push(body);
    }
    assert_eq!(log.record_body(size).unwrap(), None);
    let old_root = log.root(5).unwrap();
    let proof = log.consistency_proof(5, size).unwrap();
    merkle::verify_consistency(5, &old_root, size, &root, &proof).unwrap();
    drop(log);

    let log = ImmutableLog::open(dir.path()).unwrap();
    assert_eq!(log.tree_head(), (size, root));
    let (report, tree) = ImmutableLog::verify_tree(dir.path(), |_, _| {}).unwrap();
    assert_eq!((report.records, tree.root(size)), (size, Some(root)));
    let next = log.append(RecordKind::Batch, payload(13)).await.unwrap();
    assert_eq!(next.seq, 13);
    let (size, new_root) = log.tree_head();
    let proof = log.consistency_proof(13, size).unwrap();
    merkle::verify_consistency(13, &root, size, &new_root, &proof).unwrap();
    assert_eq!(*log.subscribe().borrow(), 14);
}

#[tokio::test]
async fn record_body_refuses_a_record_changed_behind_the_logs_back() {
    let (dir, log, _) = log_with(2).await;
    let mut bytes = log_bytes(dir.path());
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    // Rewritten in place (the open descriptor reads the new bytes).
    fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(LOG_FILE))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    let e = corrupt_error(log.record_body(1));
    assert_eq!(e.seq, 1);
    assert!(log.record_body(0).unwrap().is_some());
}
