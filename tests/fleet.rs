//! The fleet protocol, on SQLite (one file) and PostgreSQL: instances
//! register and leave, the switch is refused while an instance lacks the new
//! version, deploying mode is acknowledged, a stale lease falls back to the
//! locking path, contract waits for every instance, and calls through a
//! fleet switch all run with the live version.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use tandem::testing::faults::{FleetFaults as _, UpgraderFaults as _};

use common::{accounts_on, AccountsOn};
use tandem::{Backend, Error, Mode, StatePhase, Tandem};

use common::Seen;

/// Runs `threads` callers on `db` until `stop`; each call records (binding
/// version, state version at start, at end); writes are acknowledged.
fn callers<B: Backend>(
    db: &Tandem<B>,
    threads: usize,
    stop: &Arc<AtomicBool>,
    start: &Arc<Barrier>,
) -> Vec<thread::JoinHandle<Seen>>
where
    common::AccountsV1: AccountsOn<B::Connection>,
    common::AccountsV2: AccountsOn<B::Connection>,
{
    (0..threads)
        .map(|n| {
            let (db, stop, start) = (db.clone(), stop.clone(), start.clone());
            thread::spawn(move || {
                let repo = accounts_on::<B::Connection>();
                let (mut calls, mut acked, mut errors) = (Vec::new(), BTreeMap::new(), Vec::new());
                start.wait();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("{}-{n}-{i}@x", db.instance_id().len());
                    let result = if i % 2 == 0 {
                        db.unit_of_work(|s| {
                            let r = s.repo(&repo)?;
                            let before = r.live(s.conn()).unwrap();
                            let id = r.create(s.conn(), "f", &email)?;
                            Ok::<_, Error>((
                                r.version(),
                                before,
                                r.live(s.conn()).unwrap(),
                                Some(id),
                            ))
                        })
                    } else {
                        db.call(&repo, |r, s| {
                            let before = r.live(s.conn()).unwrap();
                            if let Some((id, _)) = acked.iter().next() {
                                r.email(s.conn(), *id)?;
                            }
                            Ok::<_, Error>((r.version(), before, r.live(s.conn()).unwrap(), None))
                        })
                    };
                    match result {
                        Ok((v, before, after, id)) => {
                            calls.push((v, before, after));
                            if let Some(id) = id {
                                acked.insert(id, email);
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                    thread::sleep(Duration::from_micros(200));
                }
                (calls, acked, errors)
            })
        })
        .collect()
}

macro_rules! fleet_suite {
    ($name:ident, $backend:ty, $setup:expr) => {
        mod $name {
            use super::*;

            type B = $backend;

            /// Opens the demo on `url` as an instance serving `serves`, with a short poll.
            fn instance(url: &str, label: &str, serves: std::ops::RangeInclusive<u32>, poll_ms: u64) -> Tandem<B> {
                Tandem::<B>::builder(url, tandem::testing::demo::catalog().unwrap())
                    .serves(serves)
                    .label(label)
                    .pool_size(10)
                    .poll_interval(Duration::from_millis(poll_ms))
                    // Ten polls (at most the longest lease, two hours) on
                    // both backends: PostgreSQL's default is 30 s.
                    .lease(Duration::from_millis(poll_ms * 10).min(Duration::from_secs(7200)))
                    .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
                    .open()
                    .unwrap()
            }

            #[test]
            fn instances_register_renew_and_leave() {
                let Some((_guard, url)) = $setup("instances_register_renew_and_leave") else { return };
                let a = instance(&url, "alpha", 1..=2, 50);
                let b = instance(&url, "beta", 1..=1, 50);
                let live = a.instances().unwrap();
                let labels: Vec<_> = live.iter().map(|i| (i.label.as_str(), i.first.get(), i.last.get())).collect();
                assert!(labels.contains(&("alpha", 1, 2)) && labels.contains(&("beta", 1, 1)), "{labels:?}");
                let beta = live.iter().find(|i| i.label == "beta").unwrap();
                assert_eq!(beta.pid, i64::from(std::process::id()));
                let first_lease = beta.lease_until_ms;
                thread::sleep(Duration::from_millis(200));
                let renewed = a.instances().unwrap().into_iter().find(|i| i.label == "beta").unwrap();
                assert!(renewed.lease_until_ms > first_lease, "the poller renews the lease");
                assert!(a.steady() && b.steady());
                drop(b);
                let left: Vec<_> = a.instances().unwrap().into_iter().map(|i| i.label).collect();
                assert_eq!(left, vec!["alpha".to_owned()], "a clean shutdown leaves the table");
            }

            #[test]
            fn switch_is_refused_while_an_old_instance_lives_then_proceeds() {
                let Some((_guard, url)) = $setup("switch_is_refused_while_an_old_instance_lives") else { return };
                let new = instance(&url, "new", 1..=2, 50);
                let old = instance(&url, "old-binary", 1..=1, 50);
                let other_new = instance(&url, "new-2", 1..=2, 50);
                new.upgrader().expand().unwrap();
                let err = new.upgrader().switch().unwrap_err();
                match &err {
                    Error::SwitchRefused { version, instances } => {
                        assert_eq!(version.get(), 2);
                        assert_eq!(instances.len(), 1, "{instances:?}");
                        assert!(instances[0].contains("old-binary") && instances[0].contains("serves 1..=1"), "{instances:?}");
                        assert!(instances[0].contains(&format!("pid {}", std::process::id())), "{instances:?}");
                    }
                    other => panic!("expected SwitchRefused, got {other:?}"),
                }
                let s = new.state().unwrap();
                assert_eq!((s.version.get(), s.phase, s.mode), (1, StatePhase::Expanded, Mode::Steady));
                drop(old);
                let report = new.upgrader().switch().unwrap();
                let ack = report.fleet_ack.expect("went through deploying mode");
                eprintln!("fleet acknowledged deploying mode in {ack:?} (poll interval 50 ms)");
                assert_eq!(new.state().unwrap().mode, Mode::Steady);
                // The other instance adopts the new version within a poll or two.
                let deadline = Instant::now() + Duration::from_secs(2);
                while other_new.live_version().get() != 2 || !other_new.steady() {
                    assert!(Instant::now() < deadline, "the other instance never adopted version 2");
                    thread::sleep(Duration::from_millis(10));
                }
                new.upgrader().contract().unwrap();
            }

            #[test]
            fn a_stale_lease_takes_the_locking_path() {
                let Some((_guard, url)) = $setup("a_stale_lease_takes_the_locking_path") else { return };
                let db = Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                    .poll_interval(Duration::from_millis(20))
                    .lease(Duration::from_millis(200))
                    .open()
                    .unwrap();
                let repo = accounts_on::<<B as Backend>::Connection>();
                assert!(db.steady());
                db.pause_fleet(true); // as if the database were unreachable
                let deadline = Instant::now() + Duration::from_secs(2);
                while db.steady() {
                    assert!(Instant::now() < deadline, "an expired lease must leave the steady path");
                    thread::sleep(Duration::from_millis(10));
                }
                // Calls still work, on the locking path, with the live version.
                let (binding, live) = db.call(&repo, |r, s| Ok::<_, Error>((r.version(), r.live(s.conn()).unwrap()))).unwrap();
                assert_eq!(i64::from(binding), live);
                db.pause_fleet(false);
                let deadline = Instant::now() + Duration::from_secs(2);
                while !db.steady() {
                    assert!(Instant::now() < deadline, "a renewed lease returns to the steady path");
                    thread::sleep(Duration::from_millis(10));
                }
            }

            /// Regression (seen once in CI): the lease watchdog drops the steady
            /// flag without draining; a steady call already in flight must still
            /// hold back the instance's acknowledgement of deploying mode, or the
            /// switch commits under it and it runs binding 1 on version 2.
            #[test]
            fn a_steady_call_in_flight_when_the_lease_goes_stale_holds_back_the_switch() {
                let Some((_guard, url)) = $setup("a_steady_call_in_flight_when_the_lease") else { return };
                let open = |label: &str| {
                    Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_millis(400))
                        .label(label)
                        .open()
                        .unwrap()
                };
                let upgrader_side = open("upgrader");
                let slow = open("slow");
                assert!(slow.steady());
                let (entered_tx, entered_rx) = std::sync::mpsc::channel();
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let caller = {
                    let slow = slow.clone();
                    thread::spawn(move || {
                        let repo = accounts_on::<<B as Backend>::Connection>();
                        slow.call(&repo, |r, s| {
                            entered_tx.send(()).unwrap();
                            release_rx.recv().unwrap();
                            Ok::<_, Error>((r.version(), r.live(s.conn()).unwrap()))
                        })
                    })
                };
                entered_rx.recv().unwrap(); // on the steady path, binding 1
                slow.pause_fleet(true);
                let deadline = Instant::now() + Duration::from_secs(3);
                while slow.steady() {
                    assert!(Instant::now() < deadline, "the watchdog must drop the steady flag");
                    thread::sleep(Duration::from_millis(5));
                }
                slow.pause_fleet(false); // renews again, while the call is still in flight
                upgrader_side.upgrader().expand().unwrap();
                let switching = {
                    let up = upgrader_side.clone();
                    thread::spawn(move || up.upgrader().switch().map(|_| ()))
                };
                thread::sleep(Duration::from_millis(300));
                assert_eq!(upgrader_side.state().unwrap().version.get(), 1, "the switch committed under a steady call in flight");
                release_tx.send(()).unwrap();
                let (binding, seen) = caller.join().unwrap().unwrap();
                assert_eq!((i64::from(binding), seen), (1, 1), "the call saw the version it was dispatched for");
                match switching.join().unwrap() {
                    Ok(()) => assert_eq!(upgrader_side.state().unwrap().version.get(), 2),
                    // Waiting longer than the fleet timeout is also safe: typed, nothing switched.
                    Err(Error::FleetNotAcknowledged { .. }) => assert_eq!(upgrader_side.state().unwrap().version.get(), 1),
                    Err(e) => panic!("unexpected switch error: {e:?}"),
                }
            }

            /// Regression (CI, stop 22: a call ran binding 1 on version 2): a
            /// steady unit of work waits for its write turn (SQLite: its write
            /// lock, up to the busy timeout) after it read the cached version;
            /// its instance's renewals queue behind it, its row expires, and the
            /// switch commits without it. With its turn, the unit must run the
            /// live version, not the cached one. (Since the review of stop 27
            /// the poller waits at most a poll for its turn, so its renewals
            /// no longer queue behind the unit; the switch then waits for the
            /// instance instead.) `poller_first`: the renewal holds the turn
            /// and the unit waits behind it, so the renewal (which reads the
            /// switched row) commits first.
            fn unit_waiting_for_its_write_turn_through_a_switch(url: &str, poller_first: bool) {
                let open = |label: &str, lease: u64| {
                    Tandem::<B>::builder(url, tandem::testing::demo::catalog().unwrap())
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_millis(lease))
                        .label(label)
                        .open()
                        .unwrap()
                };
                let upgrader_side = open("upgrader", 1000);
                let stalled = open("stalled", 500);
                upgrader_side.upgrader().expand().unwrap();
                let deadline = Instant::now() + Duration::from_secs(3);
                while !stalled.steady() {
                    assert!(Instant::now() < deadline, "the instance reaches the steady path");
                    thread::sleep(Duration::from_millis(5));
                }
                // The first write of the thread picked waits for the release.
                // (The poller: a handle's own, or its process's shared one on
                // PostgreSQL, where a member with a write stall ticks alone.)
                let picked = move |name: Option<&str>| {
                    if poller_first {
                        matches!(name, Some("tandem-poller" | "tandem-fleet"))
                    } else {
                        name == Some("unit")
                    }
                };
                let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let once = std::sync::Mutex::new(Some((entered_tx, release_rx)));
                stalled.stall_writes(Some(Arc::new(move || {
                    if picked(thread::current().name()) {
                        if let Some((entered, release)) = once.lock().unwrap().take() {
                            entered.send(()).unwrap();
                            release.recv().unwrap();
                        }
                    }
                })));
                if poller_first {
                    entered_rx.recv().unwrap(); // the renewal holds the write turn
                }
                assert!(stalled.steady(), "the unit of work starts on the steady path");
                let unit = {
                    let stalled = stalled.clone();
                    thread::Builder::new()
                        .name("unit".into())
                        .spawn(move || {
                            let repo = accounts_on::<<B as Backend>::Connection>();
                            stalled.unit_of_work(|s| {
                                let r = s.repo(&repo)?;
                                let live = r.live(s.conn())?;
                                Ok::<_, Error>((r.version(), live))
                            })
                        })
                        .unwrap()
                };
                if !poller_first {
                    entered_rx.recv().unwrap(); // the unit holds the write turn
                }
                // Poller first, SQLite: writers queue in-process, so the unit
                // waits behind the stalled renewal, the row expires and the
                // switch goes on without this instance; the unit then runs the
                // switched version. Unit first: the poller waits at most a poll
                // for its turn (then writes without it), so the renewals go on
                // on both backends, and the instance cannot acknowledge while
                // its unit is in flight. PostgreSQL, poller first: writers do
                // not queue, and the unit did not wait.
                let queued = B::NAME == "sqlite" && poller_first;
                let switched = upgrader_side.upgrader().switch();
                match (&switched, queued, poller_first) {
                    (Ok(_), true, _) | (Ok(_), false, true) => {}
                    (Err(Error::FleetNotAcknowledged { instances, .. }), false, false) => {
                        assert!(instances[0].contains("stalled"), "{instances:?}")
                    }
                    other => panic!("unexpected switch outcome {other:?}"),
                }
                release_tx.send(()).unwrap();
                let (binding, live) = unit.join().unwrap().unwrap();
                // (PostgreSQL: the unit ran before any switch.)
                let expected = if queued { 2 } else { 1 };
                assert_eq!((i64::from(binding), live), (expected, expected), "the unit ran binding {binding} on live version {live}");
                assert_eq!(upgrader_side.state().unwrap().version.get(), if switched.is_ok() { 2 } else { 1 });
                stalled.stall_writes(None);
            }

            #[test]
            fn a_unit_of_work_waiting_for_its_write_turn_through_a_switch_runs_the_live_version() {
                let Some((_guard, url)) = $setup("a_unit_waiting_for_its_turn") else { return };
                unit_waiting_for_its_write_turn_through_a_switch(&url, false);
            }

            #[test]
            fn a_unit_of_work_queued_behind_a_held_renewal_runs_the_live_version() {
                let Some((_guard, url)) = $setup("a_unit_behind_a_held_renewal") else { return };
                unit_waiting_for_its_write_turn_through_a_switch(&url, true);
            }

            /// An upgrader that crashed after setting deploying mode leaves the
            /// fleet there. An upgrader on another instance that resumes the
            /// switch must drain its *own* steady calls first: the
            /// acknowledgements it waits for are the other instances'. Here
            /// the resuming instance's poller is paused (it would otherwise
            /// adopt deploying mode by itself within a poll) while one of its
            /// steady calls is in flight.
            #[test]
            fn an_upgrader_resuming_deploying_mode_drains_its_own_calls_first() {
                let Some((_guard, url)) = $setup("an_upgrader_resuming_deploying") else { return };
                let open = |label: &str| {
                    Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_secs(3))
                        .label(label)
                        .open()
                        .unwrap()
                };
                let crashed = open("crashed");
                let resumer = open("resumer");
                crashed.upgrader().expand().unwrap();
                let (entered_tx, entered_rx) = std::sync::mpsc::channel();
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let caller = {
                    let resumer = resumer.clone();
                    thread::spawn(move || {
                        let repo = accounts_on::<<B as Backend>::Connection>();
                        resumer.call(&repo, |r, s| {
                            entered_tx.send(()).unwrap();
                            release_rx.recv().unwrap();
                            Ok::<_, Error>((r.version(), r.live(s.conn()).unwrap()))
                        })
                    })
                };
                entered_rx.recv().unwrap(); // on the steady path, binding 1
                assert!(resumer.steady());
                resumer.pause_fleet(true); // its lease (3 s) stays fresh through the test
                // Step 1 of a switch run alone: deploying mode set, acknowledgements not awaited yet.
                let crash = crashed.upgrader().lease(Duration::from_millis(200)).crash_at(1).switch();
                assert!(matches!(crash, Err(Error::InjectedCrash { .. })), "{crash:?}");
                assert_eq!(crashed.state().unwrap().mode, Mode::Deploying);
                let switching = {
                    let up = resumer.clone();
                    thread::spawn(move || {
                        up.upgrader().wait_for_lease(Duration::from_secs(5)).switch().map(|_| ())
                    })
                };
                // Past the crashed upgrader's lease, with every other instance acknowledged.
                thread::sleep(Duration::from_millis(700));
                assert_eq!(resumer.state().unwrap().version.get(), 1, "the switch committed under a steady call in flight");
                release_tx.send(()).unwrap();
                let (binding, seen) = caller.join().unwrap().unwrap();
                assert_eq!((i64::from(binding), seen), (1, 1), "the call saw the version it was dispatched for");
                switching.join().unwrap().unwrap();
                resumer.pause_fleet(false);
                let state = resumer.state().unwrap();
                assert_eq!((state.version.get(), state.mode), (2, Mode::Steady));
            }

            /// An instance that registers while a switch that did not see it
            /// is committing must adopt the switched version, not the row it
            /// could read before the commit: its first adoption is steady,
            /// and nobody waits for its acknowledgement. The switch here is
            /// played by hand: a transaction holding the database's exclusive
            /// schema lock (SQLite: its write lock) that bumps the state row.
            #[test]
            fn an_instance_joining_during_a_switch_adopts_the_switched_version() {
                use tandem::diesel::connection::SimpleConnection;
                let Some((_guard, url)) = $setup("an_instance_joining_during_a_switch") else { return };
                let first = instance(&url, "first", 1..=2, 3_600_000); // no poller ticks
                first.upgrader().expand().unwrap();
                let mut switch = first.connection().unwrap();
                let lock = if B::NAME == "postgres" {
                    format!("BEGIN; SELECT pg_advisory_xact_lock({});", first.schema_lock_key())
                } else {
                    "BEGIN IMMEDIATE;".to_owned()
                };
                switch
                    .batch_execute(&format!(
                        "{lock} UPDATE tandem_state SET version = 2, phase = 'switched', epoch = epoch + 1 WHERE id = 1;"
                    ))
                    .unwrap();
                let started = Arc::new(Barrier::new(2));
                let joining = {
                    let (url, started) = (url.clone(), started.clone());
                    thread::spawn(move || {
                        started.wait();
                        instance(&url, "joining", 1..=2, 3_600_000)
                    })
                };
                started.wait();
                // The race only exists once the joiner waits on the lock the
                // "switch" holds: make sure it does before committing.
                if B::NAME == "postgres" {
                    // PostgreSQL shows the wait: a backend blocked on an advisory lock.
                    use tandem::diesel::RunQueryDsl as _;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let waiting: i64 = tandem::diesel::sql_query(
                            "SELECT count(*) AS n FROM pg_stat_activity \
                             WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
                        )
                        .get_result::<common::Count>(&mut *first.connection().unwrap())
                        .unwrap()
                        .n;
                        if waiting > 0 {
                            break;
                        }
                        assert!(Instant::now() < deadline, "the joiner never waited on the schema lock");
                        thread::sleep(Duration::from_millis(5));
                    }
                } else {
                    // SQLite shows no lock waits: the joiner, started, has had
                    // ample time to reach SQLite's write lock and must still
                    // be waiting there (had it finished, it joined without
                    // the lock).
                    thread::sleep(Duration::from_millis(300));
                    assert!(!joining.is_finished(), "the joiner joined without waiting for the switch's lock");
                }
                switch.batch_execute("COMMIT").unwrap();
                let joined = joining.join().unwrap();
                assert_eq!(
                    (joined.live_version().get(), joined.steady()),
                    (2, true),
                    "the joining instance adopted the state row from before the switch"
                );
            }

            /// The switch checks who is live before it asks the fleet to move
            /// to the locking path, then waits for acknowledgements. An old
            /// binary that starts during that wait must still stop it: the
            /// switch checks the fleet again under the exclusive lock.
            #[test]
            fn an_old_instance_joining_while_the_fleet_acknowledges_stops_the_switch() {
                let Some((_guard, url)) = $setup("an_old_instance_joining_while") else { return };
                let open = |label: &str, serves: std::ops::RangeInclusive<u32>| {
                    Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                        .serves(serves)
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_secs(3))
                        .label(label)
                        .open()
                        .unwrap()
                };
                let upgrading = open("upgrading", 1..=2);
                let slow = open("slow", 1..=2);
                upgrading.upgrader().expand().unwrap();
                slow.pause_fleet(true); // it acknowledges only when resumed
                let switching = {
                    let up = upgrading.clone();
                    thread::spawn(move || up.upgrader().switch().map(|_| ()))
                };
                let deadline = Instant::now() + Duration::from_secs(5);
                while upgrading.state().unwrap().mode != Mode::Deploying {
                    assert!(Instant::now() < deadline, "deploying mode never set");
                    thread::sleep(Duration::from_millis(5));
                }
                let old = open("old", 1..=1); // joins mid-wait, acknowledging as it joins
                slow.pause_fleet(false);
                match switching.join().unwrap() {
                    Err(Error::SwitchRefused { version, instances }) => {
                        assert_eq!(version.get(), 2);
                        assert!(instances.iter().any(|i| i.contains("old")), "{instances:?}");
                    }
                    other => panic!("the switch must be refused while \"old\" lives: {other:?}"),
                }
                let state = upgrading.state().unwrap();
                assert_eq!((state.version.get(), state.mode), (1, Mode::Steady));
                let repo = accounts_on::<<B as Backend>::Connection>();
                assert!(old.call(&repo, |r, _| Ok::<_, Error>(r.version())).is_ok());
            }

            #[test]
            fn a_dead_instance_drops_out_and_the_switch_proceeds_without_it() {
                let Some((_guard, url)) = $setup("a_dead_instance_drops_out") else { return };
                let open = |label: &str| {
                    Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_millis(200))
                        .label(label)
                        .open()
                        .unwrap()
                };
                let upgrader_side = open("survivor");
                let dead = open("dead");
                dead.pause_fleet(true); // stops renewing, as a killed process would
                std::mem::forget(dead); // and never leaves the table cleanly
                let started = Instant::now();
                upgrader_side.upgrader().expand().unwrap();
                let report = upgrader_side.upgrader().switch().unwrap();
                // It waited for the dead one at most its lease plus one lease of grace.
                assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
                assert_eq!(upgrader_side.state().unwrap().version.get(), 2, "{report:?}");
                let labels: Vec<String> = upgrader_side.instances().unwrap().into_iter().map(|i| i.label).collect();
                assert_eq!(labels, vec!["survivor".to_owned()], "the dead instance expired with its lease");
            }

            #[test]
            fn a_stuck_instance_blocks_the_switch_with_a_typed_error() {
                let Some((_guard, url)) = $setup("a_stuck_instance_blocks_the_switch") else { return };
                let upgrader_side = Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                    .poll_interval(Duration::from_millis(20))
                    .lease(Duration::from_millis(100))
                    .label("upgrader")
                    .open()
                    .unwrap();
                let stuck = Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                    .poll_interval(Duration::from_millis(20))
                    .lease(Duration::from_secs(60))
                    .label("stuck")
                    .open()
                    .unwrap();
                stuck.refresh().unwrap(); // a fresh 60 s lease
                stuck.pause_fleet(true); // alive (lease valid) but no longer acknowledging
                upgrader_side.upgrader().expand().unwrap();
                let err = upgrader_side.upgrader().switch().unwrap_err();
                match &err {
                    Error::FleetNotAcknowledged { phase, instances, .. } => {
                        assert_eq!(*phase, tandem::Phase::Switch);
                        assert!(instances.iter().any(|i| i.contains("stuck")), "{instances:?}");
                    }
                    other => panic!("expected FleetNotAcknowledged, got {other:?}"),
                }
                let s = upgrader_side.state().unwrap();
                assert_eq!((s.version.get(), s.mode), (1, Mode::Steady), "unchanged, and back to steady");
                stuck.pause_fleet(false);
                stuck.refresh().unwrap();
                upgrader_side.upgrader().switch().unwrap();
                assert_eq!(upgrader_side.state().unwrap().version.get(), 2);
            }

            /// Steady calls longer than the writer policy's escalation (5 ms),
            /// one after another on every thread, as under a busy pooler
            /// (CI: PgBouncer with two server connections for fourteen
            /// clients): entering deploying mode, the instance sends new
            /// calls to the locking path at once and waits only for the
            /// steady calls in flight. (Before: it polled for a moment with
            /// no steady call at all, then blocked new ones for 5 ms, and
            /// each tick failed the same way until the switch gave up with
            /// `FleetNotAcknowledged`.)
            #[test]
            fn steady_calls_longer_than_the_escalation_drain_into_deploying_mode() {
                let Some((_guard, url)) = $setup("steady_calls_longer_than_the_escalation") else { return };
                let upgrader_side = instance(&url, "upgrader", 1..=2, 50);
                let busy = instance(&url, "busy", 1..=2, 50);
                let stop = Arc::new(AtomicBool::new(false));
                let start = Arc::new(Barrier::new(5));
                let workers: Vec<_> = (0..4)
                    .map(|n: u64| {
                        let (db, stop, start) = (busy.clone(), stop.clone(), start.clone());
                        thread::spawn(move || {
                            let repo = accounts_on::<<B as Backend>::Connection>();
                            let (mut steady, mut errors) = (0u32, Vec::new());
                            start.wait();
                            let mut i = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                i += 1;
                                let result = db.call(&repo, |r, s| {
                                    r.email(s.conn(), 1)?;
                                    if db.steady() {
                                        // 12 to 28 ms, varied so the threads' calls never
                                        // line up and end together.
                                        thread::sleep(Duration::from_millis(12 + (n * 7 + i * 13) % 17));
                                        return Ok::<_, Error>(1);
                                    }
                                    Ok(0)
                                });
                                match result {
                                    Ok(n) => steady += n,
                                    Err(e) => errors.push(e.to_string()),
                                }
                            }
                            (steady, errors)
                        })
                    })
                    .collect();
                start.wait();
                thread::sleep(Duration::from_millis(200));
                let up = upgrader_side.upgrader();
                up.expand().unwrap();
                let switched = up.switch();
                stop.store(true, Ordering::Relaxed);
                let mut steady = 0;
                for w in workers {
                    let (n, errors) = w.join().unwrap();
                    assert!(errors.is_empty(), "calls failed: {:?}", &errors[..errors.len().min(3)]);
                    steady += n;
                }
                assert!(steady > 8, "the calls ran on the steady path before the switch: {steady}");
                let switched = switched.unwrap_or_else(|e| panic!("the switch failed: {e}"));
                assert_eq!(upgrader_side.state().unwrap().version.get(), 2, "{switched:?}");
            }

            /// `switch_when_ready`: refused while an old binary lives, it tries
            /// again until the rolling deploy has replaced it, or gives up with
            /// the refusal at its timeout.
            #[test]
            fn switch_when_ready_waits_for_the_old_binaries_to_go() {
                let Some((_guard, url)) = $setup("switch_when_ready") else { return };
                let new = instance(&url, "new", 1..=2, 50);
                let old = instance(&url, "old-binary", 1..=1, 50);
                let up = new.upgrader();
                up.expand().unwrap();
                let started = Instant::now();
                let err = up.switch_when_ready(Duration::from_millis(300)).unwrap_err();
                assert!(matches!(err, Error::SwitchRefused { .. }), "{err:?}");
                assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
                assert_eq!(new.state().unwrap().version.get(), 1, "unchanged while refused");
                let leaving = thread::spawn(move || {
                    thread::sleep(Duration::from_millis(300));
                    drop(old); // the deploy replaced it
                });
                let started = Instant::now();
                let report = up.switch_when_ready(Duration::from_secs(30)).unwrap();
                leaving.join().unwrap();
                assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
                assert_eq!((report.version.get(), new.state().unwrap().version.get()), (2, 2));
            }

            /// Refused because this binary lacks the new version: nothing to
            /// wait for, so `switch_when_ready` says so at once.
            #[test]
            fn switch_when_ready_does_not_wait_for_what_waiting_cannot_cure() {
                let Some((_guard, url)) = $setup("switch_when_ready_at_once") else { return };
                let old_only = instance(&url, "old-only", 1..=1, 50);
                let up = old_only.upgrader();
                up.expand().unwrap();
                let started = Instant::now();
                let err = up.switch_when_ready(Duration::from_secs(30)).unwrap_err();
                assert!(matches!(err, Error::SwitchRefused { .. }), "{err:?}");
                assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
            }

            #[test]
            fn contract_waits_for_every_instance_and_bad_fleet_rows_are_refused() {
                let Some((_guard, url)) = $setup("contract_waits_for_every_instance") else { return };
                let db = Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                    .poll_interval(Duration::from_millis(20))
                    .lease(Duration::from_millis(100))
                    .open()
                    .unwrap();
                db.upgrader().expand().unwrap();
                db.upgrader().switch().unwrap();
                // An instance that never saw the switch (observed epoch 0) and is still leased.
                let far = 4_102_444_800_000_i64; // 2100-01-01
                let mut conn = db.connection().unwrap();
                let insert = |conn: &mut <B as Backend>::Connection, id: &str, min: i64| {
                    diesel::sql_query(format!(
                        "INSERT INTO tandem_fleet (id, host, pid, label, min_version, max_version, observed_epoch, lease_until, started_at) \
                         VALUES ('{id}', 'elsewhere', 4242, 'laggard', {min}, 2, 0, {far}, 0)"
                    ))
                    .execute(conn)
                    .unwrap();
                };
                use diesel::RunQueryDsl;
                insert(&mut conn, "laggard-1", 1);
                let err = db.upgrader().contract().unwrap_err();
                match &err {
                    Error::FleetNotAcknowledged { phase, instances, .. } => {
                        assert_eq!(*phase, tandem::Phase::Contract);
                        assert!(instances[0].contains("laggard") && instances[0].contains("pid 4242"), "{instances:?}");
                    }
                    other => panic!("expected FleetNotAcknowledged, got {other:?}"),
                }
                assert_eq!(db.state().unwrap().phase, StatePhase::Switched, "contract did not run");
                diesel::sql_query("DELETE FROM tandem_fleet WHERE id = 'laggard-1'").execute(&mut conn).unwrap();
                // A fleet row with an impossible version is a typed error, not a guess.
                insert(&mut conn, "corrupt-1", 0);
                let err = db.instances().unwrap_err();
                assert!(matches!(&err, Error::MetadataCorrupt { table, .. } if table == "tandem_fleet"), "{err:?}");
                let err = db.upgrader().contract().unwrap_err();
                assert!(matches!(&err, Error::MetadataCorrupt { .. }), "{err:?}");
                diesel::sql_query("DELETE FROM tandem_fleet WHERE id = 'corrupt-1'").execute(&mut conn).unwrap();
                db.upgrader().contract().unwrap();
            }

            #[test]
            fn calls_through_a_fleet_switch_run_with_the_live_version() {
                let Some((_guard, url)) = $setup("calls_through_a_fleet_switch") else { return };
                let instances: Vec<Tandem<B>> = (0..3).map(|i| instance(&url, &format!("i{i}"), 1..=2, 50)).collect();
                let stop = Arc::new(AtomicBool::new(false));
                let start = Arc::new(Barrier::new(3 * 4 + 1));
                let handles: Vec<_> = instances.iter().flat_map(|db| callers(db, 4, &stop, &start)).collect();
                start.wait();
                thread::sleep(Duration::from_millis(150));
                instances[0].reset_max_lock_wait();
                let up = instances[0].upgrader();
                up.expand().unwrap();
                let switch = up.switch().unwrap();
                thread::sleep(Duration::from_millis(200));
                up.contract().unwrap();
                thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
                let (mut calls, mut acked) = (Vec::new(), BTreeMap::new());
                for h in handles {
                    let (c, a, errors) = h.join().unwrap();
                    assert!(errors.is_empty(), "calls failed: {:?}", &errors[..errors.len().min(3)]);
                    calls.extend(c);
                    acked.extend(a);
                }
                for (binding, before, after) in &calls {
                    assert_eq!((i64::from(*binding), i64::from(*binding)), (*before, *after), "a call ran a binding other than the live version");
                }
                let versions: std::collections::BTreeSet<u32> = calls.iter().map(|c| c.0).collect();
                assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![1, 2], "at most two versions, both served");
                let repo = accounts_on::<<B as Backend>::Connection>();
                for (id, email) in &acked {
                    assert_eq!(instances[1].call(&repo, |r, s| r.email(s.conn(), *id)).unwrap().as_ref(), Some(email), "lost write {id}");
                }
                eprintln!(
                    "{} calls, {} acknowledged writes; fleet ack {:?}, writer wait {:?}, switch held {:?}, longest lock wait on instance 0: {:?}",
                    calls.len(),
                    acked.len(),
                    switch.fleet_ack,
                    switch.writer_wait,
                    switch.held,
                    instances[0].max_lock_wait()
                );
            }

            /// The old binary (its catalog ends at version 1, it serves
            /// 1..=1) restarted in the middle of a deploy: it opens and
            /// serves while the live version is 1, expanded or after a
            /// switch back (the history's version 2 rows are not its to
            /// verify); once 2 is live, its calls name what to deploy.
            #[test]
            fn an_old_binary_restarted_mid_deploy_serves_what_it_can() {
                let Some((_guard, url)) = $setup("an_old_binary_restarted_mid_deploy") else { return };
                let full = tandem::testing::demo::catalog().unwrap();
                let v1 = full.phase(tandem::Version::FIRST, tandem::Phase::Expand, B::NAME).unwrap().text.to_owned();
                let old_catalog = || common::catalog(&[("0001_accounts/expand.sql", v1.as_str())]);
                let new = instance(&url, "new", 1..=2, 20);
                common::seed(&new, 5);
                let repo = accounts_on::<<B as Backend>::Connection>();
                let restart_old = || {
                    let (dir, cat) = old_catalog();
                    let old = Tandem::<B>::builder(&url, cat)
                        .serves(1..=1)
                        .label("old")
                        .poll_interval(Duration::from_millis(20))
                        .open()
                        .unwrap_or_else(|e| panic!("the old binary did not open: {e}"));
                    (dir, old)
                };
                new.upgrader().expand().unwrap();
                {
                    let (_dir, old) = restart_old();
                    let (binding, email) = old
                        .call(&repo, |r, s| Ok::<_, Error>((r.version(), r.email(s.conn(), 1)?)))
                        .unwrap();
                    assert_eq!((binding, email.as_deref()), (1, Some("s0@x")), "expanded");
                }
                new.upgrader().switch().unwrap();
                new.upgrader().switch_back().unwrap();
                {
                    let (_dir, old) = restart_old();
                    let binding = old.call(&repo, |r, _| Ok::<_, Error>(r.version())).unwrap();
                    assert_eq!(binding, 1, "after a switch back");
                    // It keeps the switch refused while it lives.
                    let err = new.upgrader().switch().unwrap_err();
                    assert!(matches!(err, Error::SwitchRefused { .. }), "{err:?}");
                }
                new.upgrader().switch().unwrap();
                let (_dir, old) = restart_old();
                let err = old.call(&repo, |r, s| r.email(s.conn(), 1)).unwrap_err();
                assert!(
                    matches!(err, Error::VersionNotServed { live, first, last } if (live.get(), first.get(), last.get()) == (2, 1, 1)),
                    "{err:?}"
                );
                assert!(err.to_string().contains("deploy a binary with bindings for version 2"), "{err}");
            }

            /// Two builds with different SQL under the same version number:
            /// the one that expands and switches must not win over the other,
            /// already live (whose bindings would then meet structures they
            /// do not know). The switch is refused, naming it.
            #[test]
            fn a_live_instance_with_other_sql_for_the_version_stops_the_switch() {
                let Some((_guard, url)) = $setup("a_live_instance_with_other_sql") else { return };
                let full = tandem::testing::demo::catalog().unwrap();
                let mut files: Vec<(String, String)> = Vec::new();
                for v in 1..=2u32 {
                    let version = tandem::Version::new(v).unwrap();
                    for phase in tandem::Phase::ALL {
                        if let Some(sql) = full.phase(version, phase, B::NAME) {
                            let mut text = sql.text.to_owned();
                            if v == 2 && phase == tandem::Phase::Expand {
                                text.push_str("\n-- the other build's expand\n");
                            }
                            files.push((format!("000{v}_v/{}.sql", phase.as_str()), text));
                        }
                    }
                }
                let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
                let (_c, other) = common::catalog(&refs);
                let upgrading = instance(&url, "upgrading", 1..=2, 20);
                let other_build = Tandem::<B>::builder(&url, other)
                    .serves(1..=2)
                    .label("other-build")
                    .poll_interval(Duration::from_millis(20))
                    .open()
                    .unwrap();
                upgrading.upgrader().expand().unwrap();
                match upgrading.upgrader().switch() {
                    Err(Error::CatalogDisagrees { from, to, instances }) => {
                        assert_eq!((from.get(), to.get()), (1, 2));
                        assert!(instances.iter().any(|i| i.contains("other-build")), "{instances:?}");
                    }
                    other => panic!("the switch must be refused while the other build lives: {other:?}"),
                }
                assert_eq!(upgrading.state().unwrap().version.get(), 1);
                drop(other_build);
                upgrading.upgrader().switch().unwrap();
                assert_eq!(upgrading.state().unwrap().version.get(), 2);
            }

            /// After the state row's epoch went back (a restore), a new epoch
            /// must never equal one an instance acknowledged before: that old
            /// acknowledgement would pass for one of the new deploying mode,
            /// and the switch would commit under the instance's steady calls.
            #[test]
            fn an_acknowledgement_from_before_a_restore_never_counts() {
                use tandem::diesel::connection::SimpleConnection;
                let Some((_guard, url)) = $setup("an_acknowledgement_from_before_a_restore") else { return };
                let open = |label: &str| {
                    Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                        .serves(1..=2)
                        .label(label)
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_millis(500))
                        .open()
                        .unwrap()
                };
                let stuck = open("stuck");
                let upgrader = open("upgrader");
                let mut raw = upgrader.connection().unwrap();
                raw.batch_execute("UPDATE tandem_state SET epoch = epoch + 8").unwrap();
                let high = upgrader.state().unwrap().epoch;
                let deadline = Instant::now() + Duration::from_secs(10);
                while !upgrader.instances().unwrap().iter().all(|i| i.observed_epoch == high) {
                    assert!(Instant::now() < deadline, "the fleet never acknowledged {high}");
                    thread::sleep(Duration::from_millis(10));
                }
                // The stuck instance acknowledges nothing from here on; the
                // row goes back two epochs: expand and deploying mode would
                // bring it to exactly the epoch the stuck one acknowledged.
                stuck.pause_fleet(true);
                raw.batch_execute(&format!("UPDATE tandem_state SET epoch = {}", high - 2)).unwrap();
                drop(raw);
                upgrader.upgrader().expand().unwrap();
                let report = upgrader.upgrader().switch().unwrap();
                // Deploying mode counts as acknowledged only once the stuck
                // instance's lease ran out (it left the steady path by
                // itself), not at once on its stale acknowledgement.
                let ack = report.fleet_ack.expect("the switch went through deploying mode");
                assert!(
                    ack >= Duration::from_millis(300),
                    "deploying mode counted as acknowledged after {ack:?}: the stuck instance's stale acknowledgement passed"
                );
                assert!(upgrader.state().unwrap().epoch > high, "a new epoch reused an acknowledged one");
            }

            /// The two-version check acts before the drain: a steady
            /// instance at version 1 finds the state row at version 3 (a
            /// hand edit, as a restore or a missed switch would show) while
            /// a steady call is in flight. Calls arriving while the poller
            /// waits for that call to drain take the locking path and run
            /// with version 3, not the cached 1.
            #[test]
            fn a_state_row_two_versions_ahead_closes_the_steady_path_before_the_drain() {
                use tandem::diesel::connection::SimpleConnection;
                trait AnyVersion: Send + Sync {}
                struct Binding;
                impl AnyVersion for Binding {}
                let Some((_guard, url)) = $setup("two_versions_ahead") else { return };
                let (_c, cat) = common::catalog(common::THREE_VERSIONS);
                // Push off: a hand edit sends no notice, and a steady
                // instance that hears notices reads the row only at its next
                // renewal (`Builder::push`); this test wants the next poll.
                let db = Tandem::<B>::builder(&url, cat)
                    .serves(1..=3)
                    .poll_interval(Duration::from_millis(20))
                    .lease(Duration::from_secs(2))
                    .push(false)
                    .open()
                    .unwrap();
                let repo = tandem::Repository::<dyn AnyVersion>::builder("any")
                    .bindings(1..=3, Arc::new(Binding))
                    .build()
                    .unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                while !db.steady() {
                    assert!(Instant::now() < deadline, "never steady");
                    thread::sleep(Duration::from_millis(10));
                }
                let in_flight = Arc::new(AtomicBool::new(true));
                let (started_tx, started_rx) = std::sync::mpsc::channel();
                let long = {
                    let (db, repo, in_flight) = (db.clone(), repo.clone(), in_flight.clone());
                    thread::spawn(move || {
                        let v = db.call(&repo, |_, s| {
                            started_tx.send(()).unwrap();
                            thread::sleep(Duration::from_millis(800));
                            Ok::<_, Error>(s.version().get())
                        });
                        in_flight.store(false, Ordering::Release);
                        v
                    })
                };
                started_rx.recv().unwrap();
                db.connection()
                    .unwrap()
                    .batch_execute("UPDATE tandem_state SET version = 3, epoch = epoch + 1")
                    .unwrap();
                thread::sleep(Duration::from_millis(200)); // several polls: the poller waits to drain
                let version = db.call(&repo, |_, s| Ok::<_, Error>(s.version().get())).unwrap();
                assert!(in_flight.load(Ordering::Acquire), "the long call ended too soon for this test");
                assert_eq!(version, 3, "a call during the drain ran with the cached version");
                assert_eq!(long.join().unwrap().unwrap(), 1);
                let missed = db.missed_switch().expect("reported");
                assert_eq!((missed.served.get(), missed.found.get()), (1, 3));
                assert!(missed.steady, "its calls were on the steady path: {missed}");
            }

            /// The two-version rule checked at run time (CockroachDB's
            /// assertion): an instance frozen (its fleet paused) through two
            /// whole switches finds version 3 where it served 1. It leaves
            /// the steady path at once, says so naming both versions, and
            /// serves version 3.
            #[test]
            fn an_instance_that_missed_a_whole_switch_says_so_and_serves_the_live_version() {
                let Some((_guard, url)) = $setup("missed_a_whole_switch") else { return };
                let (_c, cat) = common::catalog(common::THREE_VERSIONS);
                let open = |label: &str| {
                    Tandem::<B>::builder(&url, cat.clone())
                        .serves(1..=3)
                        .label(label)
                        .poll_interval(Duration::from_millis(20))
                        .lease(Duration::from_millis(300))
                        .open()
                        .unwrap()
                };
                let frozen = open("frozen");
                let upgrader = open("upgrader");
                assert_eq!(frozen.missed_switch(), None);
                frozen.pause_fleet(true);
                let deadline = Instant::now() + Duration::from_secs(5);
                while frozen.steady() {
                    assert!(Instant::now() < deadline, "the paused instance stayed steady");
                    thread::sleep(Duration::from_millis(10));
                }
                // Past its lease by the database's clock too.
                thread::sleep(Duration::from_millis(400));
                upgrader.upgrader().upgrade_to(3).unwrap();
                assert_eq!(frozen.live_version().get(), 1, "frozen: still the version it cached");
                frozen.pause_fleet(false);
                let deadline = Instant::now() + Duration::from_secs(10);
                let missed = loop {
                    if let Some(missed) = frozen.missed_switch() {
                        break missed;
                    }
                    assert!(Instant::now() < deadline, "the missed switches were never noticed");
                    thread::sleep(Duration::from_millis(10));
                };
                assert_eq!((missed.served.get(), missed.found.get()), (1, 3), "{missed}");
                assert!(!missed.steady, "its stale lease had moved its calls off the steady path: {missed}");
                assert!(
                    missed.to_string().contains("served version 1 but the database is at version 3"),
                    "{missed}"
                );
                let deadline = Instant::now() + Duration::from_secs(10);
                while frozen.live_version().get() != 3 {
                    assert!(Instant::now() < deadline, "version 3 was never adopted");
                    thread::sleep(Duration::from_millis(10));
                }
                frozen
                    .unit_of_work(|s| {
                        assert_eq!(s.version().get(), 3);
                        Ok::<_, Error>(())
                    })
                    .unwrap();
                assert_eq!(upgrader.missed_switch(), None, "the upgrader saw each switch");
            }

            /// The state row's epoch set back by hand (or by a restore): an
            /// instance that had adopted a higher epoch must not ignore every
            /// later row (and keep running the version 1 binding after the
            /// next switch and contract): it drops its cache and adopts the
            /// row as it is, and acknowledges what it then sees.
            #[test]
            fn an_epoch_that_went_backwards_is_adopted_not_ignored() {
                use tandem::diesel::connection::SimpleConnection;
                let Some((_guard, url)) = $setup("an_epoch_that_went_backwards") else { return };
                let served = instance(&url, "served", 1..=2, 20);
                common::seed(&served, 5);
                let upgrader = instance(&url, "upgrader", 1..=2, 20);
                let mut raw = served.connection().unwrap();
                raw.batch_execute("UPDATE tandem_state SET epoch = epoch + 50").unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !served.instances().unwrap().iter().all(|i| i.observed_epoch > 50) {
                    assert!(Instant::now() < deadline, "the fleet never adopted epoch 51");
                    thread::sleep(Duration::from_millis(10));
                }
                raw.batch_execute("UPDATE tandem_state SET epoch = 1").unwrap();
                drop(raw);
                thread::sleep(Duration::from_millis(200)); // a few polls
                upgrader.upgrader().upgrade_to(2).unwrap();
                let repo = accounts_on::<<B as Backend>::Connection>();
                let (binding, email) = served
                    .call(&repo, |r, s| Ok::<_, Error>((r.version(), r.email(s.conn(), 1)?)))
                    .unwrap_or_else(|e| panic!("a stale binding after the epoch went back: {e}"));
                assert_eq!((binding, email.as_deref()), (2, Some("s0@x")));
            }
        }
    };
}

use common::sqlite_setup;

fleet_suite!(sqlite, tandem::Sqlite, sqlite_setup);

#[cfg(feature = "postgres")]
use common::pg_setup;

#[cfg(feature = "postgres")]
fleet_suite!(postgres, tandem::Postgres, pg_setup);
