//! The sections of the federation levels: `[uplink]` (the node above a city or a
//! continent), `[continent]` (how a continent merges city batches) and `[global]` (how
//! often the global node signs a checkpoint).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[uplink]`: the node above this one (a city's continent, a continent's global node),
/// where it forwards what it holds, retrying until acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The upstream node's id: requests are signed for it, and it must list this node in
    /// its `[[auth.peers]]`.
    pub id: String,
    /// Its base URL, e.g. `"http://127.0.0.1:9100"`.
    pub url: String,
    /// Batches forwarded per request, at most.
    #[serde(default = "defaults::max_items")]
    pub max_items: usize,
    /// First delay after a failed attempt; doubled after each further failure.
    #[serde(default = "defaults::retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest delay between attempts (and how often a batch the upstream refused is
    /// offered again).
    #[serde(default = "defaults::retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// A request not answered within this fails (and is retried). A continent answers once
    /// the continent batch holding what was sent is durable, so this must exceed its
    /// `[continent] window`.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

mod defaults {
    use std::time::Duration;

    pub fn max_items() -> usize {
        256
    }
    pub fn retry_initial() -> Duration {
        Duration::from_millis(100)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(5)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
}

impl UplinkConfig {
    /// An uplink to `id` at `url`, with the default timings.
    pub fn to(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            max_items: defaults::max_items(),
            retry_initial: defaults::retry_initial(),
            retry_max: defaults::retry_max(),
            timeout: defaults::timeout(),
        }
    }

    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.id.trim().is_empty() {
            p.push("[uplink] id must name the upstream node".into());
        }
        if reqwest::Url::parse(&self.url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            p.push(format!("[uplink] url {:?} is not an http(s) URL", self.url));
        }
        if self.max_items == 0 || self.max_items > crate::messages::federation::MAX_SUBMISSION_ITEMS
        {
            p.push(format!(
                "[uplink] max_items must be 1 to {}",
                crate::messages::federation::MAX_SUBMISSION_ITEMS
            ));
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            p.push("[uplink] retry_initial must be positive and at most retry_max".into());
        }
        if self.timeout.is_zero() {
            p.push("[uplink] timeout must be positive".into());
        }
        p
    }
}

/// `[continent]`: when a continent closes a continent batch over the city batches it
/// received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContinentConfig {
    /// A continent batch closes this long after its first city batch arrived.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// A continent batch closes at this many city batches.
    pub max_entries: usize,
}

impl Default for ContinentConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(250),
            max_entries: 256,
        }
    }
}

/// `[global]`: how often the global node signs a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalConfig {
    /// Time between checkpoints (one is signed only if the log grew since the last).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}
