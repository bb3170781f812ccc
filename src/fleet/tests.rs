//! Unit tests of the instance side of the fleet.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::testing::demo;
use crate::{Sqlite, Tandem};

/// A poller tick reads the state row, then adopts it. A switch that
/// commits in between (this instance alone: no deploying mode, so no
/// acknowledgement to wait for) must not be undone by adopting the row
/// read before it: the cached version would go back to N-1 and steady
/// calls would run the N-1 binding on version N (and fail after contract).
#[test]
fn a_state_row_read_before_a_switch_is_not_adopted_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("t.db").display().to_string();
    let db = Tandem::<Sqlite>::builder(&url, demo::catalog().unwrap())
        .poll_interval(Duration::from_secs(3600)) // no ticks but the ones below
        .backfill(2, "copy emails", demo::backfill_emails)
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    db.refresh().unwrap();
    let read_before = db.state().unwrap();
    db.upgrader().switch().unwrap();
    assert_eq!((db.live_version().get(), db.steady()), (2, true));
    // The rest of a tick that read the state before the switch.
    super::adopt(&db.shared, &read_before, false).unwrap();
    assert_eq!(
        db.live_version().get(),
        2,
        "a state row read before the switch rolled the cached version back"
    );
    assert!(db.steady());
    // A tick after it changes nothing either.
    db.refresh().unwrap();
    assert_eq!((db.live_version().get(), db.steady()), (2, true));
}

trait Which: Send + Sync {
    fn which(&self) -> u32;
}
struct Binding(u32);
impl Which for Binding {
    fn which(&self) -> u32 {
        self.0
    }
}

/// A process frozen past its lease (a VM pause, a stopped container)
/// resumes with a stale cache: the fleet may have switched without it.
/// Its first calls must not trust the cache before the watchdog thread
/// has run: every steady call checks the lease itself.
#[test]
fn a_call_checks_the_lease_itself() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("t.db").display().to_string();
    let db = Tandem::<Sqlite>::builder(&url, demo::catalog().unwrap())
        .poll_interval(Duration::from_secs(3600))
        .backfill(2, "copy emails", demo::backfill_emails)
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    db.upgrader().switch().unwrap();
    let repo = crate::Repository::<dyn Which>::builder("which")
        .binding(1, std::sync::Arc::new(Binding(1)))
        .binding(2, std::sync::Arc::new(Binding(2)))
        .build()
        .unwrap();
    let which = || db.call(&repo, |r, _| Ok::<_, crate::Error>(r.which()));
    assert_eq!((which().unwrap(), db.steady()), (2, true));
    // Resumed after the pause: the cache says version 1 and the lease
    // deadline has passed; the watchdog (a 50 ms tick) has not run yet.
    db.shared.live.store(1, Ordering::Release);
    db.shared.lease_deadline.store(0, Ordering::Release);
    assert!(!db.steady());
    assert_eq!(which().unwrap(), 2, "a call trusted a stale lease");
    assert_eq!(db.shared.path.load(), crate::shared::CallPath::Undrained);
}

/// The notice a switch gives fleet rows in the renewal grace (computed
/// from the upgrader's settings) is at least twice the longest a
/// confirmation read of any instance with the same lease keeps its steady
/// path open, whatever either's poll interval: the fleet shares a lease,
/// not a poll. Seen failing before the fix (a span of up to two polls): at
/// a 6 s lease an instance polling every second kept the path 1.5 s per
/// read, and an upgrader polling every 5 ms gave 2 s of notice.
#[test]
fn the_notice_covers_every_confirmation_span_of_the_same_lease() {
    let open = |lease: Duration, poll: Duration| {
        Tandem::<Sqlite>::builder(":memory:", demo::catalog().unwrap())
            .pool_size(1)
            .lease(lease)
            .poll_interval(poll)
            .open()
            .unwrap()
    };
    let polls = [5, 50, 200, 1_000, 2_000, 10_000].map(Duration::from_millis);
    for lease in [150, 2_000, 6_000, 30_000, 120_000].map(Duration::from_millis) {
        // A lease shorter than two polls is raised to two: another lease.
        let fitting: Vec<_> = polls.iter().filter(|p| **p * 2 <= lease).collect();
        let handles: Vec<_> = fitting.iter().map(|p| open(lease, **p)).collect();
        for upgrader in &handles {
            for instance in &handles {
                let notice = super::notice(&upgrader.shared);
                let span = super::confirm_span(&instance.shared);
                assert!(
                    notice >= span * 2,
                    "lease {lease:?}: an upgrader polling every {:?} gives {notice:?} of notice, \
                     an instance polling every {:?} confirms for {span:?}",
                    upgrader.shared.poll_interval,
                    instance.shared.poll_interval
                );
                assert!(
                    super::confirm_every(&instance.shared) <= span / 2 + Duration::from_millis(1)
                );
            }
        }
    }
}
