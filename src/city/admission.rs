//! Admission: the checks a city makes of a transaction before the Intake sees it.
//!
//! They run on the HTTP workers' blocking pools, in parallel, so the Intake actor — a sequential
//! point — does only de-duplication and bookkeeping. In order:
//!
//! 1. [`check_request`], on the parsed request before its signature is checked: only
//!    kinds clients may submit (`fresh_tx`), and names without control or invisible
//!    characters. Cheap, so a flood of such requests costs no signature verification.
//! 2. The signature ([`ParsedTx::verify`]).
//! 3. Whether the transaction is already durable (the handle answers it as a duplicate,
//!    however old: the id is the hash of the signed bytes, so the answer tells nothing
//!    `GET /v1/tx/{id}` would not, and it changes nothing).
//! 4. [`check_policy`]: clock skew, payload size, city and continent, then the position
//!    (`pop`) against the city's fence ([`crate::engines::pop`]).

use std::sync::Arc;
use std::time::Duration;

use crate::engines::pop::PlaceEngine;
use crate::messages::names::check_name;
use crate::messages::{ParsedTx, SignedTx, TxValidationError};

/// Policy checks that need the node's configuration or clock.
#[derive(Debug, Clone)]
pub struct IntakeLimits {
    pub city: String,
    /// The city's continent: a transaction that names a continent must name this one (its
    /// batches are sealed for, and stored in MongoDB of, this continent).
    pub continent: String,
    pub max_clock_skew: Duration,
    pub max_payload_bytes: usize,
    /// The proof-of-place engine `[pop]` names.
    pub place: Arc<dyn PlaceEngine>,
}

/// Checks what can be checked before the signature: the kind, and the names.
pub fn check_request(tx: &ParsedTx) -> Result<(), TxValidationError> {
    let t = &tx.tx;
    if !t.kind.client_may_submit() {
        return Err(TxValidationError::KindNotAllowed(t.kind));
    }
    // `sender` is already known to be the hex address of the key.
    check_name("receiver", &t.receiver)?;
    check_name("city_id", &t.city_id)?;
    if let Some(continent) = &t.continent {
        check_name("continent", continent)?;
    }
    Ok(())
}

/// Checks a signed transaction against this node's policy.
pub fn check_policy(
    tx: &SignedTx,
    limits: &IntakeLimits,
    now_ms: u64,
) -> Result<(), TxValidationError> {
    let skew = now_ms.abs_diff(tx.tx.timestamp_ms);
    let limit = limits.max_clock_skew.as_millis() as u64;
    if skew > limit {
        return Err(TxValidationError::TimestampSkew {
            skew_ms: skew,
            limit_ms: limit,
        });
    }
    let size = tx.payload_size();
    if size > limits.max_payload_bytes {
        return Err(TxValidationError::PayloadTooLarge {
            size,
            limit: limits.max_payload_bytes,
        });
    }
    if tx.tx.city_id != limits.city {
        return Err(TxValidationError::WrongCity {
            got: tx.tx.city_id.clone(),
            expected: limits.city.clone(),
        });
    }
    if let Some(continent) = &tx.tx.continent
        && *continent != limits.continent
    {
        return Err(TxValidationError::WrongContinent {
            got: continent.clone(),
            expected: limits.continent.clone(),
        });
    }
    let verdict = limits.place.check(tx.tx.pop.as_ref()).inspect_err(|e| {
        metrics::counter!(crate::metrics::POP_CHECKS, "outcome" => e.code()).increment(1);
    })?;
    metrics::counter!(crate::metrics::POP_CHECKS, "outcome" => verdict.as_str()).increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::FlagKind;
    use crate::testkit::signed_tx;

    fn parsed(tx: &SignedTx) -> ParsedTx {
        ParsedTx {
            id: tx.id,
            tx: tx.tx.clone(),
            canonical: tx.canonical.clone(),
            public_key: tx.public_key.clone(),
            signature: tx.signature.clone(),
        }
    }

    #[test]
    fn requests_with_node_kinds_or_bad_names_are_refused() {
        let key = SigningKey::from_seed([8; 32]).unwrap();
        let fresh = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        assert_eq!(check_request(&parsed(&fresh)), Ok(()));
        for kind in FlagKind::ALL
            .into_iter()
            .filter(|k| *k != FlagKind::FreshTx)
        {
            let tx = signed_tx(&key, 1, kind, 10);
            let err = check_request(&parsed(&tx)).unwrap_err();
            assert_eq!((err.status(), err.code()), (403, "kind_not_allowed"));
        }
        let mut bad = parsed(&fresh);
        bad.tx.receiver = "bob\n".into();
        assert_eq!(check_request(&bad).unwrap_err().code(), "invalid_name");
        let mut bad = parsed(&fresh);
        bad.tx.city_id = "tok\u{200b}yo".into();
        assert_eq!(check_request(&bad).unwrap_err().code(), "invalid_name");
        let mut bad = parsed(&fresh);
        bad.tx.continent = Some(String::new());
        assert_eq!(check_request(&bad).unwrap_err().code(), "invalid_name");
    }

    #[test]
    fn policy_checks_skew_payload_city_and_continent() {
        let key = SigningKey::from_seed([7; 32]).unwrap();
        let tx = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let limits = IntakeLimits {
            city: "tokyo".into(),
            continent: "asia".into(),
            max_clock_skew: Duration::from_secs(60),
            max_payload_bytes: 10,
            place: Arc::new(crate::engines::pop::Off),
        };
        let now = tx.tx.timestamp_ms;
        assert_eq!(check_policy(&tx, &limits, now), Ok(()));
        assert!(matches!(
            check_policy(&tx, &limits, now + 61_000),
            Err(TxValidationError::TimestampSkew { .. })
        ));
        let osaka = IntakeLimits {
            city: "osaka".into(),
            ..limits.clone()
        };
        assert_eq!(
            check_policy(&tx, &osaka, now).unwrap_err().code(),
            "wrong_city"
        );
        // No continent named: the city's. Its own: fine. Another: refused.
        let mut named = tx.clone();
        named.tx.continent = Some("asia".into());
        assert_eq!(check_policy(&named, &limits, now), Ok(()));
        named.tx.continent = Some("europe".into());
        let err = check_policy(&named, &limits, now).unwrap_err();
        assert_eq!((err.status(), err.code()), (400, "wrong_continent"));
        let mut big = tx.clone();
        big.tx.payload = Some(
            serde_json::json!({"memo": "a long memo"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(
            check_policy(&big, &limits, now).unwrap_err().code(),
            "payload_too_large"
        );
        // The position last, against the city's fence: (lon 139..141, lat 35..36).
        let fence = crate::config::parse_fence(
            r#"{"type":"Polygon","coordinates":[[[139,35],[141,35],[141,36],[139,36],[139,35]]]}"#,
        )
        .unwrap();
        let fenced = IntakeLimits {
            place: Arc::new(crate::engines::pop::Geofence::new(
                "tokyo",
                Some(fence),
                true,
            )),
            ..limits.clone()
        };
        let mut placed = tx.clone();
        placed.tx.pop = Some(crate::messages::Pop {
            lat: 35.68,
            lon: 139.76,
        });
        assert_eq!(check_policy(&placed, &fenced, now), Ok(()));
        placed.tx.pop = Some(crate::messages::Pop {
            lat: 34.69,
            lon: 135.50,
        });
        let err = check_policy(&placed, &fenced, now).unwrap_err();
        assert_eq!((err.status(), err.code()), (400, "pop_outside_city"));
        placed.tx.pop = None;
        let err = check_policy(&placed, &fenced, now).unwrap_err();
        assert_eq!((err.status(), err.code()), (400, "pop_required"));
        // A wrong city is reported as such, before its position is looked at.
        placed.tx.city_id = "osaka".into();
        assert_eq!(
            check_policy(&placed, &fenced, now).unwrap_err().code(),
            "wrong_city"
        );
    }
}
