use std::collections::BTreeMap;
use std::time::Instant;

use super::*;
use crate::crypto::SigningKey;
use crate::messages::{Batch, FlagKind, Placement, SealedBatch, StoreJob, Tier, Urgency, now_ms};
use crate::storage::chain::TierChain;
use crate::storage::immutable_log::{ImmutableLog, RecordKind};
use crate::storage::log_tier::LogTier;
use crate::storage::tier::StorageTier;
use crate::testkit::signed_tx;

/// Port 1 on loopback: nothing listens, so every connection is refused at once.
const UNREACHABLE: &str = "mongodb://127.0.0.1:1/?directConnection=true";

fn config(continent: &str, uri: &str) -> MongoConfig {
    MongoConfig {
        uris: BTreeMap::from([(continent.to_owned(), uri.to_owned())]),
        deadline: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(200),
        server_selection_timeout: Duration::from_millis(250),
        ..MongoConfig::default()
    }
}

/// A real batch of two signed transactions, placed nowhere (no light or full nodes).
fn job(created_at_ms: u64) -> StoreJob {
    let key = SigningKey::generate().unwrap();
    let txs = vec![
        signed_tx(&key, 1, FlagKind::FreshTx, 5),
        signed_tx(&key, 2, FlagKind::FreshTx, 7),
    ];
    let tx_ids = txs.iter().map(|t| t.id).collect();
    let batch = Batch::build("tokyo", 3, vec![], FlagKind::FreshTx, &txs, created_at_ms);
    StoreJob {
        sealed: SealedBatch::new(
            batch,
            tx_ids,
            Urgency::Normal,
            Instant::now(),
            &crate::testkit::sealer(),
        )
        .unwrap(),
        placement: Placement::default(),
    }
}

#[test]
fn collection_for_names_the_utc_month_at_its_boundaries() {
    let cases = [
        (0, "unfinished_197001"),
        (1_704_067_199_999, "unfinished_202312"), // 2023-12-31T23:59:59.999Z
        (1_704_067_200_000, "unfinished_202401"), // 2024-01-01T00:00:00Z
        (1_709_251_199_999, "unfinished_202402"), // 2024-02-29T23:59:59.999Z (leap)
        (1_709_251_200_000, "unfinished_202403"), // 2024-03-01T00:00:00Z
        (951_825_600_000, "unfinished_200002"),   // 2000-02-29T12:00Z (400-year leap)
        (4_107_542_399_999, "unfinished_210002"), // 2100-02-28T23:59:59.999Z
        (4_107_542_400_000, "unfinished_210003"), // 2100-03-01 (2100 is not leap)
        (1_769_903_999_999, "unfinished_202601"), // 2026-01-31T23:59:59.999Z
        (1_769_904_000_000, "unfinished_202602"), // 2026-02-01T00:00:00Z
    ];
    for (ms, want) in cases {
        assert_eq!(collection_for(ms), want, "at {ms} ms");
    }
    // Far future: still a name, no overflow.
    assert!(collection_for(u64::MAX).starts_with(UNFINISHED_PREFIX));
}

/// Every day's first and last millisecond from 1970 to 2400 against a plain calendar.
#[test]
fn year_month_agrees_with_a_day_by_day_calendar() {
    let mut day = 0u64;
    for year in 1970u64..2400 {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let lengths = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        for (m, len) in lengths.into_iter().enumerate() {
            for _ in 0..len {
                let want = (year, m as u64 + 1);
                assert_eq!(year_month(day * MS_PER_DAY), want, "day {day}");
                assert_eq!(year_month(day * MS_PER_DAY + MS_PER_DAY - 1), want);
                day += 1;
            }
        }
    }
}

#[test]
fn new_needs_a_uri() {
    let cfg = MongoConfig::default();
    assert!(MongoTier::new(&cfg, "test-no-uri").is_none());
    let tier = MongoTier::new(&config("test-with-uri", UNREACHABLE), "test-with-uri")
        .expect("a URI is configured");
    assert_eq!(tier.continent(), "test-with-uri");
    assert_eq!(tier.uri, UNREACHABLE);
    assert_eq!(tier.holder(), "mongo:test-with-uri");
    assert!(tier.client.get().is_none(), "no client before first use");
}

#[test]
fn env_override_wins_over_the_file() {
    let continent = "test-env-override";
    let var = MongoConfig::env_var(continent);
    assert_eq!(var, "CITYCHAIN_MONGO_URI_TEST_ENV_OVERRIDE");
    let from_env = "mongodb://env.example:27017";
    // SAFETY: the variable's name is unique to this test; no other code reads or
    // writes it, and it is removed before the test ends.
    unsafe { std::env::set_var(&var, from_env) };
    let file_only = MongoTier::new(
        &config(continent, "mongodb://file.example:27017"),
        continent,
    )
    .map(|t| t.uri);
    let env_only = MongoTier::new(&MongoConfig::default(), continent).map(|t| t.uri);
    // SAFETY: as above.
    unsafe { std::env::remove_var(&var) };
    assert_eq!(file_only.as_deref(), Some(from_env));
    assert_eq!(env_only.as_deref(), Some(from_env));
    assert!(MongoTier::new(&MongoConfig::default(), continent).is_none());
}

#[test]
fn the_document_holds_the_exact_sealed_bytes_and_no_transaction_id() {
    let job = job(1_704_067_200_000);
    let sealed = &job.sealed;
    let stored_at = DateTime::from_millis(1_704_067_200_123);
    let doc = insert_fields(sealed, stored_at).unwrap();
    assert_eq!(doc.get_str("city_id").unwrap(), "tokyo");
    assert_eq!(doc.get_i64("seq").unwrap(), 3);
    assert_eq!(doc.get_i64("tx_count").unwrap(), 2);
    assert_eq!(doc.get_str("key_id").unwrap(), sealed.capsule.key_id);
    // No transaction id, in any form, anywhere in the document.
    let raw = mongodb::bson::to_vec(&doc).unwrap();
    for id in sealed.tx_ids.iter() {
        for needle in [id.to_vec(), hex32(id).into_bytes()] {
            assert!(!raw.windows(needle.len()).any(|w| w == needle.as_slice()));
        }
    }
    // The capsule goes to the vault collection, beside no bytes.
    let vault = capsule_fields(sealed, stored_at);
    assert_eq!(
        Capsule::from_bytes(vault.get_binary_generic("capsule").unwrap()).unwrap(),
        *sealed.capsule
    );
    assert!(!vault.contains_key("bytes"));
    assert_eq!(
        doc.get_binary_generic("bytes").unwrap(),
        &sealed.bytes.to_vec()
    );
    assert_eq!(
        doc.get_str("blake3").unwrap(),
        hex32(&crypto::hash(&sealed.bytes))
    );
    assert_eq!(
        doc.get_datetime("created_at").unwrap().timestamp_millis(),
        1_704_067_200_000
    );
    assert_eq!(doc.get_datetime("stored_at").unwrap(), &stored_at);
    assert!(!doc.contains_key("_id"), "the id is the upsert's filter");

    // What get_batch accepts back: the same bytes, and nothing altered or misfiled.
    assert_eq!(
        checked_bytes(&doc, &sealed.id).unwrap(),
        sealed.bytes.to_vec()
    );
    assert!(checked_bytes(&doc, &[0; 32]).is_err());
    let mut tampered = doc.clone();
    let mut bytes = sealed.bytes.to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    tampered.insert(
        "bytes",
        Binary {
            subtype: BinarySubtype::Generic,
            bytes,
        },
    );
    assert!(checked_bytes(&tampered, &sealed.id).is_err());
}

#[test]
fn short_keeps_reasons_on_one_bounded_line() {
    assert_eq!(short(&"a\n  b"), "a b");
    let long = "x".repeat(1000);
    assert_eq!(short(&long).chars().count(), MAX_REASON_CHARS + 1);
}

#[tokio::test]
async fn a_bad_uri_is_a_tier_failure() {
    let cfg = config("test-bad-uri", "mongodb://");
    let tier = MongoTier::new(&cfg, "test-bad-uri").unwrap();
    let result = tier.store(&job(now_ms())).await;
    let reason = result.outcome.unwrap_err().to_string();
    println!("{reason}");
    assert!(
        reason.starts_with("mongo (test-bad-uri): invalid MongoDB URI"),
        "{reason}"
    );
    assert!(result.observations.is_empty());
}

#[tokio::test]
async fn an_unreachable_mongodb_fails_within_its_deadline() {
    let cfg = config("test-unreachable", UNREACHABLE);
    let tier = MongoTier::new(&cfg, "test-unreachable").unwrap();
    let job = job(now_ms());
    for attempt in 0..2 {
        let started = Instant::now();
        let result = tier.store(&job).await;
        let took = started.elapsed();
        let reason = result.outcome.unwrap_err().to_string();
        println!("attempt {attempt}: failed in {took:?}: {reason}");
        assert!(reason.starts_with("mongo (test-unreachable): "), "{reason}");
        assert!(
            took < cfg.deadline + Duration::from_millis(200),
            "took {took:?}, deadline {:?}",
            cfg.deadline
        );
    }
    let read = tier.get_batch(&job.sealed.id, job.sealed.batch.header.created_at_ms);
    assert!(read.await.is_err());
}

/// What the FailoverSupervisor does with a dead MongoDB: try it, then the log.
#[tokio::test]
async fn a_chain_falls_through_an_unreachable_mongodb_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
    let mongo = Arc::new(MongoTier::new(&config("test-chain", UNREACHABLE), "test-chain").unwrap());
    let chain = TierChain::new(
        vec![
            mongo.clone(),
            Arc::new(LogTier {
                log: log.clone(),
                holder: "city-tokyo".into(),
            }),
        ],
        crate::testkit::peer_client(),
        log.clone(),
        Some(mongo),
    );
    let job = job(now_ms());

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut reached = None;
    for index in 0..chain.len() {
        let tier = chain.get(index).unwrap();
        match tier.store(&job).await.outcome {
            Ok(stored) => {
                reached = Some((tier.tier(), stored));
                break;
            }
            Err(reason) => failures.push((tier.tier(), reason)),
        }
    }
    let took = started.elapsed();
    println!("chain walked in {took:?}; failures: {failures:?}");

    let (tier, stored) = reached.expect("the log stores the batch");
    assert_eq!(tier, Tier::Log);
    assert_eq!(stored.holders, vec!["city-tokyo".to_string()]);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, Tier::Mongo);
    assert!(took < Duration::from_millis(600), "took {took:?}");

    let records = ImmutableLog::read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, RecordKind::Batch);
    assert_eq!(records[0].payload, job.sealed.bytes.to_vec());
}
