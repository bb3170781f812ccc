//! The one backoff of tandem's retry loops: exponential, with jitter, each
//! wait capped by what is left of a deadline. Pure `std`: the bottom layer.

use std::thread;
use std::time::Duration;

/// Exponential backoff: `first`, doubling up to `cap`, each wait plus up to
/// its own length of jitter (so that processes retrying against each other
/// drift apart), or none for [`polling`](Backoff::polling).
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
    jitter: bool,
}

impl Default for Backoff {
    /// 5 ms doubling to 500 ms: phase transactions and cleanups.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(5), Duration::from_millis(500))
    }
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            next: first.max(Duration::from_micros(1)),
            cap: cap.max(first),
            jitter: true,
        }
    }

    /// Without jitter: for polling (a lock while readers keep priority, a
    /// lease, SQLite's WAL switch), where the wait is the polling interval
    /// itself.
    pub(crate) fn polling(first: Duration, cap: Duration) -> Self {
        Backoff {
            jitter: false,
            ..Backoff::new(first, cap)
        }
    }

    pub(crate) fn wait(&mut self) {
        self.wait_at_most(None);
    }

    /// As [`wait`](Self::wait), never longer than `left`.
    pub(crate) fn wait_at_most(&mut self, left: Option<Duration>) {
        let extra = if self.jitter {
            jitter(self.next)
        } else {
            Duration::ZERO
        };
        thread::sleep((self.next + extra).min(left.unwrap_or(Duration::MAX)));
        self.next = self.next.saturating_mul(2).min(self.cap);
    }
}

/// Up to `base` of jitter, from the clock's low bits (no RNG needed for this).
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base_ns = u32::try_from(base.as_nanos()).unwrap_or(u32::MAX).max(1);
    Duration::from_nanos(u64::from(nanos % base_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_never_waits_past_what_is_left() {
        let mut b = Backoff::new(Duration::from_micros(10), Duration::from_micros(40));
        let waits: Vec<Duration> = (0..5)
            .map(|_| {
                let w = b.next;
                b.wait();
                w
            })
            .collect();
        let us = |n| Duration::from_micros(n);
        assert_eq!(waits, [us(10), us(20), us(40), us(40), us(40)]);
        let mut long = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let start = std::time::Instant::now();
        long.wait_at_most(Some(Duration::from_millis(1)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
