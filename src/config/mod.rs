//! Node configuration: one TOML file per node.
//!
//! Every section is optional except `[node]`; defaults live in the sections' `Default`
//! impls (`sections.rs`) and nowhere else; [`validate`](Config::validate)
//! checks the whole. Durations are written as `"5ms"`, `"2s"`; sizes are plain bytes. Unknown
//! fields are errors, and [`Config::load`] reports every problem it can find at once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod dpos;
mod federation;
mod limits;
mod objects;
mod pop;
mod rewards;
mod sections;
mod validate;
mod vault;

pub use dpos::{ApprovalEngineName, DposConfig, RepresentativeEntry};
pub use federation::{ContinentConfig, GlobalConfig, UplinkConfig};
pub use limits::*;
pub use objects::{MAX_OBJECTS_PER_TX_LIMIT, ObjectEngineName, ObjectsConfig};
pub use pop::{MAX_FENCE_VERTICES, PlaceEngineName, PopConfig, parse_fence};
pub use rewards::{RewardEngineName, RewardsConfig};
pub use sections::*;
pub use vault::{VaultConfig, VaultKeyEntry};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub batcher: BatcherConfig,
    #[serde(default)]
    pub flagger: FlaggerConfig,
    #[serde(default)]
    pub prioritizer: PrioritizerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub repair: RepairConfig,
    #[serde(default)]
    pub reads: ReadsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub pop: PopConfig,
    pub limits: LimitsConfig,
    /// Required for a city node; see [`VaultConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultConfig>,
    /// The node above this one (a city's continent, a continent's global node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkConfig>,
    #[serde(default)]
    pub continent: ContinentConfig,
    #[serde(default)]
    pub global: GlobalConfig,
    /// The storage-rewards engine (a city's); see [`RewardsConfig`].
    #[serde(default)]
    pub rewards: RewardsConfig,
    /// Continent nodes: approval of continent batches by representatives.
    #[serde(default)]
    pub dpos: DposConfig,
    #[serde(default)]
    pub objects: ObjectsConfig,
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigErrors {
    pub problems: Vec<String>,
}

const SECTIONS: [&str; 19] = [
    "pop",
    "rewards",
    "dpos",
    "objects",
    "uplink",
    "continent",
    "global",
    "repair",
    "reads",
    "auth",
    "limits",
    "vault",
    "node",
    "intake",
    "batcher",
    "flagger",
    "prioritizer",
    "storage",
    "supervisor",
];

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        Self::parse_in(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses and validates; relative file names in it are relative to the working
    /// directory.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_in(text, Path::new(""))
    }

    /// Parses and validates, with relative file names in it (`[pop] fence_file`) relative
    /// to `dir`. Each section is read on its own so that a mistake in one does not hide
    /// mistakes in the others.
    fn parse_in(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigErrors {
            problems: vec![format!("not valid TOML: {}", e.message())],
        })?;
        let mut problems = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown section [{key}] (expected one of: {})",
                    SECTIONS.join(", ")
                ));
            }
        }
        fn section<T: serde::de::DeserializeOwned + Default>(
            table: &toml::Table,
            name: &str,
            problems: &mut Vec<String>,
        ) -> T {
            match table.get(name) {
                None => T::default(),
                Some(v) => match v.clone().try_into::<T>() {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(format!("[{name}]: {}", e.message()));
                        T::default()
                    }
                },
            }
        }
        let node = match table.get("node") {
            None => {
                problems.push("missing section [node]".into());
                None
            }
            Some(v) => match v.clone().try_into::<NodeConfig>() {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(format!("[node]: {}", e.message()));
                    None
                }
            },
        };
        let config = node.map(|node| Config {
            node,
            intake: section(&table, "intake", &mut problems),
            batcher: section(&table, "batcher", &mut problems),
            flagger: section(&table, "flagger", &mut problems),
            prioritizer: section(&table, "prioritizer", &mut problems),
            storage: section(&table, "storage", &mut problems),
            supervisor: section(&table, "supervisor", &mut problems),
            repair: section(&table, "repair", &mut problems),
            reads: section(&table, "reads", &mut problems),
            auth: section(&table, "auth", &mut problems),
            pop: section(&table, "pop", &mut problems),
            limits: section(&table, "limits", &mut problems),
            vault: section(&table, "vault", &mut problems),
            uplink: section(&table, "uplink", &mut problems),
            continent: section(&table, "continent", &mut problems),
            global: section(&table, "global", &mut problems),
            rewards: section(&table, "rewards", &mut problems),
            dpos: section(&table, "dpos", &mut problems),
            objects: section(&table, "objects", &mut problems),
        });
        let mut config = config;
        if let Some(c) = &mut config {
            c.pop.resolve_paths(dir);
            problems.extend(c.validate());
        }
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigErrors { problems }),
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.storage
            .log_dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("log"))
    }

    /// The largest request body this node's role accepts: a transaction on a city, a batch
    /// on a storage node, a submission of batches on a continent or global node.
    pub fn largest_request_body(&self) -> usize {
        match self.node.role {
            Role::City => self.intake.max_body_bytes,
            Role::Light | Role::Full => self.batcher.max_batch_bytes + BATCH_ENVELOPE_BYTES,
            Role::Continent | Role::Global => crate::messages::federation::MAX_SUBMISSION_BYTES,
            Role::Representative => crate::messages::dpos::MAX_DPOS_BODY_BYTES,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }
}

/// Decodes a base64 ML-DSA-65 public key, checking its length.
pub fn decode_public_key(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    (key.len() == crate::crypto::PUBLIC_KEY_LEN).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"
[node]
id = "light-1"
role = "light"
listen = "127.0.0.1:7001"
data_dir = "/tmp/x"
continent = "asia"
"#;

    /// A storage node serving one city: the smallest valid config of its role.
    static MINIMAL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine;
        let key = crate::crypto::SigningKey::from_seed([7; 32]).unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode(key.public_key());
        format!(
            "{NODE}\n[[auth.peers]]\nid = \"city-1\"\nrole = \"city\"\npublic_key = \"{key}\"\n"
        )
    });

    #[test]
    fn a_storage_node_must_name_who_it_serves_with_valid_keys() {
        let err = Config::parse(NODE).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("[[auth.peers]]"), "{all}");
        let text = format!(
            "{NODE}\n[[auth.peers]]\nid = \"light-2\"\nrole = \"light\"\npublic_key = \"AAAA\"\n"
        );
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("role must be city or continent"), "{all}");
        assert!(all.contains("not a base64 ML-DSA-65 public key"), "{all}");
        assert_eq!(err.problems.len(), 2, "{all}");
    }

    #[test]
    fn minimal_storage_node_gets_defaults() {
        let c = Config::parse(&MINIMAL).unwrap();
        assert_eq!(c.batcher, BatcherConfig::default());
        assert_eq!(c.storage.capacity_for(Role::Light), DEFAULT_LIGHT_CAPACITY);
        assert_eq!(c.log_dir(), PathBuf::from("/tmp/x/log"));
        // The effective config written back parses to the same thing.
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let m = MINIMAL.as_str();
        let text = format!(
            "{m}\n[batcher]\nmax_delay = \"soon\"\n[flagger]\ncolour = 1\n[extra]\n[supervisor]\nchain = [\"light\", \"full\"]\n"
        );
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("[batcher]"), "{all}");
        assert!(all.contains("unknown field `colour`"), "{all}");
        assert!(all.contains("unknown section [extra]"), "{all}");
        assert!(all.contains("must end with \"log\""), "{all}");
        assert_eq!(err.problems.len(), 4, "{all}");
    }

    #[test]
    fn city_needs_a_city_and_enough_light_nodes() {
        let text = MINIMAL.replace("role = \"light\"", "role = \"city\"");
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("city is required"), "{all}");
        assert!(all.contains("only 0 light nodes"), "{all}");
    }

    #[test]
    fn names_with_control_or_invisible_characters_are_refused() {
        let text = MINIMAL
            .replace("\"light-1\"", "\"light\\u0000-1\"")
            .replace("\"asia\"", "\"as\\u202Eia\"");
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("node.id") && all.contains("U+0000"), "{all}");
        assert!(
            all.contains("node.continent") && all.contains("U+202E"),
            "{all}"
        );
        assert_eq!(err.problems.len(), 2, "{all}");
    }

    #[test]
    fn limits_have_safe_defaults_and_are_checked() {
        let c = Config::parse(&MINIMAL).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert!(c.limits.body_budget_per_peer_bytes >= c.largest_request_body());
        assert!((c.limits.max_connections as u64) + RESERVED_FILES <= 20_000);

        let m = MINIMAL.as_str();
        let text = format!(
            "{m}\n[limits]\nmax_connections_per_peer = 0\nbody_idle_timeout = \"1m\"\nbody_budget_bytes = 1048576\nbody_budget_per_peer_bytes = 2097152\n"
        );
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("max_connections_per_peer must be"), "{all}");
        assert!(all.contains("body_idle_timeout must not exceed"), "{all}");
        assert!(
            all.contains(
                "(1048576 in effect) must hold the largest body this node accepts (2162688)"
            ),
            "{all}"
        );
        assert_eq!(err.problems.len(), 3, "{all}");

        let text = format!("{m}\n[limits]\nmax_connections = 512\nkeep_alive = \"30s\"\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.limits.max_connections, 512);
        assert_eq!(
            c.limits.connections_per_peer(),
            512,
            "a peer never gets more than all"
        );
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "it round-trips");
    }

    #[test]
    fn federation_levels_name_who_may_forward_to_them() {
        let peer = |role: &str, extra: &str| {
            format!(
                "[[auth.peers]]\nid = \"x-1\"\nrole = \"{role}\"\n{extra}public_key = \"{}\"\n",
                MINIMAL
                    .split("public_key = \"")
                    .nth(1)
                    .unwrap()
                    .trim_end()
                    .trim_end_matches('"')
            )
        };
        let node = |role: &str| NODE.replace("role = \"light\"", &format!("role = \"{role}\""));

        let err = Config::parse(&node("continent")).unwrap_err();
        assert!(
            err.problems.join("\n").contains("must list the cities"),
            "{err}"
        );
        let err = Config::parse(&format!("{}{}", node("continent"), peer("city", ""))).unwrap_err();
        assert!(
            err.problems.join("\n").contains("city is required"),
            "{err}"
        );
        let text = format!(
            "{}{}",
            node("continent"),
            peer("city", "city = \"tokyo\"\n")
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.continent, ContinentConfig::default());
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "it round-trips");

        let err = Config::parse(&format!(
            "{}{}",
            node("global"),
            peer("city", "city = \"tokyo\"\n")
        ))
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("serves continents, not a city"), "{all}");
        assert!(all.contains("must list its continents"), "{all}");
        let text = format!(
            "{}{}[global]\ncheckpoint_interval = \"0s\"\n[uplink]\nid = \"up\"\nurl = \"http://127.0.0.1:1\"\n",
            node("global"),
            peer("continent", "continent = \"asia\"\n")
        );
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("checkpoint_interval must be positive"),
            "{all}"
        );
        assert!(all.contains("a global node forwards nothing"), "{all}");
        assert_eq!(err.problems.len(), 2, "{all}");

        // A city's uplink: checked, and optional.
        let m = MINIMAL.replace("role = \"light\"", "role = \"continent\"");
        let m = m.replace("role = \"city\"\n", "role = \"city\"\ncity = \"tokyo\"\n");
        let text = format!("{m}[uplink]\nid = \"\"\nurl = \"ftp://x\"\nmax_items = 0\n");
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("[uplink] id"), "{all}");
        assert!(all.contains("not an http(s) URL"), "{all}");
        assert!(all.contains("max_items"), "{all}");
        assert_eq!(err.problems.len(), 3, "{all}");
    }

    #[test]
    fn policies_and_actor_names_are_checked_by_name() {
        let m = MINIMAL.as_str();
        let text = format!(
            "{m}\n[flagger]\npolicy = \"loudest\"\n[prioritizer]\npolicy = \"random\"\n[supervisor.restart]\nflagger = \"transient\"\nintkae = \"temporary\"\n"
        );
        let err = Config::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("[flagger]") && all.contains("loudest"),
            "{all}"
        );
        assert!(
            all.contains("[prioritizer]") && all.contains("random"),
            "{all}"
        );
        assert!(all.contains("intkae"), "{all}");
        assert_eq!(err.problems.len(), 3, "{all}");

        let m = MINIMAL.as_str();
        let text = format!(
            "{m}\n[flagger]\npolicy = \"always_immediate\"\n[supervisor.restart]\nflagger = \"transient\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.flagger.policy, FlagPolicyName::AlwaysImmediate);
        assert_eq!(
            c.supervisor.restart.get(&ActorName::Flagger),
            Some(&RestartType::Transient)
        );
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "it round-trips");
    }

    #[test]
    fn the_objects_section_names_an_engine_and_bounds_declarations() {
        let c = Config::parse(&format!(
            "{}\n[objects]\nengine = \"off\"\nmax_per_tx = 8\n",
            *MINIMAL
        ))
        .unwrap();
        assert_eq!(c.objects.engine, ObjectEngineName::Off);
        assert_eq!(c.objects.max_per_tx, 8);
        let c = Config::parse(&MINIMAL).unwrap();
        assert_eq!(c.objects, ObjectsConfig::default());
        let err = Config::parse(&format!(
            "{}\n[objects]\nengine = \"sui\"\nmax_per_tx = 0\n",
            *MINIMAL
        ))
        .unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.starts_with("[objects]")),
            "{err}"
        );
        let err =
            Config::parse(&format!("{}\n[objects]\nmax_per_tx = 5000\n", *MINIMAL)).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.contains("max_per_tx")),
            "{err}"
        );
    }
}
