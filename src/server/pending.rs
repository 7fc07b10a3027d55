//! Bookkeeping of the Agent connections a shard is authenticating, and the choice of which
//! one to close when `max_unauthenticated` is reached.
//!
//! A real Agent sends its TLS ClientHello as soon as TCP connects, so a connection that has
//! not sent a whole ClientHello within [`SILENT_GRACE`] is most likely an idle one holding
//! a slot. Those are closed first. A connection that has sent bytes is closed only after half
//! the handshake timeout, so a slow but real Agent can finish. When neither applies, the
//! new connection is closed instead, and the handshakes already started can finish.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::relay::Trigger;

/// How long a connection may stay silent (without a whole ClientHello) before it can be
/// closed to make room. A real Agent's ClientHello arrives with, or just after, the last
/// packet of the TCP handshake, and the accept loop lets each new handshake read before it
/// accepts the next one. Idle
/// connections can hold every slot only by arriving faster than the cap per 50 ms: 5,120
/// per second on each shard with the default cap of 256.
pub const SILENT_GRACE: Duration = Duration::from_millis(50);

/// A handshake in progress.
pub struct PendingHandshake {
    since: Instant,
    /// Trigger that closes the handshake early.
    evict: Rc<Trigger>,
}

/// Handshakes in progress on one shard, keyed by a number that grows with each accept, so
/// the first entry of each map is its oldest.
#[derive(Default)]
pub struct PendingHandshakes {
    /// Connections that have not sent a whole ClientHello yet.
    silent: BTreeMap<u64, PendingHandshake>,
    /// Connections that have sent a whole ClientHello.
    spoken: BTreeMap<u64, PendingHandshake>,
}

/// Why [`PendingHandshakes::evict_for_new`] closed a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// It had not sent a whole ClientHello within [`SILENT_GRACE`].
    Silent,
    /// It had run for the spoken grace period without finishing.
    Slow,
}

impl PendingHandshakes {
    pub fn len(&self) -> usize {
        self.silent.len() + self.spoken.len()
    }

    /// Records a new connection `id`, silent so far, and returns its eviction trigger.
    pub fn insert(&mut self, id: u64, now: Instant) -> Rc<Trigger> {
        let evict = Trigger::new();
        self.silent.insert(
            id,
            PendingHandshake {
                since: now,
                evict: Rc::clone(&evict),
            },
        );
        evict
    }

    /// Records that connection `id` has sent a whole ClientHello.
    pub fn mark_spoken(&mut self, id: u64) {
        if let Some(entry) = self.silent.remove(&id) {
            self.spoken.insert(id, entry);
        }
    }

    /// Forgets connection `id`; returns whether it was still recorded.
    pub fn remove(&mut self, id: u64) -> bool {
        self.silent.remove(&id).is_some() || self.spoken.remove(&id).is_some()
    }

    /// Closes a handshake to make room for a new connection: the oldest silent one past
    /// [`SILENT_GRACE`], else the oldest spoken one past `spoken_grace`. Returns `None`, and
    /// closes nothing, when none qualifies.
    pub fn evict_for_new(&mut self, now: Instant, spoken_grace: Duration) -> Option<Evicted> {
        let (map, reason) = if self
            .silent
            .first_key_value()
            .is_some_and(|(_, entry)| now.duration_since(entry.since) >= SILENT_GRACE)
        {
            (&mut self.silent, Evicted::Silent)
        } else if self
            .spoken
            .first_key_value()
            .is_some_and(|(_, entry)| now.duration_since(entry.since) >= spoken_grace)
        {
            (&mut self.spoken, Evicted::Slow)
        } else {
            return None;
        };
        let (_, entry) = map.pop_first().expect("checked above");
        entry.evict.fire();
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPOKEN_GRACE: Duration = Duration::from_secs(5);

    #[test]
    fn silent_connections_go_first_whatever_their_age() {
        let start = Instant::now();
        let mut pending = PendingHandshakes::default();
        let spoken = pending.insert(1, start);
        pending.mark_spoken(1);
        let silent = pending.insert(2, start + Duration::from_secs(3));

        let now = start + Duration::from_secs(10);
        assert_eq!(
            pending.evict_for_new(now, SPOKEN_GRACE),
            Some(Evicted::Silent)
        );
        assert!(silent.is_fired());
        assert!(!spoken.is_fired());
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn young_silent_connections_stay() {
        let start = Instant::now();
        let mut pending = PendingHandshakes::default();
        let silent = pending.insert(1, start);

        let now = start + SILENT_GRACE / 2;
        assert_eq!(pending.evict_for_new(now, SPOKEN_GRACE), None);
        assert!(!silent.is_fired());
        assert_eq!(
            pending.evict_for_new(start + SILENT_GRACE, SPOKEN_GRACE),
            Some(Evicted::Silent)
        );
        assert!(silent.is_fired());
    }

    #[test]
    fn spoken_connections_stay_for_their_grace() {
        let start = Instant::now();
        let mut pending = PendingHandshakes::default();
        let older = pending.insert(1, start);
        let newer = pending.insert(2, start + Duration::from_secs(1));
        pending.mark_spoken(2);
        pending.mark_spoken(1);

        let early = start + SPOKEN_GRACE - Duration::from_millis(1);
        assert_eq!(pending.evict_for_new(early, SPOKEN_GRACE), None);
        let late = start + SPOKEN_GRACE;
        assert_eq!(
            pending.evict_for_new(late, SPOKEN_GRACE),
            Some(Evicted::Slow)
        );
        assert!(older.is_fired(), "the oldest spoken connection goes first");
        assert!(!newer.is_fired());
    }

    #[test]
    fn removed_connections_are_not_evicted() {
        let start = Instant::now();
        let mut pending = PendingHandshakes::default();
        pending.insert(1, start);
        pending.insert(2, start);
        pending.mark_spoken(2);
        assert!(pending.remove(1));
        assert!(pending.remove(2));
        assert!(!pending.remove(2));
        assert_eq!(pending.len(), 0);
        let late = start + Duration::from_secs(60);
        assert_eq!(pending.evict_for_new(late, SPOKEN_GRACE), None);
    }
}
