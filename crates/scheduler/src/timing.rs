//! When a schedule fires: cron patterns (5 fields, croner) in the schedule's IANA timezone, or a
//! fixed interval; and the `missed_runs` policy applied when claiming a due schedule.
//!
//! DST: a cron time that does not exist locally (spring forward) fires at the first instant
//! after the gap; a local time that occurs twice (fall back) fires once, at its first instant.

use chrono::{DateTime, Duration, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use gathering_domain::scheduler::{ClaimPlan, ClaimPlanner, MissedRuns, Schedule};

/// How a schedule's occurrences are spaced.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron { cron: Box<Cron>, tz: Tz },
    Interval { secs: i64 },
}

/// Parses a 5-field cron pattern (`minute hour day-of-month month day-of-week`).
pub fn parse_cron(pattern: &str) -> Result<Cron, String> {
    let fields = pattern.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "cron pattern must have exactly 5 fields (minute hour day-of-month month \
             day-of-week), got {fields}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| format!("invalid cron pattern: {e}"))
}

/// Parses an IANA timezone name such as `Europe/Paris`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown timezone `{name}`: use an IANA name such as Europe/Paris"))
}

impl Timing {
    /// The timing of a schedule; an error names what is invalid.
    pub fn from_schedule(s: &Schedule) -> Result<Timing, String> {
        Timing::new(s.cron.as_deref(), s.interval_secs, s.timezone.as_deref())
    }

    pub fn new(
        cron: Option<&str>,
        interval_secs: Option<i64>,
        timezone: Option<&str>,
    ) -> Result<Timing, String> {
        match (cron, interval_secs) {
            (Some(c), None) => {
                let tz = match timezone {
                    Some(name) => parse_timezone(name)?,
                    None => Tz::UTC,
                };
                Ok(Timing::Cron {
                    cron: Box::new(parse_cron(c)?),
                    tz,
                })
            }
            (None, Some(secs)) if secs >= 1 => Ok(Timing::Interval { secs }),
            (None, Some(_)) => Err("interval_secs must be at least 1".to_owned()),
            _ => Err("exactly one of cron and interval_secs is required".to_owned()),
        }
    }

    /// The first occurrence strictly after `after`. `anchor` is a past or present occurrence
    /// that fixes an interval's phase (occurrences are `anchor + k * interval`); cron ignores it.
    /// `None` when there is no further occurrence.
    pub fn next_after(&self, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Interval { secs } => {
                let step = Duration::seconds(*secs);
                if anchor > after {
                    return Some(anchor);
                }
                let elapsed = (after - anchor).num_milliseconds();
                let steps = elapsed / step.num_milliseconds() + 1;
                let steps = i32::try_from(steps).ok()?;
                anchor.checked_add_signed(step.checked_mul(steps)?)
            }
            Timing::Cron { cron, tz } => {
                let mut from = after.with_timezone(tz);
                // A fall-back hour repeats local times; each fires once, at its first instant.
                // Bounded: a pattern can hit at most 60 repeated minutes in a row.
                for _ in 0..64 {
                    let next = cron.find_next_occurrence(&from, false).ok()?;
                    match tz.from_local_datetime(&next.naive_local()) {
                        LocalResult::Ambiguous(earlier, later)
                            if next == later && earlier != later =>
                        {
                            from = next;
                        }
                        _ => return Some(next.with_timezone(&Utc)),
                    }
                }
                None
            }
        }
    }

    /// The first occurrence after `now` for a new or re-timed schedule.
    pub fn first_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Interval { secs } => now.checked_add_signed(Duration::seconds(*secs)),
            Timing::Cron { .. } => self.next_after(now, now),
        }
    }
}

/// The claim policy: which occurrence of a due schedule runs, and when it is due next.
///
/// An occurrence due no longer than `misfire_grace` ago is on time and runs. An older one was
/// missed (no instance ran then): `skip` drops it, `run_once` runs exactly one catch-up. Either
/// way `next_run_at` moves to the first occurrence after `now`, so the backlog never replays.
#[derive(Debug, Clone, Copy)]
pub struct Planner {
    pub misfire_grace: Duration,
}

impl Planner {
    pub fn new(misfire_grace: Duration) -> Self {
        Self { misfire_grace }
    }
}

impl ClaimPlanner for Planner {
    fn plan(&self, s: &Schedule, now: DateTime<Utc>) -> ClaimPlan {
        let Some(due) = s.next_run_at else {
            return ClaimPlan {
                run: None,
                next_run_at: None,
            };
        };
        let timing = match Timing::from_schedule(s) {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(schedule_id = %s.id, %error, "stored schedule has invalid timing; it will not fire");
                return ClaimPlan {
                    run: None,
                    next_run_at: None,
                };
            }
        };
        let next_run_at = timing.next_after(due, now.max(due));
        let missed = due < now - self.misfire_grace;
        let run = if !missed || s.missed_runs == MissedRuns::RunOnce {
            Some(due)
        } else {
            None
        };
        ClaimPlan { run, next_run_at }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use gathering_domain::scheduler::{ActionType, OverlapPolicy};
    use gathering_domain::{Clock, ManualClock};
    use serde_json::json;
    use uuid::Uuid;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(p: &str, tz: Option<&str>) -> Timing {
        Timing::new(Some(p), None, tz).unwrap()
    }

    fn schedule(
        timing: (Option<&str>, Option<i64>),
        due: DateTime<Utc>,
        missed: MissedRuns,
    ) -> Schedule {
        Schedule {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            name: "s".into(),
            cron: timing.0.map(str::to_owned),
            interval_secs: timing.1,
            timezone: None,
            action_type: ActionType::CallApi,
            action_config: json!({}),
            enabled: true,
            missed_runs: missed,
            overlap: OverlapPolicy::Skip,
            max_executions: None,
            execution_count: 0,
            next_run_at: Some(due),
            created_at: due,
            updated_at: due,
        }
    }

    #[test]
    fn cron_must_have_exactly_five_fields() {
        let e = parse_cron("* * * *").unwrap_err();
        assert!(e.contains("exactly 5 fields"), "{e}");
        assert!(parse_cron("0 * * * * *").is_err());
        assert!(parse_cron("*/5 * * * *").is_ok());
        let e = parse_cron("61 * * * *").unwrap_err();
        assert!(e.starts_with("invalid cron pattern"), "{e}");
        assert!(parse_cron("a b c d e").is_err());
    }

    #[test]
    fn unknown_timezones_are_refused() {
        assert!(parse_timezone("Europe/Paris").is_ok());
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(Timing::new(Some("* * * * *"), None, Some("Nope/Nope")).is_err());
    }

    #[test]
    fn cron_and_interval_are_exclusive_and_interval_positive() {
        assert!(Timing::new(Some("* * * * *"), Some(5), None).is_err());
        assert!(Timing::new(None, None, None).is_err());
        assert!(Timing::new(None, Some(0), None).is_err());
        assert!(Timing::new(None, Some(1), None).is_ok());
    }

    #[test]
    fn cron_next_is_strictly_after_in_utc_by_default() {
        let t = cron("*/15 * * * *", None);
        let now = utc("2026-01-10T10:07:30Z");
        assert_eq!(t.next_after(now, now), Some(utc("2026-01-10T10:15:00Z")));
        let on = utc("2026-01-10T10:15:00Z");
        assert_eq!(t.next_after(on, on), Some(utc("2026-01-10T10:30:00Z")));
    }

    #[test]
    fn cron_runs_in_the_schedules_timezone() {
        // 09:00 in Paris in winter is 08:00 UTC, in summer 07:00 UTC.
        let t = cron("0 9 * * *", Some("Europe/Paris"));
        let w = utc("2026-01-10T12:00:00Z");
        assert_eq!(t.next_after(w, w), Some(utc("2026-01-11T08:00:00Z")));
        let s = utc("2026-07-10T12:00:00Z");
        assert_eq!(t.next_after(s, s), Some(utc("2026-07-11T07:00:00Z")));
    }

    #[test]
    fn nonexistent_local_time_fires_right_after_the_spring_forward_gap() {
        // Europe/Paris 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never exists.
        let t = cron("30 2 * * *", Some("Europe/Paris"));
        let before = utc("2026-03-28T12:00:00Z");
        let first = t.next_after(before, before).unwrap();
        assert_eq!(first, utc("2026-03-29T01:00:00Z"));
        // The next day is normal again: 02:30 CEST = 00:30 UTC.
        assert_eq!(
            t.next_after(first, first),
            Some(utc("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn wildcard_minutes_in_the_gap_are_skipped() {
        // "30 * * * *" in Paris on 2026-03-29: 01:30 CET (00:30Z), then 03:30 CEST (01:30Z).
        let t = cron("30 * * * *", Some("Europe/Paris"));
        let at = utc("2026-03-29T00:30:00Z");
        assert_eq!(t.next_after(at, at), Some(utc("2026-03-29T01:30:00Z")));
    }

    #[test]
    fn ambiguous_local_time_fires_once_on_fall_back() {
        // Europe/Paris 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens at 00:30Z
        // and again at 01:30Z. It fires once, at the first.
        let daily = cron("30 2 * * *", Some("Europe/Paris"));
        let before = utc("2026-10-24T12:00:00Z");
        let first = daily.next_after(before, before).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(
            daily.next_after(first, first),
            Some(utc("2026-10-26T01:30:00Z"))
        );

        let hourly = cron("30 * * * *", Some("Europe/Paris"));
        let at = utc("2026-10-25T00:30:00Z"); // 02:30 CEST
        // 02:30 CET (01:30Z) repeats a local time already fired: next is 03:30 CET (02:30Z).
        assert_eq!(hourly.next_after(at, at), Some(utc("2026-10-25T02:30:00Z")));
    }

    #[test]
    fn interval_keeps_its_phase_from_the_anchor() {
        let t = Timing::new(None, Some(10), None).unwrap();
        let anchor = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            t.next_after(anchor, utc("2026-01-01T00:00:25Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            t.next_after(anchor, anchor),
            Some(utc("2026-01-01T00:00:10Z"))
        );
        let clock = ManualClock::new(anchor);
        assert_eq!(
            t.first_after(clock.now()),
            Some(utc("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn on_time_occurrence_runs_and_advances_to_the_next_future_one() {
        let clock = ManualClock::new(utc("2026-01-01T00:00:00.200Z"));
        let due = utc("2026-01-01T00:00:00Z");
        let s = schedule((None, Some(1)), due, MissedRuns::Skip);
        let plan = Planner::new(Duration::seconds(30)).plan(&s, clock.now());
        assert_eq!(plan.run, Some(due));
        assert_eq!(plan.next_run_at, Some(utc("2026-01-01T00:00:01Z")));
    }

    #[test]
    fn skip_policy_drops_missed_occurrences() {
        let due = utc("2026-01-01T00:00:00Z");
        let clock = ManualClock::new(due);
        clock.advance(Duration::hours(3) + Duration::seconds(30));
        let s = schedule((Some("0 * * * *"), None), due, MissedRuns::Skip);
        let plan = Planner::new(Duration::seconds(60)).plan(&s, clock.now());
        assert_eq!(plan.run, None);
        assert_eq!(plan.next_run_at, Some(utc("2026-01-01T04:00:00Z")));
    }

    #[test]
    fn run_once_policy_runs_exactly_one_catch_up() {
        let due = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T03:00:30Z");
        let s = schedule((Some("0 * * * *"), None), due, MissedRuns::RunOnce);
        let plan = Planner::new(Duration::seconds(60)).plan(&s, now);
        assert_eq!(plan.run, Some(due));
        // Not 01:00: the other missed occurrences are not replayed.
        assert_eq!(plan.next_run_at, Some(utc("2026-01-01T04:00:00Z")));
    }

    #[test]
    fn schedule_without_next_run_or_with_bad_timing_never_fires() {
        let due = utc("2026-01-01T00:00:00Z");
        let mut s = schedule((Some("bad"), None), due, MissedRuns::RunOnce);
        let p = Planner::new(Duration::seconds(60)).plan(&s, due);
        assert_eq!(
            p,
            ClaimPlan {
                run: None,
                next_run_at: None
            }
        );
        s.cron = Some("* * * * *".into());
        s.next_run_at = None;
        let p = Planner::new(Duration::seconds(60)).plan(&s, due);
        assert_eq!(p.run, None);
    }
}
