//! What only PostgreSQL has: a connection killed inside the switch, dead
//! and live upgraders' leases across connections, table locks that meet
//! `lock_timeout`, and the advisory lock's escalation. The cases every
//! backend shares (the upgrade cycle, threads through a switch, bad input)
//! run once per backend in `upgrade.rs`, `concurrency.rs` and
//! `bad_input.rs`. Built only with the `postgres` feature
//! (`required-features` in Cargo.toml); `scripts/test` runs it against a
//! throwaway server.

#[cfg(feature = "postgres")]
mod common;
#[cfg(feature = "postgres")]
mod lost_connection {
    use super::common::{self, pg::PgDb};
    use tandem::{Error, Postgres, StatePhase, Tandem};

    /// The upgrader's connection dies in the middle of the switch's
    /// transaction: the database stays wholly at the old version, and the
    /// same command run again (here with the intended switch.sql) finishes.
    #[test]
    fn connection_lost_during_the_switch() {
        let Some(pg) = PgDb::new("connection_lost_during_the_switch") else {
            return;
        };
        let files = |switch: &'static str| {
            vec![
                (
                    "0001_items/expand.sql",
                    "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);",
                ),
                (
                    "0002_labels/expand.sql",
                    "ALTER TABLE items ADD COLUMN label TEXT;",
                ),
                ("0002_labels/switch.sql", switch),
            ]
        };
        let killer =
            "CREATE TABLE half_switched (x INT); SELECT pg_terminate_backend(pg_backend_pid());";
        let (_d, cat) = common::catalog(&files(killer));
        let db = Tandem::<Postgres>::builder(&pg.url, cat)
            .serves(1..=2)
            .open()
            .unwrap();
        db.upgrader().expand().unwrap();
        let err = db.upgrader().switch().unwrap_err();
        assert!(
            matches!(err, Error::PhaseFailed { .. } | Error::Query(_)),
            "{err:?}"
        );
        let s = db.state().unwrap();
        assert_eq!(
            (s.version.get(), s.phase),
            (1, StatePhase::Expanded),
            "never between versions"
        );
        assert_eq!(db.live_version().get(), 1);
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let half: N = diesel::sql_query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'half_switched'")
            .get_result(&mut pg.conn())
            .unwrap();
        assert_eq!(half.n, 0, "the switch's statements rolled back with it");
        drop(db);
        let (_d2, fixed) = common::catalog(&files("CREATE TABLE switched (x INT);"));
        let db = Tandem::<Postgres>::builder(&pg.url, fixed)
            .serves(1..=2)
            .open()
            .unwrap();
        // The lease of the dead attempt's upgrader was released (it failed cleanly).
        db.upgrader().upgrade_to(2).unwrap();
        assert_eq!(db.state().unwrap().version.get(), 2);
    }
}

#[cfg(feature = "postgres")]
mod upgraders {
    use std::time::{Duration, Instant};

    use super::common::pg::PgDb;
    use tandem::testing::faults::UpgraderFaults as _;
    use tandem::{Error, Postgres, StatePhase, Tandem};

    fn open(pg: &PgDb, slow_backfill: bool) -> Tandem<Postgres> {
        Tandem::<Postgres>::builder(&pg.url, tandem::testing::demo::catalog().unwrap())
            .backfill(2, "copy emails", move |conn| {
                if slow_backfill {
                    std::thread::sleep(Duration::from_millis(700));
                }
                tandem::testing::demo::backfill_emails(conn)
            })
            .open()
            .unwrap()
    }

    /// A crashed upgrader leaves its lease on the state row (no session
    /// lock: nothing stays on a pooled connection): the next upgrader is
    /// told who holds it, and with a wait proceeds once it expires.
    #[test]
    fn a_dead_upgraders_lease_expires_and_the_next_one_proceeds() {
        let Some(pg) = PgDb::new("a_dead_upgraders_lease_expires") else {
            return;
        };
        let db = open(&pg, false);
        let dead = db.upgrader().lease(Duration::from_secs(2)).crash_at(1);
        assert!(matches!(dead.expand(), Err(Error::InjectedCrash { .. })));
        assert_eq!(
            db.state().unwrap().upgrader.as_deref(),
            Some(dead.id()),
            "its lease is left behind"
        );
        match db.upgrader().expand() {
            Err(Error::UpgraderBusy {
                holder,
                expires_in_ms,
            }) => {
                assert_eq!(holder, dead.id());
                assert!(
                    expires_in_ms > 0 && expires_in_ms <= 2000,
                    "{expires_in_ms}"
                );
            }
            other => panic!("expected UpgraderBusy, got {other:?}"),
        }
        let started = Instant::now();
        db.upgrader()
            .wait_for_lease(Duration::from_secs(10))
            .upgrade_to(2)
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} for a 2 s lease",
            started.elapsed()
        );
        let s = db.state().unwrap();
        assert_eq!(
            (s.version.get(), s.phase, s.upgrader),
            (2, StatePhase::Stable, None)
        );
    }

    /// While an upgrader works (a slow backfill), a second one is refused and
    /// told who holds it; with a wait it proceeds once the first is done.
    #[test]
    fn a_live_upgrader_excludes_a_second_one() {
        let Some(pg) = PgDb::new("a_live_upgrader_excludes_a_second_one") else {
            return;
        };
        let slow = open(&pg, true);
        let other = open(&pg, false);
        let worker = {
            let slow = slow.clone();
            std::thread::spawn(move || slow.upgrader().expand())
        };
        std::thread::sleep(Duration::from_millis(300));
        let err = other.upgrader().expand().unwrap_err();
        match &err {
            Error::UpgraderBusy { holder, .. } => {
                assert!(holder.starts_with(slow.instance_id()), "{holder}")
            }
            other => panic!("expected UpgraderBusy, got {other:?}"),
        }
        let report = other
            .upgrader()
            .wait_for_lease(Duration::from_secs(20))
            .expand()
            .unwrap();
        assert!(report.already_done, "the first upgrader did it");
        assert!(!worker.join().unwrap().unwrap().already_done);
    }
}

/// What the README claims about lock waits, on a real server: a phase that
/// meets a conflicting table lock rolls back at `lock_timeout` and retries;
/// past its budget it gives up as `PhaseContended`, the database unchanged;
/// the switch escalates to a queued wait when readers keep the shared
/// schema lock busy, and gives up cleanly when one never lets go.
/// The fleet table is set up for rows updated over and over: half of each
/// page free (HOT updates), autovacuum by a fixed count of dead rows, and
/// no index but its primary key.
#[cfg(feature = "postgres")]
mod fleet_table {
    use super::common::pg::PgDb;
    use diesel::prelude::*;

    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }

    #[test]
    fn the_fleet_table_keeps_room_for_hot_updates_and_one_index() {
        let Some(pg) = PgDb::new("the_fleet_table") else {
            return;
        };
        let db = tandem::Tandem::<tandem::Postgres>::builder(
            &pg.url,
            tandem::testing::demo::catalog().unwrap(),
        )
        .open()
        .unwrap();
        let mut conn = pg.conn();
        let options: Line = diesel::sql_query(
            "SELECT array_to_string(reloptions, ',') AS line FROM pg_class WHERE relname = 'tandem_fleet'",
        )
        .get_result(&mut conn)
        .unwrap();
        for option in [
            "fillfactor=50",
            "autovacuum_vacuum_scale_factor=0",
            "autovacuum_vacuum_threshold=500",
        ] {
            assert!(
                options.line.split(',').any(|o| o == option),
                "{option} in {}",
                options.line
            );
        }
        let indexes: Vec<Line> = diesel::sql_query(
            "SELECT indexname AS line FROM pg_indexes WHERE tablename = 'tandem_fleet'",
        )
        .load(&mut conn)
        .unwrap();
        assert_eq!(indexes.len(), 1, "only the primary key");
        drop(db);
    }
}

#[cfg(feature = "postgres")]
mod lock_waits {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::common;
    use super::common::pg::PgDb;
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use tandem::{Error, Phase, Postgres, StatePhase, Tandem, WriterPolicy};

    const FILES: &[(&str, &str)] = &[
        (
            "0001_items/expand.sql",
            "CREATE TABLE items (id BIGINT PRIMARY KEY); INSERT INTO items VALUES (1), (2);",
        ),
        (
            "0002_label/expand.sql",
            "ALTER TABLE items ADD COLUMN label TEXT;",
        ),
    ];

    fn open(pg: &PgDb, cat: tandem::Catalog, policy: WriterPolicy) -> Tandem<Postgres> {
        Tandem::<Postgres>::builder(&pg.url, cat)
            .serves(1..=2)
            .lock_timeout(Duration::from_millis(50))
            .writer_policy(policy)
            .open()
            .unwrap()
    }

    /// A transaction on `items` (a reader: ACCESS SHARE, which conflicts
    /// with the expand's ACCESS EXCLUSIVE) held for `hold`, on a thread.
    fn hold_items(pg: &PgDb, hold: Duration) -> thread::JoinHandle<()> {
        let mut conn = pg.conn();
        let taken = Arc::new(Barrier::new(2));
        let handle = {
            let taken = taken.clone();
            thread::spawn(move || {
                conn.batch_execute("BEGIN; SELECT count(*) FROM items;")
                    .unwrap();
                taken.wait();
                thread::sleep(hold);
                conn.batch_execute("COMMIT").unwrap();
            })
        };
        taken.wait();
        handle
    }

    fn has_label(pg: &PgDb) -> bool {
        diesel::sql_query(
            "SELECT count(*) AS n FROM information_schema.columns \
             WHERE table_name = 'items' AND column_name = 'label'",
        )
        .get_result::<common::Count>(&mut pg.conn())
        .unwrap()
        .n == 1
    }

    #[test]
    fn a_phase_that_meets_a_table_lock_retries_after_lock_timeout() {
        let Some(pg) = PgDb::new("a_phase_that_meets_a_table_lock_retries") else {
            return;
        };
        let (_c, cat) = common::catalog(FILES);
        let db = open(&pg, cat, WriterPolicy::default());
        let holder = hold_items(&pg, Duration::from_millis(400));
        let started = Instant::now();
        let report = db.upgrader().expand().unwrap();
        holder.join().unwrap();
        assert!(
            report.attempts > 1,
            "the expand never hit lock_timeout (attempts {})",
            report.attempts
        );
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "the expand went through while the lock was held"
        );
        assert!(has_label(&pg));
        eprintln!(
            "expand: {} attempts over {:?} while a reader held items for 400 ms",
            report.attempts, report.duration
        );
    }

    #[test]
    fn a_phase_that_never_gets_its_lock_gives_up_as_contended() {
        let Some(pg) = PgDb::new("a_phase_that_never_gets_its_lock") else {
            return;
        };
        let (_c, cat) = common::catalog(FILES);
        let policy = WriterPolicy {
            attempts: 3,
            ..WriterPolicy::default()
        };
        let db = open(&pg, cat, policy);
        let before = db.state().unwrap();
        let holder = hold_items(&pg, Duration::from_secs(3));
        let err = db.upgrader().expand().unwrap_err();
        match &err {
            Error::PhaseContended {
                version,
                phase: Phase::Expand,
                attempts: 3,
                ..
            } if version.get() == 2 => {}
            other => panic!("expected PhaseContended after 3 attempts, got {other:?}"),
        }
        assert!(
            err.to_string().contains("the database is unchanged"),
            "{err}"
        );
        assert!(err.to_string().contains("raise `lock_timeout`"), "{err}");
        let after = db.state().unwrap();
        assert_eq!(
            (after.version, after.phase, after.epoch),
            (before.version, before.phase, before.epoch)
        );
        assert!(!has_label(&pg), "the column was added by a failed phase");
        let last = db.history().unwrap().pop().unwrap();
        assert_eq!(
            (
                last.version.get(),
                last.phase.as_str(),
                last.outcome.as_str()
            ),
            (2, "expand", "failed")
        );
        holder.join().unwrap();
        // Once the lock is free, the same command finishes the job.
        db.upgrader().expand().unwrap();
        assert!(has_label(&pg));
    }

    /// Readers that take the shared schema lock in overlapping turns: at
    /// every instant one holds it, so polling `pg_try_advisory_xact_lock`
    /// never wins. The switch escalates to a queued wait (new readers queue
    /// behind it), gets the lock when the holder of the moment commits, and
    /// switches.
    #[test]
    fn the_switch_escalates_when_readers_keep_the_shared_lock_busy() {
        let Some(pg) = PgDb::new("the_switch_escalates_when_readers") else {
            return;
        };
        let (_c, cat) = common::catalog(FILES);
        let policy = WriterPolicy {
            patience: Duration::from_millis(150),
            escalation: Duration::from_secs(2),
            attempts: 1,
        };
        let db = open(&pg, cat, policy);
        db.upgrader().expand().unwrap();
        let key = db.schema_lock_key();
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Barrier::new(4));
        let readers: Vec<_> = (0..3u64)
            .map(|n| {
                let (mut conn, stop, ready) = (pg.conn(), stop.clone(), ready.clone());
                thread::spawn(move || {
                    let mut longest = Duration::ZERO;
                    ready.wait();
                    thread::sleep(Duration::from_millis(15 * n));
                    while !stop.load(Ordering::Relaxed) {
                        let asked = Instant::now();
                        conn.batch_execute(&format!(
                            "BEGIN; SELECT pg_advisory_xact_lock_shared({key});"
                        ))
                        .unwrap();
                        longest = longest.max(asked.elapsed());
                        thread::sleep(Duration::from_millis(45));
                        conn.batch_execute("COMMIT").unwrap();
                    }
                    longest
                })
            })
            .collect();
        ready.wait();
        thread::sleep(Duration::from_millis(100));
        let report = db.upgrader().switch().unwrap();
        stop.store(true, Ordering::Relaxed);
        let waits: Vec<Duration> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(
            report.escalated,
            "the switch got the lock without escalating: {report:?}"
        );
        assert_eq!(db.state().unwrap().version.get(), 2);
        eprintln!(
            "switch: escalated, writer waited {:?}; readers' longest wait for the shared lock {waits:?}",
            report.writer_wait
        );
    }

    /// Readers whose turns (25 ms each, back to back, offset) always
    /// outlast the default 5 ms escalation: a queued wait of that length
    /// never sees every reader in flight commit. Each retry doubles it (up
    /// to 8×), and the switch gets the lock once the window covers a turn.
    /// (Before: every attempt waited 5 ms, and the switch gave up with
    /// `LockTimeout` under such load, as the fleet demo behind PgBouncer
    /// did in CI.)
    #[test]
    fn the_switch_outlasts_readers_longer_than_the_escalation() {
        let Some(pg) = PgDb::new("the_switch_outlasts_readers") else {
            return;
        };
        let (_c, cat) = common::catalog(FILES);
        let policy = WriterPolicy {
            patience: Duration::from_millis(30),
            attempts: 6,
            ..WriterPolicy::default()
        };
        let db = open(&pg, cat, policy);
        db.upgrader().expand().unwrap();
        let key = db.schema_lock_key();
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Barrier::new(5));
        let readers: Vec<_> = (0..4u64)
            .map(|n| {
                let (mut conn, stop, ready) = (pg.conn(), stop.clone(), ready.clone());
                thread::spawn(move || {
                    ready.wait();
                    thread::sleep(Duration::from_millis(6 * n));
                    while !stop.load(Ordering::Relaxed) {
                        conn.batch_execute(&format!(
                            "BEGIN; SELECT pg_advisory_xact_lock_shared({key});"
                        ))
                        .unwrap();
                        thread::sleep(Duration::from_millis(25));
                        conn.batch_execute("COMMIT").unwrap();
                    }
                })
            })
            .collect();
        ready.wait();
        thread::sleep(Duration::from_millis(100));
        let switched = db.upgrader().switch();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let report = switched.unwrap_or_else(|e| panic!("the switch gave up: {e}"));
        assert!(report.attempts > 1 && report.escalated, "{report:?}");
        assert_eq!(db.state().unwrap().version.get(), 2);
    }

    /// A reader that never lets go of the shared schema lock: the switch
    /// polls, escalates for at most `escalation` per attempt, and gives up
    /// after its attempts with `LockTimeout`, the database still at
    /// version 1. A reader that asked for the lock while the switch was queued is
    /// granted it as soon as the switch's queued wait times out.
    #[test]
    fn a_switch_that_never_gets_the_lock_gives_up_and_readers_go_on() {
        let Some(pg) = PgDb::new("a_switch_that_never_gets_the_lock") else {
            return;
        };
        let (_c, cat) = common::catalog(FILES);
        let policy = WriterPolicy {
            patience: Duration::from_millis(30),
            escalation: Duration::from_millis(300),
            attempts: 2,
        };
        let db = open(&pg, cat, policy);
        db.upgrader().expand().unwrap();
        let key = db.schema_lock_key();
        let mut hog = pg.conn();
        hog.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock_shared({key});"
        ))
        .unwrap();
        // A second reader asks while the switch is queued (it polls 30 ms first).
        let late = {
            let mut conn = pg.conn();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(120));
                let asked = Instant::now();
                conn.batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock_shared({key}); COMMIT;"
                ))
                .unwrap();
                asked.elapsed()
            })
        };
        let err = db.upgrader().switch().unwrap_err();
        let late_wait = late.join().unwrap();
        match &err {
            Error::LockTimeout {
                version,
                live,
                attempts: 2,
                ..
            } => {
                assert_eq!((version.get(), live.get()), (2, 1));
            }
            other => panic!("expected LockTimeout after 2 attempts, got {other:?}"),
        }
        let s = db.state().unwrap();
        assert_eq!((s.version.get(), s.phase), (1, StatePhase::Expanded));
        assert!(
            late_wait < Duration::from_millis(300 + 250),
            "a reader queued behind the escalating switch waited {late_wait:?}, more than the escalation bound"
        );
        hog.batch_execute("COMMIT").unwrap();
        db.upgrader().switch().unwrap();
        assert_eq!(db.state().unwrap().version.get(), 2);
    }
}

#[cfg(feature = "postgres")]
mod held_renewal {
    use super::common::{accounts_on, pg::PgDb};
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};
    use tandem::{Error, Postgres, Tandem};

    fn open(pg: &PgDb, label: &str, lease_ms: u64, poll_ms: u64) -> Tandem<Postgres> {
        Tandem::<Postgres>::builder(&pg.url, tandem::testing::demo::catalog().unwrap())
            .poll_interval(Duration::from_millis(poll_ms))
            .lease(Duration::from_millis(lease_ms))
            .label(label)
            .open()
            .unwrap()
    }

    /// A renewal's transaction reads the state row and then waits (here for
    /// a row lock on its fleet row) while the row expires and a switch
    /// commits without the instance. Committed afterwards, the renewal must
    /// not put the old version back on the steady path: the local deadline
    /// it sets runs from before its read (so a renewal held this long gives
    /// none), it holds the shared schema lock from before its read (a
    /// switch cannot commit in between: this closes the window where a
    /// shorter hold would), and the switch checks the acknowledgements again
    /// under its exclusive lock (a row renewed meanwhile acknowledges
    /// deploying mode first).
    #[test]
    fn a_renewal_held_between_its_read_and_its_write_never_reopens_the_old_version() {
        let Some(pg) = PgDb::new("a_renewal_held_between_its_read_and_write") else {
            return;
        };
        let upgrader_side = open(&pg, "upgrader", 1000, 20);
        // A renewal on every tick, and a tick only every 200 ms: a state
        // adopted wrongly would stand for that long.
        let held = open(&pg, "held", 500, 200);
        upgrader_side.upgrader().expand().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !held.steady() {
            assert!(
                Instant::now() < deadline,
                "the instance reaches the steady path"
            );
            thread::sleep(Duration::from_millis(5));
        }
        // Lock the instance's fleet row: its next renewal reads the state
        // row, then waits at its UPDATE.
        let mut locker = pg.conn();
        locker.batch_execute("BEGIN").unwrap();
        diesel::sql_query("SELECT id FROM tandem_fleet WHERE id = $1 FOR UPDATE")
            .bind::<diesel::sql_types::Text, _>(held.instance_id())
            .execute(&mut locker)
            .unwrap();
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut watcher = pg.conn();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let waiting: Vec<N> = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .load(&mut watcher)
            .unwrap();
            if waiting[0].n > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the renewal waits for the row lock"
            );
            thread::sleep(Duration::from_millis(10));
        }
        // Calls on the held instance throughout, each checking its binding
        // against the state row at its start and end.
        let stop = Arc::new(AtomicBool::new(false));
        let prober = {
            let (held, stop) = (held.clone(), stop.clone());
            thread::spawn(move || {
                let repo = accounts_on::<diesel::PgConnection>();
                let (mut calls, mut wrong) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let seen = held.call(&repo, |r, s| {
                        let before = r.live(s.conn())?;
                        Ok::<_, Error>((r.version(), before, r.live(s.conn())?))
                    });
                    match seen {
                        Ok((v, before, after)) => {
                            calls += 1;
                            if (i64::from(v), i64::from(v)) != (before, after) {
                                wrong.push((v, before, after));
                            }
                        }
                        Err(e) => panic!("a call failed: {e}"),
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                (calls, wrong)
            })
        };
        let switching = {
            let up = upgrader_side.clone();
            thread::spawn(move || up.upgrader().switch().map(|_| ()))
        };
        // Long enough for the row to expire and the notice to pass.
        thread::sleep(Duration::from_millis(2500));
        locker.batch_execute("COMMIT").unwrap();
        match switching.join().unwrap() {
            Ok(()) => {}
            // Gave up while the renewal held the shared lock: nothing changed.
            Err(Error::LockTimeout { .. } | Error::FleetNotAcknowledged { .. }) => {
                assert_eq!(upgrader_side.state().unwrap().version.get(), 1);
                upgrader_side.upgrader().switch().unwrap();
            }
            Err(e) => panic!("unexpected switch error: {e:?}"),
        }
        assert_eq!(upgrader_side.state().unwrap().version.get(), 2);
        thread::sleep(Duration::from_millis(600)); // past the held instance's next ticks
        stop.store(true, Ordering::Relaxed);
        let (calls, wrong) = prober.join().unwrap();
        assert!(calls > 0, "the prober ran");
        assert!(
            wrong.is_empty(),
            "{} of {calls} calls ran a binding other than the live version, e.g. (binding, before, after) {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }
}
