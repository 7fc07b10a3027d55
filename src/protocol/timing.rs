//! Timers without a clock: the heartbeat of a session and the Agent's reconnect backoff.
//!
//! Callers pass the current time as `now` and the randomness as a number, so the same
//! inputs always give the same decisions. Each session owns its own [`Heartbeat`] on the
//! thread that runs the session.

use std::time::{Duration, Instant};

/// Maximum period either timer uses. Larger values are treated as this one, so adding a
/// period to an `Instant` cannot overflow.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Liveness tracking of one session.
///
/// Any received byte proves the peer alive. When nothing has arrived for `interval`, the
/// session sends a Ping, repeated every `interval`. When nothing has arrived for `timeout`,
/// the peer counts as dead.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_receive: Instant,
    /// Time of the last Ping that [`Heartbeat::poll`] asked for, or the creation time.
    last_ping: Instant,
}

/// Action the session must take after [`Heartbeat::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing until [`Heartbeat::next_deadline`].
    Wait,
    /// Send a Ping now. The heartbeat has already recorded it as sent.
    SendPing,
    /// Nothing was received for the timeout, so the session must be closed.
    Dead,
}

impl Heartbeat {
    /// Creates a heartbeat that counts `now` as the last receive and the last ping.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Self {
            interval: interval.min(MAX_PERIOD),
            timeout: timeout.min(MAX_PERIOD),
            last_receive: now,
            last_ping: now,
        }
    }

    /// Records that bytes arrived from the peer at `now`.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_receive = self.last_receive.max(now);
    }

    /// Decides what to do at `now`.
    ///
    /// Returns [`HeartbeatAction::Dead`] once `timeout` has passed since the last receive.
    /// Otherwise it returns [`HeartbeatAction::SendPing`] once `interval` has passed both
    /// since the last receive and since the last ping, and records `now` as the last ping.
    pub fn poll(&mut self, now: Instant) -> HeartbeatAction {
        let silent_for = now.saturating_duration_since(self.last_receive);
        if silent_for >= self.timeout {
            return HeartbeatAction::Dead;
        }

        let since_ping = now.saturating_duration_since(self.last_ping);
        if silent_for >= self.interval && since_ping >= self.interval {
            self.last_ping = now;
            return HeartbeatAction::SendPing;
        }
        HeartbeatAction::Wait
    }

    /// Returns the earliest time at which [`Heartbeat::poll`] may return something other
    /// than [`HeartbeatAction::Wait`].
    pub fn next_deadline(&self) -> Instant {
        let dead_at = self.last_receive + self.timeout;
        let ping_at = self.last_receive.max(self.last_ping) + self.interval;
        dead_at.min(ping_at)
    }
}

/// Exponential reconnect delay with jitter.
///
/// The base delay starts at `initial` and doubles after every attempt up to `max`. Each
/// returned delay is drawn uniformly from half the base delay to the whole of it, so Agents
/// that lost the Server at the same moment do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Base delay of the next attempt.
    current: Duration,
}

impl Backoff {
    /// Creates a backoff. An `initial` above `max` is lowered to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.min(MAX_PERIOD);
        let initial = initial.min(max);
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// Returns the delay before the next attempt and doubles the base delay.
    ///
    /// `random` is a uniformly random number from the caller. The result lies in
    /// `[base / 2, base]`.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let base = self.current;
        self.current = base.saturating_mul(2).min(self.max);
        jitter(base, random)
    }

    /// Returns to the initial delay, for use after a session was established.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Maps `random` uniformly onto `[base / 2, base]` with nanosecond resolution.
fn jitter(base: Duration, random: u64) -> Duration {
    // `base` is at most MAX_PERIOD, so its nanoseconds fit a u64.
    let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    let span = u128::from(nanos - half) + 1;

    // Multiplying and keeping the high 64 bits scales `random` to 0..span without the
    // bias of a remainder.
    let offset = (u128::from(random) * span) >> 64;
    let offset = u64::try_from(offset).unwrap_or(u64::MAX);
    Duration::from_nanos(half + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn heartbeat_waits_before_interval() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(10 * SECOND, 30 * SECOND, start);
        assert_eq!(heartbeat.poll(start), HeartbeatAction::Wait);
        assert_eq!(heartbeat.poll(start + 9 * SECOND), HeartbeatAction::Wait);
        assert_eq!(heartbeat.next_deadline(), start + 10 * SECOND);
    }

    #[test]
    fn heartbeat_pings_each_interval_then_dies() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(10 * SECOND, 30 * SECOND, start);

        assert_eq!(
            heartbeat.poll(start + 10 * SECOND),
            HeartbeatAction::SendPing
        );
        assert_eq!(heartbeat.poll(start + 10 * SECOND), HeartbeatAction::Wait);
        assert_eq!(heartbeat.next_deadline(), start + 20 * SECOND);
        assert_eq!(heartbeat.poll(start + 19 * SECOND), HeartbeatAction::Wait);
        assert_eq!(
            heartbeat.poll(start + 20 * SECOND),
            HeartbeatAction::SendPing
        );
        assert_eq!(heartbeat.next_deadline(), start + 30 * SECOND);
        assert_eq!(heartbeat.poll(start + 29 * SECOND), HeartbeatAction::Wait);
        assert_eq!(heartbeat.poll(start + 30 * SECOND), HeartbeatAction::Dead);
        assert_eq!(heartbeat.poll(start + 31 * SECOND), HeartbeatAction::Dead);
    }

    #[test]
    fn heartbeat_receive_postpones_ping_and_death() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(10 * SECOND, 30 * SECOND, start);

        heartbeat.on_receive(start + 8 * SECOND);
        assert_eq!(heartbeat.poll(start + 10 * SECOND), HeartbeatAction::Wait);
        assert_eq!(heartbeat.next_deadline(), start + 18 * SECOND);
        assert_eq!(
            heartbeat.poll(start + 18 * SECOND),
            HeartbeatAction::SendPing
        );

        heartbeat.on_receive(start + 25 * SECOND);
        assert_eq!(heartbeat.poll(start + 34 * SECOND), HeartbeatAction::Wait);
        assert_eq!(
            heartbeat.poll(start + 35 * SECOND),
            HeartbeatAction::SendPing
        );
        assert_eq!(heartbeat.poll(start + 44 * SECOND), HeartbeatAction::Wait);
        assert_eq!(
            heartbeat.poll(start + 45 * SECOND),
            HeartbeatAction::SendPing
        );
        assert_eq!(heartbeat.poll(start + 54 * SECOND), HeartbeatAction::Wait);
        assert_eq!(heartbeat.poll(start + 55 * SECOND), HeartbeatAction::Dead);
    }

    #[test]
    fn heartbeat_ignores_older_receive_time() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(10 * SECOND, 30 * SECOND, start);
        heartbeat.on_receive(start + 5 * SECOND);
        heartbeat.on_receive(start + 2 * SECOND);
        assert_eq!(heartbeat.next_deadline(), start + 15 * SECOND);
    }

    #[test]
    fn heartbeat_timeout_below_interval_dies_first() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(10 * SECOND, 5 * SECOND, start);
        assert_eq!(heartbeat.next_deadline(), start + 5 * SECOND);
        assert_eq!(heartbeat.poll(start + 5 * SECOND), HeartbeatAction::Dead);
    }

    #[test]
    fn heartbeat_huge_periods_do_not_overflow() {
        let start = Instant::now();
        let heartbeat = Heartbeat::new(Duration::MAX, Duration::MAX, start);
        assert_eq!(heartbeat.next_deadline(), start + MAX_PERIOD);
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let mut backoff = Backoff::new(SECOND, 10 * SECOND);
        let upper: Vec<Duration> = (0..6).map(|_| backoff.next_delay(u64::MAX)).collect();
        assert_eq!(upper, [1, 2, 4, 8, 10, 10].map(|s| s * SECOND));
    }

    #[test]
    fn backoff_jitter_bounds() {
        let mut backoff = Backoff::new(4 * SECOND, 60 * SECOND);
        assert_eq!(backoff.next_delay(0), 2 * SECOND);
        assert_eq!(backoff.next_delay(u64::MAX), 8 * SECOND);
        assert_eq!(backoff.next_delay(1 << 63), 12 * SECOND);
    }

    #[test]
    fn backoff_jitter_stays_in_range() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut backoff = Backoff::new(Duration::from_millis(750), SECOND);
            let delay = backoff.next_delay(state);
            assert!(delay >= Duration::from_millis(375), "{delay:?}");
            assert!(delay <= Duration::from_millis(750), "{delay:?}");
        }
    }

    #[test]
    fn backoff_reset_returns_to_initial() {
        let mut backoff = Backoff::new(SECOND, 60 * SECOND);
        for _ in 0..4 {
            backoff.next_delay(0);
        }
        assert_eq!(backoff.next_delay(u64::MAX), 16 * SECOND);
        backoff.reset();
        assert_eq!(backoff.next_delay(u64::MAX), SECOND);
    }

    #[test]
    fn backoff_initial_above_max() {
        let mut backoff = Backoff::new(10 * SECOND, 3 * SECOND);
        assert_eq!(backoff.next_delay(u64::MAX), 3 * SECOND);
        assert_eq!(backoff.next_delay(0), Duration::from_millis(1500));
    }
}
