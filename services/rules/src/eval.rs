//! The state of one rule for one device, and how a reading moves it: idle, pending (waiting out `for`), firing.
//!
//! Time is the readings' own timestamps, not the clock of the engine: a replayed or delayed stream gives the same
//! alerts, and `for` is tested without sleeping. A device that goes silent while pending does not fire:
//! silence is no evidence that the condition still holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a (rule, device) pair stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// The condition has held since this reading's time.
    Pending {
        since: DateTime<Utc>,
    },
    /// An alert is firing; it is resolved when a reading breaks the condition.
    Firing {
        alert: Uuid,
    },
}

/// A (rule, device) pair's phase and the newest reading time seen, so older readings arriving late are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    pub phase: Phase,
    pub last_ts: Option<DateTime<Utc>>,
}

impl Default for Track {
    fn default() -> Self {
        Track { phase: Phase::Idle, last_ts: None }
    }
}

/// What the engine must do after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Store and publish a new alert, then call [`Track::fired`].
    Fire,
    /// The condition stopped holding: resolve this alert.
    Resolve {
        alert: Uuid,
    },
}

impl Track {
    /// A track whose alert is firing (loaded from the database at start).
    pub fn firing(alert: Uuid) -> Track {
        Track { phase: Phase::Firing { alert }, last_ts: None }
    }

    /// Moves the track by one reading at `ts` for which the condition `holds` or not.
    pub fn step(&mut self, holds: bool, ts: DateTime<Utc>, hold_for: Duration) -> Step {
        if self.last_ts.is_some_and(|last| ts < last) {
            return Step::Nothing;
        }
        self.last_ts = Some(ts);
        match (self.phase, holds) {
            (Phase::Firing { .. }, true) => Step::Nothing,
            (Phase::Firing { alert }, false) => {
                self.phase = Phase::Idle;
                Step::Resolve { alert }
            }
            (_, false) => {
                self.phase = Phase::Idle;
                Step::Nothing
            }
            (Phase::Idle, true) => {
                self.phase = Phase::Pending { since: ts };
                if hold_for.is_zero() { Step::Fire } else { Step::Nothing }
            }
            (Phase::Pending { since }, true) => {
                let held = (ts - since).to_std().unwrap_or_default();
                if held >= hold_for { Step::Fire } else { Step::Nothing }
            }
        }
    }

    /// The alert is stored (or was already firing): do not fire again while the condition holds.
    pub fn fired(&mut self, alert: Uuid) {
        self.phase = Phase::Firing { alert };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("in range")
    }

    /// Feeds `(seconds, holds)` readings and returns the steps, marking each fire as stored.
    fn run(hold_for: Duration, readings: &[(i64, bool)]) -> Vec<Step> {
        let mut track = Track::default();
        let mut alerts = 0u128;
        readings
            .iter()
            .map(|&(seconds, holds)| {
                let step = track.step(holds, at(seconds), hold_for);
                if step == Step::Fire {
                    alerts += 1;
                    track.fired(Uuid::from_u128(alerts));
                }
                step
            })
            .collect()
    }

    #[test]
    fn fires_once_and_resolves() {
        use Step::*;
        let steps = run(Duration::ZERO, &[(0, false), (1, true), (2, true), (3, true), (4, false), (5, true)]);
        assert_eq!(steps, vec![Nothing, Fire, Nothing, Nothing, Resolve { alert: Uuid::from_u128(1) }, Fire]);
    }

    #[test]
    fn waits_out_for() {
        use Step::*;
        let five = Duration::from_secs(5);
        // Held 0..2 then broken; held again from 3: fires at 9 (6 s after 3), not at 6 (3 s).
        let steps = run(five, &[(0, true), (1, true), (2, false), (3, true), (6, true), (9, true), (10, true)]);
        assert_eq!(steps, vec![Nothing, Nothing, Nothing, Nothing, Nothing, Fire, Nothing]);
        // Exactly `for` is enough.
        assert_eq!(run(five, &[(0, true), (5, true)]), vec![Nothing, Fire]);
    }

    #[test]
    fn skips_late_readings() {
        use Step::*;
        let steps = run(Duration::ZERO, &[(5, true), (3, false), (6, true), (7, false)]);
        assert_eq!(steps, vec![Fire, Nothing, Nothing, Resolve { alert: Uuid::from_u128(1) }]);
    }
}
