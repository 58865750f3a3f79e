//! The fault schedule: which nodes go down next, when, and for how long, drawn from a
//! seeded generator so one seed always gives one sequence of faults.

use std::time::Duration;

use super::{DOWNTIME, FaultKind, LIGHT_OUTAGE_CHANCE, STORAGE_BLACKOUT_CHANCE};

/// Uniform in `[lo, hi]`, millisecond resolution.
pub(super) fn between(rng: &mut fastrand::Rng, (lo, hi): (Duration, Duration)) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(rng.u64(lo..=hi.max(lo)))
}

/// The nodes a fault may take down.
pub(super) struct Victims {
    pub(super) lights: Vec<String>,
    pub(super) fulls: Vec<String>,
    /// The city's id, if it may be killed.
    pub(super) city: Option<String>,
}

/// The next fault: after `gap`, take `nodes` down for `downtime`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FaultPlan {
    pub(super) gap: Duration,
    pub(super) kind: FaultKind,
    pub(super) nodes: Vec<String>,
    pub(super) downtime: Duration,
}

/// Draws the next fault from `rng`. It draws the same numbers whatever it picks, so one
/// seed always gives one sequence of faults.
pub(super) fn plan_fault(
    rng: &mut fastrand::Rng,
    interval: (Duration, Duration),
    v: &Victims,
) -> FaultPlan {
    let gap = between(rng, interval);
    let roll = rng.f64();
    let pick = rng.f64();
    let downtime = between(rng, DOWNTIME);
    let (kind, nodes) = if roll < STORAGE_BLACKOUT_CHANCE {
        let all = v.lights.iter().chain(&v.fulls).cloned().collect();
        (FaultKind::StorageBlackout, all)
    } else if roll < STORAGE_BLACKOUT_CHANCE + LIGHT_OUTAGE_CHANCE {
        (FaultKind::LightOutage, v.lights.clone())
    } else {
        // Shares of a single kill: lights half, fulls a quarter, the city a quarter.
        let (light_share, full_share) = if v.city.is_some() {
            (0.5, 0.25)
        } else {
            (0.65, 0.35)
        };
        let from = |ids: &[String], x: f64| {
            ids[((x * ids.len() as f64) as usize).min(ids.len() - 1)].clone()
        };
        let victim = match &v.city {
            _ if pick < light_share => from(&v.lights, pick / light_share),
            _ if pick < light_share + full_share => {
                from(&v.fulls, (pick - light_share) / full_share)
            }
            Some(city) => city.clone(),
            None => from(&v.fulls, 0.999),
        };
        (FaultKind::Kill, vec![victim])
    };
    FaultPlan {
        gap,
        kind,
        nodes,
        downtime,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    fn victims(city: bool) -> Victims {
        Victims {
            lights: (1..=6).map(|i| format!("light-{i}")).collect(),
            fulls: (1..=2).map(|i| format!("full-{i}")).collect(),
            city: city.then(|| "city-tokyo".to_string()),
        }
    }

    #[test]
    fn faults_take_one_node_down_except_for_the_rare_outages() {
        let interval = (Duration::from_secs(1), Duration::from_secs(3));
        for city in [true, false] {
            let v = victims(city);
            let mut rng = fastrand::Rng::with_seed(7);
            let mut kinds = BTreeMap::new();
            let mut hit = HashSet::new();
            for _ in 0..5000 {
                let plan = plan_fault(&mut rng, interval, &v);
                assert!(plan.gap >= interval.0 && plan.gap <= interval.1);
                assert!(plan.downtime >= DOWNTIME.0 && plan.downtime <= DOWNTIME.1);
                match plan.kind {
                    FaultKind::Kill => assert_eq!(plan.nodes.len(), 1),
                    FaultKind::LightOutage => assert_eq!(plan.nodes, v.lights),
                    FaultKind::StorageBlackout => assert_eq!(plan.nodes.len(), 8),
                    other => panic!("planned {other:?}"),
                }
                *kinds.entry(format!("{:?}", plan.kind)).or_insert(0u32) += 1;
                hit.extend(plan.nodes);
            }
            assert_eq!(hit.contains("city-tokyo"), city);
            assert_eq!(hit.len(), if city { 9 } else { 8 });
            // 10% light outages, 5% blackouts, give or take.
            assert!((350..650).contains(&kinds["LightOutage"]), "{kinds:?}");
            assert!((150..350).contains(&kinds["StorageBlackout"]), "{kinds:?}");
        }
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..10)
                .map(|_| plan_fault(&mut rng, interval, &victims(true)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn the_fault_schedule_depends_only_on_the_seed() {
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..20)
                .map(|_| between(&mut rng, (Duration::from_secs(1), Duration::from_secs(3))))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(
            draw(7)
                .iter()
                .all(|d| (1000..=3000).contains(&d.as_millis()))
        );
    }
}
