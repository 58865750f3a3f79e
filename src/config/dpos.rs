//! `[dpos]` (continent nodes): which representatives approve this continent's batches,
//! with what stake, under which rules (`engines::dpos`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The approval rules a continent runs, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalEngineName {
    /// A batch is approved when representatives holding at least two thirds of the
    /// (non-slashed) stake signed a vote for exactly that batch.
    StakeTwoThirds,
    /// No approval: continent batches are never sent to representatives.
    Off,
}

/// `[dpos]`: approval of continent batches by stake-weighted representatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DposConfig {
    /// The rules; `None` means `stake_two_thirds` when representatives are listed, `off`
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<ApprovalEngineName>,
    /// The representatives of this continent (configured, not elected).
    pub representatives: Vec<RepresentativeEntry>,
    /// Share of an equivocating representative's remaining stake taken, once per offence
    /// (0.0 to 1.0).
    pub slash_fraction: f64,
    /// A proposal not answered within this fails (and is asked again).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First delay before asking again for missing votes; doubled each round.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest delay between rounds.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for DposConfig {
    fn default() -> Self {
        Self {
            engine: None,
            representatives: Vec::new(),
            slash_fraction: 1.0,
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Whether `b64` is a base64 ML-DSA-65 public key (as `config::decode_public_key`, which
/// this section cannot import without a cycle).
fn is_public_key(b64: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .is_ok_and(|k| k.len() == crate::crypto::PUBLIC_KEY_LEN)
}

/// One `[[dpos.representatives]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepresentativeEntry {
    /// The representative node's id: its votes name it.
    pub id: String,
    /// Base64 of its ML-DSA-65 public key; its votes must verify with it.
    pub public_key: String,
    /// Its stake (an integer, in stake units).
    pub stake: u64,
    /// Its base URL, e.g. `"http://127.0.0.1:9300"`.
    pub url: String,
}

impl DposConfig {
    /// The rules in force.
    pub fn engine(&self) -> ApprovalEngineName {
        match self.engine {
            Some(e) => e,
            None if self.representatives.is_empty() => ApprovalEngineName::Off,
            None => ApprovalEngineName::StakeTwoThirds,
        }
    }

    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(0.0..=1.0).contains(&self.slash_fraction) {
            p.push(format!(
                "[dpos] slash_fraction must be 0.0 to 1.0, not {}",
                self.slash_fraction
            ));
        }
        if self.timeout.is_zero()
            || self.retry_initial.is_zero()
            || self.retry_initial > self.retry_max
        {
            p.push(
                "[dpos] timeout and retry_initial must be positive, retry_initial at most retry_max"
                    .into(),
            );
        }
        if self.engine() == ApprovalEngineName::StakeTwoThirds {
            if self.representatives.is_empty() {
                p.push("[dpos] engine stake_two_thirds needs [[dpos.representatives]]".into());
            } else if self.representatives.iter().map(|r| r.stake).sum::<u64>() == 0 {
                p.push("[dpos] the representatives' stakes must not all be 0".into());
            }
        }
        let mut ids = BTreeSet::new();
        for (i, r) in self.representatives.iter().enumerate() {
            let at = format!("[[dpos.representatives]] #{} ({})", i + 1, r.id);
            if r.id.trim().is_empty() {
                p.push(format!("{at}: id must not be empty"));
            }
            if !ids.insert(r.id.as_str()) {
                p.push(format!("{at}: duplicate id"));
            }
            if !is_public_key(&r.public_key) {
                p.push(format!(
                    "{at}: public_key is not a base64 ML-DSA-65 public key"
                ));
            }
            if r.stake > u64::MAX / 4 {
                p.push(format!("{at}: stake is too large"));
            }
            if reqwest::Url::parse(&r.url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                p.push(format!("{at}: url {:?} is not an http(s) URL", r.url));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;
    use crate::config::Config;

    fn key() -> String {
        let k = crate::crypto::SigningKey::from_seed([9; 32]).unwrap();
        base64::engine::general_purpose::STANDARD.encode(k.public_key())
    }

    fn continent(dpos: &str) -> String {
        format!(
            "[node]\nid = \"continent-asia\"\nrole = \"continent\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\ncontinent = \"asia\"\n[[auth.peers]]\nid = \"city-tokyo\"\nrole = \"city\"\ncity = \"tokyo\"\npublic_key = \"{}\"\n{dpos}",
            key()
        )
    }

    fn rep(id: &str, stake: u64, url: &str) -> String {
        format!(
            "[[dpos.representatives]]\nid = \"{id}\"\npublic_key = \"{}\"\nstake = {stake}\nurl = \"{url}\"\n",
            key()
        )
    }

    #[test]
    fn the_engine_defaults_to_two_thirds_when_representatives_are_listed() {
        let off = Config::parse(&continent("")).unwrap();
        assert_eq!(off.dpos.engine(), ApprovalEngineName::Off);
        let text = continent(&rep("rep-1", 100, "http://127.0.0.1:9"));
        let on = Config::parse(&text).unwrap();
        assert_eq!(on.dpos.engine(), ApprovalEngineName::StakeTwoThirds);
        assert_eq!(on.dpos.slash_fraction, 1.0);
        assert_eq!(Config::parse(&on.to_toml()).unwrap(), on, "it round-trips");
    }

    #[test]
    fn every_dpos_problem_is_reported_at_once() {
        let text = continent(&format!(
            "[dpos]\nslash_fraction = 1.5\nretry_initial = \"10s\"\nretry_max = \"1s\"\n{}{}[[dpos.representatives]]\nid = \"rep-2\"\npublic_key = \"AAAA\"\nstake = 0\nurl = \"ftp://x\"\n",
            rep("rep-1", 0, "http://127.0.0.1:9"),
            rep("rep-1", 0, "http://127.0.0.1:9"),
        ));
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("slash_fraction must be 0.0 to 1.0"), "{all}");
        assert!(all.contains("retry_initial at most retry_max"), "{all}");
        assert!(all.contains("stakes must not all be 0"), "{all}");
        assert!(all.contains("duplicate id"), "{all}");
        assert!(all.contains("not a base64 ML-DSA-65 public key"), "{all}");
        assert!(all.contains("not an http(s) URL"), "{all}");
        assert_eq!(err.problems.len(), 6, "{all}");
        let err = Config::parse(&continent("[dpos]\nengine = \"stake_two_thirds\"\n")).unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("needs [[dpos.representatives]]")
        );
    }

    #[test]
    fn a_representative_serves_its_continent_node_and_only_continents_collect_votes() {
        let node = |peer_role: &str| {
            format!(
                "[node]\nid = \"rep-1\"\nrole = \"representative\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\ncontinent = \"asia\"\n[[auth.peers]]\nid = \"x\"\nrole = \"{peer_role}\"\npublic_key = \"{}\"\n",
                key()
            )
        };
        Config::parse(&node("continent")).unwrap();
        let err = Config::parse(&node("city")).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("must list its continent node"), "{all}");
        assert!(
            all.contains("serves its continent node, not a city"),
            "{all}"
        );
        let text = format!(
            "{}{}",
            node("continent"),
            rep("rep-2", 1, "http://127.0.0.1:9")
        );
        let err = Config::parse(&text).unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("[dpos] is for continent nodes"),
            "{err}"
        );
    }
}
