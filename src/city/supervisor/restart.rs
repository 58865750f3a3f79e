//! The restart policy, modelled on Erlang/OTP, as a pure decision: given the
//! `[supervisor]` config, the children in start order, the restart history and one exit,
//! what happens next. No actors here, so every rule is unit-tested on its own.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{ActorName, RestartType, Strategy, SupervisorConfig};

/// What the supervisor does about one child's exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The child stays stopped (a `temporary` child, or a `transient` one that exited
    /// normally); the node is not ready from then on.
    Stay,
    /// Too many restarts within the window: the supervisor gives up.
    GiveUp { restarts: usize },
    /// Stop the rest of `group` and start all of it again, in start order, after `delay`.
    Restart {
        group: Vec<ActorName>,
        delay: Duration,
    },
}

/// The restart history the intensity limit and the backoff are computed from.
#[derive(Debug, Default)]
pub struct History {
    /// When each recent restart happened.
    restarts: VecDeque<Instant>,
    /// Restarts per child inside the current window, for its backoff.
    streak: HashMap<ActorName, u32>,
}

impl History {
    /// Decides about `failed`, which exited (`abnormal` for a panic or an error) at `now`,
    /// among `children` (in start order), and records the restart if there is one.
    pub fn decide(
        &mut self,
        cfg: &SupervisorConfig,
        children: &[ActorName],
        failed: ActorName,
        abnormal: bool,
        now: Instant,
    ) -> Decision {
        let kind = cfg
            .restart
            .get(&failed)
            .copied()
            .unwrap_or(RestartType::Permanent);
        let restart = match kind {
            RestartType::Permanent => true,
            RestartType::Transient => abnormal,
            RestartType::Temporary => false,
        };
        if !restart {
            return Decision::Stay;
        }

        // Intensity: more than max_restarts within `within` and we give up.
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.within)
        {
            self.restarts.pop_front();
        }
        if self.restarts.is_empty() {
            self.streak.clear();
        }
        self.restarts.push_back(now);
        if self.restarts.len() > cfg.max_restarts as usize {
            return Decision::GiveUp {
                restarts: self.restarts.len(),
            };
        }

        let group = match cfg.strategy {
            Strategy::OneForOne => vec![failed],
            Strategy::OneForAll => children.to_vec(),
            Strategy::RestForOne => {
                let at = children
                    .iter()
                    .position(|c| *c == failed)
                    .unwrap_or(children.len());
                children[at..].to_vec()
            }
        };
        let streak = self.streak.entry(failed).or_insert(0);
        let delay = cfg
            .backoff_initial
            .mul_f64(cfg.backoff_multiplier.powi(*streak as i32))
            .min(cfg.backoff_max);
        *streak += 1;
        Decision::Restart { group, delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActorName::*;

    const CHILDREN: [ActorName; 4] = [StorageWriter, Prioritizer, Flagger, Intake];

    fn cfg(strategy: Strategy) -> SupervisorConfig {
        SupervisorConfig {
            strategy,
            max_restarts: 3,
            within: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(35),
            backoff_multiplier: 2.0,
            ..SupervisorConfig::default()
        }
    }

    fn group(d: Decision) -> Vec<ActorName> {
        match d {
            Decision::Restart { group, .. } => group,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn strategies_choose_the_group() {
        let now = Instant::now();
        let mut h = History::default();
        let one = h.decide(&cfg(Strategy::OneForOne), &CHILDREN, Flagger, true, now);
        assert_eq!(group(one), vec![Flagger]);
        let all = h.decide(&cfg(Strategy::OneForAll), &CHILDREN, Flagger, true, now);
        assert_eq!(group(all), CHILDREN.to_vec());
        let rest = h.decide(
            &cfg(Strategy::RestForOne),
            &CHILDREN,
            Prioritizer,
            true,
            now,
        );
        assert_eq!(group(rest), vec![Prioritizer, Flagger, Intake]);
    }

    #[test]
    fn restart_types_decide_whether_to_restart() {
        let now = Instant::now();
        let mut c = cfg(Strategy::OneForOne);
        c.restart.insert(Flagger, RestartType::Transient);
        c.restart.insert(Intake, RestartType::Temporary);
        let mut h = History::default();
        assert_eq!(
            h.decide(&c, &CHILDREN, Flagger, false, now),
            Decision::Stay,
            "a transient child that exited normally stays down"
        );
        assert_eq!(
            group(h.decide(&c, &CHILDREN, Flagger, true, now)),
            [Flagger]
        );
        assert_eq!(h.decide(&c, &CHILDREN, Intake, true, now), Decision::Stay);
        assert_eq!(
            group(h.decide(&c, &CHILDREN, Prioritizer, false, now)),
            [Prioritizer],
            "permanent children always come back"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets_after_a_quiet_window() {
        let c = cfg(Strategy::OneForOne);
        let mut h = History::default();
        let start = Instant::now();
        let delays: Vec<Duration> = (0..3)
            .map(|i| {
                match h.decide(
                    &c,
                    &CHILDREN,
                    Flagger,
                    true,
                    start + Duration::from_millis(i),
                ) {
                    Decision::Restart { delay, .. } => delay,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(
            delays,
            [10, 20, 35].map(Duration::from_millis),
            "doubling, capped at backoff_max"
        );
        let later = start + Duration::from_secs(60);
        match h.decide(&c, &CHILDREN, Flagger, true, later) {
            Decision::Restart { delay, .. } => assert_eq!(delay, Duration::from_millis(10)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_restarts_within_the_window_give_up() {
        let c = cfg(Strategy::OneForOne);
        let mut h = History::default();
        let now = Instant::now();
        for child in [Flagger, Intake, Prioritizer] {
            assert!(matches!(
                h.decide(&c, &CHILDREN, child, true, now),
                Decision::Restart { .. }
            ));
        }
        assert_eq!(
            h.decide(&c, &CHILDREN, Flagger, true, now),
            Decision::GiveUp { restarts: 4 }
        );
        // Restarts older than the window no longer count.
        let mut h = History::default();
        for i in 0..10 {
            let at = now + Duration::from_secs(11 * i);
            assert!(matches!(
                h.decide(&c, &CHILDREN, Flagger, true, at),
                Decision::Restart { .. }
            ));
        }
    }
}
