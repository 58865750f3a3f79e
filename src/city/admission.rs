//! Admission: the checks a city makes of a verified transaction before the Intake sees it.
//!
//! They run on the HTTP workers' blocking pools, in parallel, after the signature check
//! ([`SignedTx::from_request_bytes`]), so the Intake actor — a sequential point — does only
//! de-duplication and bookkeeping.

use std::time::Duration;

use crate::messages::{SignedTx, TxValidationError};

/// Policy checks that need the node's configuration or clock.
#[derive(Debug, Clone)]
pub struct IntakeLimits {
    pub city: String,
    pub max_clock_skew: Duration,
    pub max_payload_bytes: usize,
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::FlagKind;
    use crate::testkit::signed_tx;

    #[test]
    fn policy_checks_skew_payload_and_city() {
        let key = SigningKey::from_seed([7; 32]).unwrap();
        let tx = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let limits = IntakeLimits {
            city: "tokyo".into(),
            max_clock_skew: Duration::from_secs(60),
            max_payload_bytes: 10,
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
    }
}
