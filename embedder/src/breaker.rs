//! Circuit breaker around inference.
//!
//! [`CircuitBreaker`] is a pure state machine: every method takes `now`, so the transitions are
//! tested without sleeping. [`Breaker`] is the shared shell the server uses: a mutex, an injectable
//! [`Clock`] and a callback that mirrors the state into the `circuit_breaker_state` gauge.
//!
//! Closed: requests flow; outcomes go into a rolling window. When the window holds at least
//! `min_requests` outcomes and the failure share reaches `failure_ratio`, the breaker opens.
//! Open: requests fail fast until `cooldown` has passed, then the breaker is half-open.
//! Half-open: at most `half_open_probes` requests are admitted; one failure re-opens it, that many
//! successes close it with a fresh window.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Length of the rolling window of outcomes considered while closed.
    pub window: Duration,
    /// Fewer outcomes than this in the window never open the breaker.
    pub min_requests: u32,
    /// Failure share (0..=1) that opens the breaker.
    pub failure_ratio: f64,
    /// Time spent open before probes are admitted.
    pub cooldown: Duration,
    /// Probes admitted while half-open; this many successes close the breaker.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_requests: 20,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(10),
            half_open_probes: 3,
        }
    }
}

/// The state as exported: `circuit_breaker_state` is 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// Proof of admission. Its outcome only counts in the state period (epoch) it was issued in, so
/// a slow request admitted before the breaker opened cannot close it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    epoch: u64,
    probe: bool,
}

impl Admission {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Why a request was not admitted, and when it is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub retry_after: Duration,
}

#[derive(Debug)]
enum Phase {
    Closed(RollingWindow),
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    phase: Phase,
    /// Incremented on every transition.
    epoch: u64,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        let window = RollingWindow::new(cfg.window);
        Self {
            cfg,
            phase: Phase::Closed(window),
            epoch: 0,
        }
    }

    /// The state at `now` (an elapsed cool-down turns open into half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        match self.phase {
            Phase::Closed(_) => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Result<Admission, Rejected> {
        self.advance(now);
        let epoch = self.epoch;
        match &mut self.phase {
            Phase::Closed(_) => Ok(Admission {
                epoch,
                probe: false,
            }),
            Phase::Open { until } => Err(Rejected {
                retry_after: until.saturating_duration_since(now),
            }),
            Phase::HalfOpen {
                in_flight,
                successes,
            } => {
                if *in_flight + *successes < self.cfg.half_open_probes {
                    *in_flight += 1;
                    Ok(Admission { epoch, probe: true })
                } else {
                    // Probes are in flight; their outcome decides soon.
                    Err(Rejected {
                        retry_after: Duration::from_secs(1),
                    })
                }
            }
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&mut self, now: Instant, admission: Admission, outcome: Outcome) {
        self.advance(now);
        if admission.epoch != self.epoch {
            return;
        }
        match &mut self.phase {
            Phase::Closed(window) => {
                window.push(now, outcome);
                let (total, failures) = window.counts(now);
                if total >= u64::from(self.cfg.min_requests)
                    && total > 0
                    && failures as f64 / total as f64 >= self.cfg.failure_ratio
                {
                    self.open(now);
                }
            }
            Phase::HalfOpen {
                in_flight,
                successes,
            } if admission.probe => match outcome {
                Outcome::Failure => self.open(now),
                Outcome::Success => {
                    *in_flight = in_flight.saturating_sub(1);
                    *successes += 1;
                    if *successes >= self.cfg.half_open_probes {
                        self.transition(Phase::Closed(RollingWindow::new(self.cfg.window)));
                    }
                }
            },
            _ => {}
        }
    }

    /// An admitted request ended without an outcome (rejected by the queue, client gone):
    /// a half-open probe slot is handed back.
    pub fn release(&mut self, admission: Admission) {
        if admission.epoch != self.epoch || !admission.probe {
            return;
        }
        if let Phase::HalfOpen { in_flight, .. } = &mut self.phase {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn advance(&mut self, now: Instant) {
        if let Phase::Open { until } = self.phase {
            if now >= until {
                self.transition(Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                });
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.transition(Phase::Open {
            until: now + self.cfg.cooldown,
        });
    }

    fn transition(&mut self, phase: Phase) {
        self.phase = phase;
        self.epoch += 1;
    }
}

/// Outcome counts in buckets of a tenth of the window, so memory stays bounded at any rate.
#[derive(Debug)]
struct RollingWindow {
    length: Duration,
    bucket: Duration,
    buckets: VecDeque<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    start: Instant,
    total: u64,
    failures: u64,
}

impl RollingWindow {
    fn new(length: Duration) -> Self {
        let bucket = (length / 10).max(Duration::from_millis(1));
        Self {
            length,
            bucket,
            buckets: VecDeque::new(),
        }
    }

    fn push(&mut self, now: Instant, outcome: Outcome) {
        self.evict(now);
        let fresh = match self.buckets.back() {
            Some(b) => now.saturating_duration_since(b.start) >= self.bucket,
            None => true,
        };
        if fresh {
            self.buckets.push_back(Bucket {
                start: now,
                total: 0,
                failures: 0,
            });
        }
        let b = self.buckets.back_mut().expect("bucket just ensured");
        b.total += 1;
        if outcome == Outcome::Failure {
            b.failures += 1;
        }
    }

    fn counts(&mut self, now: Instant) -> (u64, u64) {
        self.evict(now);
        self.buckets
            .iter()
            .fold((0, 0), |(t, f), b| (t + b.total, f + b.failures))
    }

    fn evict(&mut self, now: Instant) {
        while let Some(b) = self.buckets.front() {
            if now.saturating_duration_since(b.start) >= self.length {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Source of time, injectable so the shared breaker can be driven by tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new() -> Self {
        Self(Mutex::new(Instant::now()))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type StateListener = Box<dyn Fn(BreakerState) + Send + Sync>;

/// The breaker shared by all request handlers.
pub struct Breaker {
    machine: Mutex<CircuitBreaker>,
    clock: Arc<dyn Clock>,
    on_state: StateListener,
}

impl Breaker {
    pub fn new(
        cfg: BreakerConfig,
        clock: Arc<dyn Clock>,
        on_state: impl Fn(BreakerState) + Send + Sync + 'static,
    ) -> Arc<Self> {
        let b = Arc::new(Self {
            machine: Mutex::new(CircuitBreaker::new(cfg)),
            clock,
            on_state: Box::new(on_state),
        });
        (b.on_state)(BreakerState::Closed);
        b
    }

    pub fn state(&self) -> BreakerState {
        self.with(|m, now| m.state(now))
    }

    /// Admits a request; the returned ticket must be told the outcome (dropping it unreported
    /// hands a probe slot back).
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Rejected> {
        let admission = self.with(|m, now| m.admit(now))?;
        Ok(Ticket {
            breaker: Arc::clone(self),
            admission: Some(admission),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut CircuitBreaker, Instant) -> T) -> T {
        let now = self.clock.now();
        // A panic while holding this lock cannot leave the machine inconsistent (no partial
        // updates), so a poisoned lock is simply reused.
        let mut m = self.machine.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut m, now);
        let state = m.state(now);
        drop(m);
        (self.on_state)(state);
        out
    }
}

/// An admitted request's claim on the breaker.
pub struct Ticket {
    breaker: Arc<Breaker>,
    admission: Option<Admission>,
}

impl Ticket {
    pub fn record(mut self, outcome: Outcome) {
        if let Some(a) = self.admission.take() {
            self.breaker.with(|m, now| m.record(now, a, outcome));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.breaker.with(|m, _| m.release(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 4,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn run(b: &mut CircuitBreaker, now: Instant, outcome: Outcome) {
        let a = b.admit(now).expect("admitted");
        b.record(now, a, outcome);
    }

    /// A breaker driven open: 4 failures at t0.
    fn opened(t0: Instant) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        b
    }

    #[test]
    fn starts_closed_and_admits() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(!b.admit(t0).unwrap().is_probe());
    }

    #[test]
    fn failures_below_min_requests_keep_it_closed() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..3 {
            run(&mut b, t0, Outcome::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn ratio_below_threshold_keeps_it_closed() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        // 3 failures in 7 = 43 % < 50 %
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Success);
        }
        for _ in 0..3 {
            run(&mut b, t0, Outcome::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn ratio_at_threshold_with_min_count_opens() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        run(&mut b, t0, Outcome::Success);
        run(&mut b, t0, Outcome::Success);
        run(&mut b, t0, Outcome::Failure);
        assert_eq!(b.state(t0), BreakerState::Closed);
        run(&mut b, t0, Outcome::Failure);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..3 {
            run(&mut b, t0, Outcome::Failure);
        }
        // 11 s later the three failures are gone: one more failure is 1 of 1, below min count.
        let t1 = t0 + Duration::from_secs(11);
        run(&mut b, t1, Outcome::Failure);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn open_fails_fast_with_retry_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let r = b.admit(t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(3));
    }

    #[test]
    fn cooldown_elapsed_means_half_open() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_only_the_probe_budget() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        let p1 = b.admit(t1).unwrap();
        let p2 = b.admit(t1).unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        assert!(b.admit(t1).is_err());
    }

    #[test]
    fn probe_successes_close_it() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        run(&mut b, t1, Outcome::Success);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        run(&mut b, t1, Outcome::Success);
        assert_eq!(b.state(t1), BreakerState::Closed);
        // Fresh window: the failures that opened it are forgotten.
        run(&mut b, t1, Outcome::Failure);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens_with_a_new_cooldown() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        run(&mut b, t1, Outcome::Success);
        run(&mut b, t1, Outcome::Failure);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(
            b.admit(t1 + Duration::from_secs(1))
                .unwrap_err()
                .retry_after,
            Duration::from_secs(4)
        );
        assert_eq!(b.state(t1 + Duration::from_secs(5)), BreakerState::HalfOpen);
    }

    #[test]
    fn released_probe_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        let p1 = b.admit(t1).unwrap();
        let _p2 = b.admit(t1).unwrap();
        assert!(b.admit(t1).is_err());
        b.release(p1);
        assert!(b.admit(t1).is_ok());
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        let slow = b.admit(t0).unwrap();
        for _ in 0..4 {
            run(&mut b, t0, Outcome::Failure);
        }
        // A request admitted while closed reports success after the breaker opened: still open.
        b.record(t0, slow, Outcome::Success);
        assert_eq!(b.state(t0), BreakerState::Open);

        // A probe from an earlier half-open period cannot affect the next one.
        let t1 = t0 + Duration::from_secs(5);
        let old_probe = b.admit(t1).unwrap();
        run(&mut b, t1, Outcome::Failure);
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
        b.record(t2, old_probe, Outcome::Failure);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
    }

    #[test]
    fn non_probe_outcome_in_half_open_is_ignored() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        let closed_admission = b.admit(t0).unwrap();
        let mut b2 = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b2.state(t1), BreakerState::HalfOpen);
        // Epochs differ, and it is not a probe: nothing changes.
        b2.record(t1, closed_admission, Outcome::Failure);
        assert_eq!(b2.state(t1), BreakerState::HalfOpen);
        b.release(closed_admission);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn shared_breaker_follows_the_injected_clock_and_reports_state() {
        let clock = Arc::new(ManualClock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let b = Breaker::new(cfg(), clock.clone(), move |s| {
            seen2.lock().unwrap().push(s.gauge_value())
        });
        for _ in 0..4 {
            b.admit().unwrap().record(Outcome::Failure);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        clock.advance(Duration::from_secs(5));
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        drop(probe); // unreported: slot returned
        b.admit().unwrap().record(Outcome::Success);
        b.admit().unwrap().record(Outcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.first(), Some(&0));
        assert!(seen.contains(&1) && seen.contains(&2));
        assert_eq!(seen.last(), Some(&0));
    }
}
