use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn config(failures: u32, successes: u32, probes: u32) -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        failure_threshold: failures,
        recovery_timeout: Duration::from_secs(60),
        success_threshold: successes,
        half_open_max_probes: probes,
        operation_timeout: Duration::from_secs(30),
    }
}

fn open_breaker(t0: Instant) -> CircuitBreaker {
    let mut b = CircuitBreaker::new(config(5, 3, 2));
    for _ in 0..5 {
        b.on_failure(t0);
    }
    assert_eq!(b.state(), BreakerState::Open);
    b
}

#[test]
fn breaker_opens_after_five_consecutive_failures() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(5, 3, 3));
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
fn a_success_between_failures_restarts_the_count() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(3, 1, 1));
    b.on_failure(t0);
    b.on_failure(t0);
    b.on_success();
    assert_eq!(b.consecutive_failures(), 0);
    b.on_failure(t0);
    b.on_failure(t0);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn open_breaker_rejects_with_the_time_left() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    let (a, t) = b.admit(t0 + Duration::from_secs(45));
    assert_eq!(
        a,
        Admission::Rejected {
            retry_after: Duration::from_secs(15)
        }
    );
    assert_eq!(t, None);
    assert_eq!(b.rejected(), 1);
    assert_eq!(
        b.time_until_half_open(t0 + Duration::from_secs(50)),
        Some(Duration::from_secs(10))
    );
    // Failures while open change nothing.
    assert_eq!(b.on_failure(t0), None);
}

#[test]
fn recovery_timeout_turns_open_into_half_open_on_the_next_admission() {
    let t0 = Instant::now();
    let mut b = open_breaker(t0);
    let (a, t) = b.admit(t0 + Duration::from_secs(60));
    assert_eq!(a, Admission::Probe);
    let t = t.unwrap();
    assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
    assert_eq!(t.reason, TransitionReason::RecoveryTimeout);
}

#[test]
fn half_open_admits_only_the_probe_limit() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(61);
    let mut b = open_breaker(t0);
    assert_eq!(b.admit(later).0, Admission::Probe);
    assert_eq!(b.admit(later).0, Admission::Probe);
    assert_eq!(
        b.admit(later).0,
        Admission::Rejected {
            retry_after: Duration::from_secs(1)
        }
    );
    b.probe_abandoned();
    assert_eq!(b.admit(later).0, Admission::Probe);
}

#[test]
fn success_threshold_probe_successes_close_it() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(61);
    let mut b = open_breaker(t0);
    let mut closed = None;
    for _ in 0..3 {
        assert_eq!(b.admit(later).0, Admission::Probe);
        closed = b.on_probe_success(later);
    }
    let t = closed.unwrap();
    assert_eq!(
        (t.from, t.to),
        (BreakerState::HalfOpen, BreakerState::Closed)
    );
    assert_eq!(t.reason, TransitionReason::ProbesSucceeded);
    assert_eq!(b.consecutive_failures(), 0);
    assert_eq!(b.transitions(), 3);
}

#[test]
fn a_failure_while_half_open_reopens_it_for_a_full_recovery_timeout() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(61);
    let mut b = open_breaker(t0);
    b.admit(later);
    b.on_probe_success(later);
    let t = b.on_failure(later).unwrap();
    assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
    assert_eq!(t.reason, TransitionReason::ProbeFailed);
    assert_eq!(b.time_until_half_open(later), Some(Duration::from_secs(60)));
    // Successes outside probes do not count in half-open, nor after it reopened.
    b.on_success();
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn forced_open_rejects_until_reset_and_ignores_time() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(config(5, 3, 3));
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
    let (a, t) = b.admit(t0 + Duration::from_secs(3600));
    assert!(matches!(a, Admission::Rejected { .. }));
    assert_eq!(t, None);
    let t = b.reset().unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::ForcedOpen,
            BreakerState::Closed,
            TransitionReason::Reset
        )
    );
    assert_eq!(b.admit(t0).0, Admission::Allowed);
}

#[test]
fn disabled_admits_everything_and_counts_nothing() {
    let t0 = Instant::now();
    let mut b = CircuitBreaker::new(BreakerConfig {
        enabled: false,
        ..config(1, 1, 1)
    });
    assert_eq!(b.state(), BreakerState::Disabled);
    for _ in 0..10 {
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.admit(t0).0, Admission::Allowed);
    }
    let mut b = CircuitBreaker::new(config(1, 1, 1));
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

/// The reference model: the rules of the module docs written as plainly as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed { failures: u32 },
    Open { until: u64 },
    HalfOpen { successes: u32, in_flight: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Admit,
    Success,
    ProbeSuccess,
    Failure,
    Abandon,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Admit),
        1 => Just(Op::Success),
        2 => Just(Op::ProbeSuccess),
        3 => Just(Op::Failure),
        1 => Just(Op::Abandon),
        2 => (0u64..40).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn breaker_matches_the_reference_model(
        failures in 1u32..5,
        successes in 1u32..4,
        probes in 1u32..4,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let recovery = 30u64;
        let mut b = CircuitBreaker::new(BreakerConfig {
            recovery_timeout: Duration::from_secs(recovery),
            ..config(failures, successes, probes)
        });
        let t0 = Instant::now();
        let mut now = 0u64;
        let mut model = ModelState::Closed { failures: 0 };
        let mut transitions = 0u64;
        for op in ops {
            let at = t0 + Duration::from_secs(now);
            match op {
                Op::Advance(s) => now += s,
                Op::Admit => {
                    if let ModelState::Open { until } = model {
                        if now >= until {
                            model = ModelState::HalfOpen { successes: 0, in_flight: 0 };
                            transitions += 1;
                        }
                    }
                    let expected = match &mut model {
                        ModelState::Closed { .. } => Admission::Allowed,
                        ModelState::HalfOpen { in_flight, .. } if *in_flight < probes => {
                            *in_flight += 1;
                            Admission::Probe
                        }
                        ModelState::HalfOpen { .. } => Admission::Rejected { retry_after: Duration::from_secs(1) },
                        ModelState::Open { until } => Admission::Rejected { retry_after: Duration::from_secs(*until - now) },
                    };
                    prop_assert_eq!(b.admit(at).0, expected);
                }
                Op::Success => {
                    if let ModelState::Closed { failures } = &mut model { *failures = 0; }
                    b.on_success();
                }
                Op::ProbeSuccess => {
                    if let ModelState::HalfOpen { successes: s, in_flight } = &mut model {
                        *in_flight = in_flight.saturating_sub(1);
                        *s += 1;
                        if *s >= successes {
                            model = ModelState::Closed { failures: 0 };
                            transitions += 1;
                        }
                    }
                    b.on_probe_success(at);
                }
                Op::Failure => {
                    match &mut model {
                        ModelState::Closed { failures: f } => {
                            *f += 1;
                            if *f >= failures {
                                model = ModelState::Open { until: now + recovery };
                                transitions += 1;
                            }
                        }
                        ModelState::HalfOpen { .. } => {
                            model = ModelState::Open { until: now + recovery };
                            transitions += 1;
                        }
                        ModelState::Open { .. } => {}
                    }
                    b.on_failure(at);
                }
                Op::Abandon => {
                    if let ModelState::HalfOpen { in_flight, .. } = &mut model {
                        *in_flight = in_flight.saturating_sub(1);
                    }
                    b.probe_abandoned();
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
