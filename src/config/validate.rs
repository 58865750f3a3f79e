//! Semantic checks of a parsed config: every problem at once, each naming its section.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Config, Role, decode_public_key};
use crate::messages::Tier;
use crate::messages::names::{NameError, check_name};

/// A name with characters names may not contain (`[node] id`, `city`, `continent`,
/// storage node ids): the problem, in the words of the config file.
fn bad_name(section: &str, field: &'static str, value: &str) -> Option<String> {
    match check_name(field, value) {
        // Emptiness is reported by the checks that need the field.
        Ok(()) | Err(NameError::Empty { .. }) => None,
        Err(e) => Some(format!("{section} {e} ({value:?})")),
    }
}

impl Config {
    /// Semantic checks; returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let n = &self.node;
        if n.id.trim().is_empty() {
            p.push("[node] id must not be empty".into());
        }
        if n.continent.trim().is_empty() {
            p.push("[node] continent must not be empty".into());
        }
        if n.role == Role::City && n.city.as_deref().is_none_or(|c| c.trim().is_empty()) {
            p.push("[node] city is required for a city node".into());
        }
        p.extend(bad_name("[node]", "node.id", &n.id));
        p.extend(bad_name("[node]", "node.continent", &n.continent));
        if let Some(city) = &n.city {
            p.extend(bad_name("[node]", "node.city", city));
        }
        p.extend(self.objects.problems());
        let i = &self.intake;
        if i.queue_capacity == 0 {
            p.push("[intake] queue_capacity must be at least 1".into());
        }
        if i.max_body_bytes < 1024 {
            p.push("[intake] max_body_bytes must be at least 1024".into());
        }
        if i.request_timeout.is_zero() {
            p.push("[intake] request_timeout must be positive".into());
        }
        let b = &self.batcher;
        if b.max_batch_txs == 0 {
            p.push("[batcher] max_batch_txs must be at least 1".into());
        }
        if b.max_batch_bytes < i.max_body_bytes {
            p.push(format!(
                "[batcher] max_batch_bytes ({}) must hold at least one largest request ({})",
                b.max_batch_bytes, i.max_body_bytes
            ));
        }
        if b.min_delay > b.max_delay {
            p.push("[batcher] min_delay must not exceed max_delay".into());
        }
        if b.max_delay.is_zero() {
            p.push("[batcher] max_delay must be positive".into());
        }
        if b.max_parents == 0 {
            p.push("[batcher] max_parents must be at least 1".into());
        }
        let pr = &self.prioritizer;
        let w = &pr.weights;
        let ws = [w.latency, w.uptime, w.capacity, w.load, w.same_continent];
        if ws.iter().any(|x| !x.is_finite() || *x < 0.0) || ws.iter().sum::<f64>() <= 0.0 {
            p.push("[prioritizer.weights] must be non-negative with a positive sum".into());
        }
        if pr.probe_interval.is_zero() || pr.probe_timeout.is_zero() {
            p.push("[prioritizer] probe_interval and probe_timeout must be positive".into());
        }
        if pr.down_after_failures == 0 {
            p.push("[prioritizer] down_after_failures must be at least 1".into());
        }
        let s = &self.storage;
        if s.min_full_acks == 0 {
            p.push("[storage] min_full_acks must be at least 1".into());
        }
        let e = &s.erasure;
        if e.coding().is_none() {
            p.push(format!(
                "[storage.erasure] data_pieces ({}) and parity_pieces ({}) must each be at least 1, and at most {} together",
                e.data_pieces,
                e.parity_pieces,
                crate::messages::piece::MAX_PIECES
            ));
        }
        if e.survive_losses > e.parity_pieces {
            p.push(format!(
                "[storage.erasure] survive_losses ({}) cannot exceed parity_pieces ({}): with more holders lost, fewer than data_pieces remain",
                e.survive_losses, e.parity_pieces
            ));
        }
        let mut ids = BTreeSet::new();
        for (idx, e) in s.nodes.iter().enumerate() {
            let at = format!("[[storage.nodes]] #{} ({})", idx + 1, e.id);
            if !ids.insert(e.id.as_str()) {
                p.push(format!("{at}: duplicate id"));
            }
            p.extend(bad_name(&at, "id", &e.id));
            p.extend(bad_name(&at, "continent", &e.continent));
            if !e.role.is_storage() {
                p.push(format!("{at}: role must be light or full, not {}", e.role));
            }
            if reqwest::Url::parse(&e.url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                p.push(format!("{at}: url {:?} is not an http(s) URL", e.url));
            }
            if decode_public_key(&e.public_key).is_none() {
                p.push(format!(
                    "{at}: public_key is not a base64 ML-DSA-65 public key"
                ));
            }
        }
        if n.role == Role::City {
            let lights = s.nodes.iter().filter(|e| e.role == Role::Light).count();
            let fulls = s.nodes.iter().filter(|e| e.role == Role::Full).count();
            if self.supervisor.chain.contains(&Tier::Light) && lights < s.min_light_acks() {
                p.push(format!(
                    "[storage] the light tier needs {} acked pieces (data_pieces + survive_losses), each from its own light node, but only {lights} light nodes are listed",
                    s.min_light_acks()
                ));
            }
            if self.supervisor.chain.contains(&Tier::Full) && fulls < s.min_full_acks {
                p.push(format!(
                    "[storage] the full tier needs {} acks but only {fulls} full nodes are listed",
                    s.min_full_acks
                ));
            }
        }
        let chain = &self.supervisor.chain;
        if chain.last() != Some(&Tier::Log) {
            p.push(
                "[supervisor] chain must end with \"log\", the tier that is always there".into(),
            );
        }
        if chain.iter().collect::<BTreeSet<_>>().len() != chain.len() {
            p.push("[supervisor] chain lists a tier twice".into());
        }
        for (continent, uri) in &s.mongo.uris {
            if !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://") {
                p.push(format!(
                    "[storage.mongo.uris] {continent}: {uri:?} is not a mongodb:// or mongodb+srv:// URI"
                ));
            }
        }
        if s.mongo.deadline.is_zero() || s.mongo.database.trim().is_empty() {
            p.push("[storage.mongo] deadline must be positive and database non-empty".into());
        }
        let sup = &self.supervisor;
        if sup.within.is_zero()
            || sup.backoff_multiplier.is_nan()
            || sup.backoff_multiplier < 1.0
            || sup.backoff_initial > sup.backoff_max
        {
            p.push("[supervisor] within must be positive, backoff_multiplier at least 1, backoff_initial at most backoff_max".into());
        }
        if self.repair.interval.is_zero()
            || self.repair.batches_per_round == 0
            || self.repair.archive_per_round == 0
        {
            p.push(
                "[repair] interval, batches_per_round and archive_per_round must be positive"
                    .into(),
            );
        }
        let r = &self.reads;
        if [
            r.light_deadline,
            r.full_deadline,
            r.mongo_deadline,
            r.log_deadline,
        ]
        .iter()
        .any(Duration::is_zero)
            || r.max_concurrent == 0
        {
            p.push("[reads] every deadline and max_concurrent must be positive".into());
        }
        p.extend(self.auth_problems());
        if self.supervisor.max_inflight_batches == 0 {
            p.push("[supervisor] max_inflight_batches must be at least 1".into());
        }
        match &self.vault {
            Some(vault) => p.extend(vault.problems()),
            None if n.role == Role::City => p.push(
                "[vault] is required for a city node: every batch is sealed for the continent's key holder (create a key with `citychain vault keygen`)".into(),
            ),
            None => {}
        }
        if n.role == Role::City {
            p.extend(self.pop.problems());
        }
        p.extend(self.limits.problems(self.largest_request_body()));
        p.extend(self.federation_problems());
        p.extend(self.rewards.problems());
        p
    }

    fn federation_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match (&self.uplink, self.node.role) {
            (Some(u), Role::City | Role::Continent) => p.extend(u.problems()),
            (Some(_), role) => p.push(format!(
                "[uplink] is for city and continent nodes; a {role} node forwards nothing"
            )),
            (None, _) => {}
        }
        let c = &self.continent;
        if c.window.is_zero() || c.max_entries == 0 {
            p.push("[continent] window must be positive and max_entries at least 1".into());
        }
        if c.max_entries > crate::messages::federation::MAX_SUBMISSION_ITEMS {
            p.push(format!(
                "[continent] max_entries must be at most {}",
                crate::messages::federation::MAX_SUBMISSION_ITEMS
            ));
        }
        if self.global.checkpoint_interval.is_zero() {
            p.push("[global] checkpoint_interval must be positive".into());
        }
        if self.node.role == Role::Continent {
            p.extend(self.dpos.problems());
        } else if !self.dpos.representatives.is_empty() {
            p.push(format!(
                "[dpos] is for continent nodes; a {} node collects no votes",
                self.node.role
            ));
        }
        p
    }
}

impl Config {
    fn auth_problems(&self) -> Vec<String> {
        let a = &self.auth;
        let mut p = Vec::new();
        if self.node.role.is_storage() && a.peers.is_empty() {
            p.push(
                "[auth] a storage node must list the nodes it serves in [[auth.peers]]; \
                 without them it refuses every request"
                    .into(),
            );
        }
        let role = self.node.role;
        match role {
            Role::Continent if !a.peers.iter().any(|e| e.role == Role::City) => p.push(
                "[auth] a continent must list the cities it serves in [[auth.peers]] (role \"city\", with their city); without them it refuses every batch"
                    .into(),
            ),
            Role::Global if !a.peers.iter().any(|e| e.role == Role::Continent) => p.push(
                "[auth] the global node must list its continents in [[auth.peers]] (role \"continent\", with their continent); without them it refuses every batch"
                    .into(),
            ),
            Role::Representative if !a.peers.iter().any(|e| e.role == Role::Continent) => p.push(
                "[auth] a representative must list its continent node in [[auth.peers]] (role \"continent\"); without it it refuses every proposal"
                    .into(),
            ),
            _ => {}
        }
        let mut ids = BTreeSet::new();
        for (idx, e) in a.peers.iter().enumerate() {
            let at = format!("[[auth.peers]] #{} ({})", idx + 1, e.id);
            if !ids.insert(e.id.as_str()) {
                p.push(format!("{at}: duplicate id"));
            }
            match role {
                Role::Continent if e.role != Role::City => {
                    p.push(format!("{at}: a continent serves cities, not a {}", e.role))
                }
                Role::Continent if e.city.as_deref().is_none_or(|c| c.trim().is_empty()) => p
                    .push(format!(
                        "{at}: city is required: the city whose batches this node may forward"
                    )),
                Role::Global if e.role != Role::Continent => p.push(format!(
                    "{at}: the global node serves continents, not a {}",
                    e.role
                )),
                Role::Representative if e.role != Role::Continent => p.push(format!(
                    "{at}: a representative serves its continent node, not a {}",
                    e.role
                )),
                Role::Global if e.continent.as_deref().is_none_or(|c| c.trim().is_empty()) => {
                    p.push(format!(
                        "{at}: continent is required: the continent whose batches this node may forward"
                    ))
                }
                _ if e.role != Role::City && e.role != Role::Continent => p.push(format!(
                    "{at}: role must be city or continent, not {}",
                    e.role
                )),
                _ => {}
            }
            if let Some(city) = &e.city {
                p.extend(bad_name(&at, "city", city));
            }
            if let Some(continent) = &e.continent {
                p.extend(bad_name(&at, "continent", continent));
            }
            if decode_public_key(&e.public_key).is_none() {
                p.push(format!(
                    "{at}: public_key is not a base64 ML-DSA-65 public key"
                ));
            }
        }
        if a.max_clock_skew.is_zero() || a.challenges_per_second == 0 || a.challenge_burst == 0 {
            p.push(
                "[auth] max_clock_skew, challenges_per_second and challenge_burst must be positive"
                    .into(),
            );
        }
        p
    }
}
