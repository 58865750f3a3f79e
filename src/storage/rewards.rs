//! The rewards ledger in `city.redb`: one [`Account`] per storage node (role, points,
//! acks credited, challenges passed and failed, last credit), kept by the rules of
//! `engines::rewards`.
//!
//! Entries are added inside the write transactions of the city store, never on their
//! own: a batch's write acks with its record (only when the record is new, so a batch is
//! credited once however often it is written), a repair's acks with its relocation, and a
//! repair round's challenge results in one fsynced transaction of their own
//! (`CityStore::record_credits`).

use redb::{ReadableTable, TableDefinition};

use crate::engines::rewards::{Account, Credit, Outcome, RewardEngine};

/// Node id → its encoded [`Account`].
pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reward_accounts");

/// Adds `credits` to their nodes' accounts in `table`; with `engine`, repair challenge
/// results also move each node's reliability by its rule.
pub(super) fn apply<E>(
    table: &mut redb::Table<&str, &[u8]>,
    credits: &[Credit],
    engine: Option<&dyn RewardEngine>,
) -> Result<(), E>
where
    E: From<redb::StorageError> + From<crate::messages::WireError>,
{
    for credit in credits {
        let mut account: Account = match table.get(credit.node_id.as_str())? {
            Some(v) => crate::messages::decode(v.value())?,
            None => Account::default(),
        };
        account.apply(credit);
        if let Some(engine) = engine {
            account.challenged(credit, engine);
        }
        table.insert(
            credit.node_id.as_str(),
            crate::messages::encode(&account).as_slice(),
        )?;
    }
    Ok(())
}

/// Counts what was committed: points by role, challenges by outcome.
pub(super) fn count(credits: &[Credit]) {
    for c in credits {
        match c.outcome {
            Outcome::Proved(kind) => {
                metrics::counter!(crate::metrics::REWARD_POINTS, "role" => c.role.as_str())
                    .increment(c.points);
                if kind == crate::engines::rewards::ProofKind::Challenge {
                    metrics::counter!(crate::metrics::REPAIR_CHALLENGES, "outcome" => "passed")
                        .increment(1);
                }
            }
            Outcome::Failed => {
                metrics::counter!(crate::metrics::REPAIR_CHALLENGES, "outcome" => "failed")
                    .increment(1)
            }
        }
    }
}
