use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn config(failures: u32, successes: u32) -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        failure_threshold: failures,
        recovery_timeout: Duration::from_secs(1),
        success_threshold: successes,
        operation_timeout: Duration::from_secs(30),
    }
}

fn open_breaker(t0: Instant) -> CircuitBreaker {
    let mut b = CircuitBreaker::new(config(5, 3));
    for _ in 0..5 {
        b.on_failure(t0);
    }
    assert_eq!(b.state(), BreakerState::Open);
    b
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn breaker_opens_after_five_consecutive_failures() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(5, 3));
    for i in 1..5 {
        assert_eq!(b.on_failure(t0), None, "failure {i}");
        assert_eq!(b.consecutive_failures(), i);
    }
    let t = b.on_failure(t0).unwrap();
    assert_eq!(
        t,
        Transition {
            from: BreakerState::Closed,
            to: BreakerState::Open,
            reason: TransitionReason::FailureThreshold,
            consecutive_failures: 5
        }
    );
    assert_eq!(b.transitions(), 1);
}

#[test]
fn a_fatal_failure_opens_it_at_once() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(5, 3));
    let t = b.on_fatal_failure(t0).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::Closed,
            BreakerState::Open,
            TransitionReason::FatalError
        )
    );
    assert_eq!(b.on_fatal_failure(t0), None, "already open");
}

#[test]
fn a_success_between_failures_restarts_the_count() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(3, 1));
    b.on_failure(t0);
    b.on_failure(t0);
    b.on_success();
    assert_eq!(b.consecutive_failures(), 0);
    b.on_failure(t0);
    b.on_failure(t0);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn open_breaker_rejects_until_the_next_probe_and_ignores_calls() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    assert_eq!(
        b.admit(t0 + 40 * MS),
        Admission::Rejected {
            retry_after: FIRST_PROBE_DELAY
        },
        "60 ms to the probe, but never less than the first probe's delay"
    );
    assert_eq!(b.rejected(), 1);
    assert_eq!(b.next_probe_in(t0), Some(FIRST_PROBE_DELAY));
    // Failures and successes of calls change nothing while open: only probes decide.
    assert_eq!(b.on_failure(t0), None);
    b.on_success();
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.start_probe(t0 + 99 * MS), None, "not due yet");
}

#[test]
fn one_probe_at_a_time_and_the_first_success_turns_it_half_open() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    let at = t0 + FIRST_PROBE_DELAY;
    let probe = b.start_probe(at).unwrap();
    assert_eq!(b.start_probe(at), None, "one at a time");
    assert_eq!(b.next_probe_in(at), Some(Duration::ZERO));
    let t = b.on_probe(probe, true, at).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::Open,
            BreakerState::HalfOpen,
            TransitionReason::ProbeSucceeded
        )
    );
    // Half-open still turns calls away; the next probe is due at once.
    assert!(matches!(b.admit(at), Admission::Rejected { .. }));
    let probe = b.start_probe(at).unwrap();
    assert_eq!(b.on_probe(probe, true, at), None);
    let probe = b.start_probe(at).unwrap();
    let t = b.on_probe(probe, true, at).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::HalfOpen,
            BreakerState::Closed,
            TransitionReason::ProbesSucceeded
        )
    );
    assert_eq!(b.admit(at), Admission::Allowed);
    assert_eq!(b.next_probe_in(at), None);
    assert_eq!(b.consecutive_failures(), 0);
}

#[test]
fn failed_probes_back_off_doubling_up_to_the_recovery_timeout() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    let mut at = t0 + FIRST_PROBE_DELAY;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let probe = b.start_probe(at).unwrap();
        assert_eq!(b.on_probe(probe, false, at), None, "stays open");
        let wait = b.next_probe_in(at).unwrap();
        waits.push(wait.as_millis());
        at += wait;
    }
    assert_eq!(waits, [200, 400, 800, 1000, 1000, 1000, 1000, 1000]);
}

#[test]
fn a_failed_probe_while_half_open_reopens_it_and_starts_the_backoff_again() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    let at = t0 + FIRST_PROBE_DELAY;
    let probe = b.start_probe(at).unwrap();
    b.on_probe(probe, true, at);
    let probe = b.start_probe(at).unwrap();
    let t = b.on_probe(probe, false, at).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::HalfOpen,
            BreakerState::Open,
            TransitionReason::ProbeFailed
        )
    );
    assert_eq!(b.next_probe_in(at), Some(FIRST_PROBE_DELAY));
}

#[test]
fn a_probe_from_an_earlier_round_never_counts() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    let at = t0 + FIRST_PROBE_DELAY;
    let stale = b.start_probe(at).unwrap();
    // Reset and opened again while the probe ran: a new round.
    b.reset();
    for _ in 0..5 {
        b.on_failure(at);
    }
    assert_ne!(stale.round(), b.round());
    assert_eq!(b.on_probe(stale, true, at), None);
    assert_eq!(b.state(), BreakerState::Open);
    // And its slot is not held: this round's probe runs when due.
    let fresh = b.start_probe(at + FIRST_PROBE_DELAY).unwrap();
    assert_eq!(fresh.round(), b.round());
}

/// Drives a breaker through an outage of `outage` against a database that refuses until
/// then: probes fail before it and succeed from it on (each taking `probe_takes`). Returns
/// how long after the database came back the breaker closed, and the probes made while it
/// was down.
fn recover(outage: Duration, probe_takes: Duration) -> (Duration, u32) {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(5, 3));
    for _ in 0..5 {
        b.on_failure(t0);
    }
    let back = t0 + outage;
    let mut now = t0;
    let mut probes_while_down = 0;
    loop {
        match b.start_probe(now) {
            Some(probe) => {
                let reached = now >= back;
                probes_while_down += u32::from(!reached);
                now += probe_takes;
                if let Some(t) = b.on_probe(probe, reached, now) {
                    if t.to == BreakerState::Closed {
                        return (now.saturating_duration_since(back), probes_while_down);
                    }
                }
            }
            None => now += b.next_probe_in(now).unwrap(),
        }
    }
}

#[test]
fn outages_of_a_second_a_minute_and_an_hour_close_within_the_recovery_timeout_after() {
    let probe = 5 * MS;
    for (outage, max_probes) in [
        (Duration::from_secs(1), 4),
        (Duration::from_secs(60), 64),
        (Duration::from_secs(3600), 3604),
    ] {
        let (late, probes) = recover(outage, probe);
        // At worst a whole recovery timeout passes before the next probe, then three probes.
        assert!(
            late <= Duration::from_secs(1) + 3 * probe,
            "{outage:?}: closed {late:?} after the database was back"
        );
        // At most one probe per recovery timeout once the backoff has grown.
        assert!(
            probes <= max_probes,
            "{outage:?}: {probes} probes while down"
        );
    }
    // A blip shorter than the first probe's delay: closed by the first three probes.
    let (late, probes) = recover(50 * MS, probe);
    assert_eq!(probes, 0);
    assert!(late <= FIRST_PROBE_DELAY + 3 * probe, "{late:?}");
}

#[test]
fn forced_open_rejects_until_reset_and_is_never_probed() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(5, 3));
    let t = b.force_open().unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::Closed,
            BreakerState::ForcedOpen,
            TransitionReason::ForcedOpen
        )
    );
    assert_eq!(b.force_open(), None);
    let later = t0 + Duration::from_secs(3600);
    assert!(matches!(b.admit(later), Admission::Rejected { .. }));
    assert_eq!(b.start_probe(later), None);
    let t = b.reset().unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::ForcedOpen,
            BreakerState::Closed,
            TransitionReason::Reset
        )
    );
    assert_eq!(b.admit(t0), Admission::Allowed);
}

#[test]
fn disabled_admits_everything_and_counts_nothing() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(BreakerConfig {
        enabled: false,
        ..config(1, 1)
    });
    assert_eq!(b.state(), BreakerState::Disabled);
    for _ in 0..10 {
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_fatal_failure(t0), None);
        assert_eq!(b.admit(t0), Admission::Allowed);
    }
    let mut b = CircuitBreaker::new(config(1, 1));
    let t = b.disable().unwrap();
    assert_eq!(
        (t.from, t.to),
        (BreakerState::Closed, BreakerState::Disabled)
    );
    assert_eq!(b.reset().unwrap().to, BreakerState::Closed);
}

#[test]
fn states_round_trip_through_their_byte() {
    for s in BreakerState::ALL {
        assert_eq!(BreakerState::from_u8(s.to_u8()), s);
    }
}

/// The reference model: the rules of the type's docs written as plainly as possible (times
/// in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed { failures: u32 },
    Open { due: u64, failed: u32 },
    HalfOpen { successes: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Admit,
    Success,
    Failure,
    /// Start a probe if one is due and finish it with this outcome.
    Probe(bool),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Admit),
        1 => Just(Op::Success),
        3 => Just(Op::Failure),
        3 => any::<bool>().prop_map(Op::Probe),
        2 => (0u64..1_500).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn breaker_matches_the_reference_model(
        failures in 1u32..5,
        successes in 1u32..4,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let cap = 1_000u64;
        let mut b = CircuitBreaker::new(config(failures, successes));
        let t0 = Instant::now();
        let mut now = 0u64;
        let mut model = ModelState::Closed { failures: 0 };
        let mut transitions = 0u64;
        let backoff = |failed: u32| (100u64 << failed.min(20)).min(cap);
        for op in ops {
            let at = t0 + Duration::from_millis(now);
            match op {
                Op::Advance(ms) => now += ms,
                Op::Admit => {
                    let expected = match model {
                        ModelState::Closed { .. } => Admission::Allowed,
                        ModelState::Open { due, .. } => Admission::Rejected {
                            retry_after: Duration::from_millis(due.saturating_sub(now).max(100)),
                        },
                        ModelState::HalfOpen { .. } => Admission::Rejected {
                            retry_after: FIRST_PROBE_DELAY,
                        },
                    };
                    prop_assert_eq!(b.admit(at), expected);
                }
                Op::Success => {
                    if let ModelState::Closed { failures } = &mut model { *failures = 0; }
                    b.on_success();
                }
                Op::Failure => {
                    if let ModelState::Closed { failures: f } = &mut model {
                        *f += 1;
                        if *f >= failures {
                            model = ModelState::Open { due: now + 100, failed: 0 };
                            transitions += 1;
                        }
                    }
                    b.on_failure(at);
                }
                Op::Probe(reached) => {
                    let due = match model {
                        ModelState::Closed { .. } => false,
                        ModelState::Open { due, .. } => now >= due,
                        ModelState::HalfOpen { .. } => true,
                    };
                    let probe = b.start_probe(at);
                    prop_assert_eq!(probe.is_some(), due);
                    if let Some(probe) = probe {
                        model = match (model, reached) {
                            (ModelState::Open { .. }, true) | (ModelState::HalfOpen { .. }, true) => {
                                let s = match model { ModelState::HalfOpen { successes } => successes + 1, _ => 1 };
                                if s >= successes {
                                    transitions += 1;
                                    ModelState::Closed { failures: 0 }
                                } else {
                                    if matches!(model, ModelState::Open { .. }) { transitions += 1; }
                                    ModelState::HalfOpen { successes: s }
                                }
                            }
                            (ModelState::Open { failed, .. }, false) => {
                                ModelState::Open { due: now + backoff(failed + 1), failed: failed + 1 }
                            }
                            (ModelState::HalfOpen { .. }, false) => {
                                transitions += 1;
                                ModelState::Open { due: now + 100, failed: 0 }
                            }
                            (closed, _) => closed,
                        };
                        b.on_probe(probe, reached, at);
                    }
                }
            }
            let state = match model {
                ModelState::Closed { .. } => BreakerState::Closed,
                ModelState::Open { .. } => BreakerState::Open,
                ModelState::HalfOpen { .. } => BreakerState::HalfOpen,
            };
            prop_assert_eq!(b.state(), state);
            prop_assert_eq!(b.transitions(), transitions);
            if let ModelState::Closed { failures: f } = model {
                prop_assert_eq!(b.consecutive_failures(), f);
            }
        }
    }
}
