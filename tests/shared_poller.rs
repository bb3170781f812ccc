//! One poller per process (`fleet::group`): on PostgreSQL the handles of a
//! process on one database share one poller thread with a connection of
//! its own, outside their pools. So a handle whose calls hold every
//! connection of its pool still renews its lease and stays on the steady
//! path; a process with many handles runs one poller, not one per handle;
//! and one member's long call, which its own adoption must drain, holds up
//! no other member's acknowledgement. Built only with the `postgres`
//! feature; `scripts/test` runs it against a throwaway server.

#![cfg(feature = "postgres")]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use tandem::{Error, Postgres, Tandem};

/// The tests of this binary one at a time: one counts this process's
/// threads, and the others' pollers would be among them.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn builder(url: &str, label: &str) -> tandem::Builder<Postgres> {
    Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label(label)
        .statement_cache(false)
        .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
}

#[derive(diesel::QueryableByName)]
struct Lease {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    until: i64,
}

fn lease_until(db: &common::pg::PgDb, id: &str) -> i64 {
    diesel::sql_query("SELECT lease_until AS until FROM tandem_fleet WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result::<Lease>(&mut db.conn())
        .unwrap()
        .until
}

/// A handle with a one-connection pool whose only connection is held (a
/// long call, a connection taken by the application) for twice its lease:
/// its lease is renewed all the same (on the shared poller's own
/// connection), so it stays live in the fleet and on the steady path.
/// (With a poller on the pool, the renewal waited for the pool: the lease
/// ran out under the held connection, the watchdog closed the steady path
/// and the fleet row could expire.)
#[test]
fn a_handle_whose_pool_is_busy_still_renews_its_lease() {
    let _alone = ONE_AT_A_TIME.lock();
    let Some((pg, url)) = common::pg_setup("a_handle_whose_pool_is_busy") else {
        return;
    };
    let db = builder(&url, "busy")
        .pool_size(1)
        .connection_timeout(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(1))
        .push(false)
        .open()
        .unwrap();
    assert!(db.steady(), "steady after open");
    let before = lease_until(&pg, db.instance_id());
    let held = db.connection().unwrap();
    thread::sleep(Duration::from_millis(2_000));
    let during = lease_until(&pg, db.instance_id());
    let steady = db.steady();
    drop(held);
    assert!(
        during >= before + 1_000,
        "the lease was renewed while the pool's only connection was held: \
         lease_until moved {} ms in 2 s",
        during - before
    );
    assert!(steady, "still on the steady path after twice its lease");
}

/// Threads of this process whose name starts with `prefix` (Linux).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// How many threads are named `prefix…` once the count settles at
/// `want` (a new thread names itself as it starts), or after 2 s.
fn settled_threads(prefix: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = threads_named(prefix);
        if n == want || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Twenty handles of one process on one database: one poller thread for
/// all of them (none of their own), and it ends with the last handle. A
/// handle with another poll interval gets a poller of its own.
#[test]
fn the_handles_of_a_process_share_one_poller() {
    let _alone = ONE_AT_A_TIME.lock();
    let Some((_pg, url)) = common::pg_setup("the_handles_of_a_process_share") else {
        return;
    };
    // (Counted against what was there before: a shared poller of another
    // test may still be ending.)
    let fleet_threads = threads_named("tandem-fleet");
    let handles: Vec<_> = (0..20)
        .map(|n| {
            builder(&url, &format!("h{n}"))
                .poll_interval(Duration::from_millis(100))
                .pool_size(1)
                .open()
                .unwrap()
        })
        .collect();
    assert_eq!(
        settled_threads("tandem-fleet", fleet_threads + 1),
        fleet_threads + 1,
        "one shared poller for 20 handles"
    );
    assert_eq!(threads_named("tandem-poller"), 0, "no handle polls alone");
    let other = builder(&url, "other")
        .poll_interval(Duration::from_millis(150))
        .open()
        .unwrap();
    assert_eq!(
        settled_threads("tandem-fleet", fleet_threads + 2),
        fleet_threads + 2,
        "another poll interval, another shared poller"
    );
    // All of them acknowledge a switch (each its own fleet row).
    common::seed(&handles[0], 5);
    handles[0].upgrader().expand().unwrap();
    handles[0].upgrader().switch().unwrap();
    for h in handles.iter().chain([&other]) {
        assert_eq!(h.refresh().unwrap().version.get(), 2);
    }
    drop(other);
    drop(handles);
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_named("tandem-fleet") > fleet_threads && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        threads_named("tandem-fleet"),
        fleet_threads,
        "the shared pollers end with their last handle"
    );
}

#[derive(diesel::QueryableByName)]
struct Observed {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    observed_epoch: i64,
}

/// Five handles of one process (one shared poller), one of them in a 3 s
/// call on the steady path when a switch enters deploying mode: the other
/// four acknowledge it at once (their adoptions do not wait for the slow
/// member's drain), the slow one once its call ends, and the switch
/// completes.
#[test]
fn a_slow_member_holds_up_no_other_members_acknowledgement() {
    let _alone = ONE_AT_A_TIME.lock();
    let Some((pg, url)) = common::pg_setup("a_slow_member_holds_up_no_other") else {
        return;
    };
    let open = |label: &str| {
        builder(&url, label)
            .poll_interval(Duration::from_millis(100))
            .pool_size(2)
            .open()
            .unwrap()
    };
    let upgrader = open("upgrader");
    let members: Vec<_> = (0..5).map(|n| open(&format!("m{n}"))).collect();
    common::seed(&upgrader, 5);
    upgrader.upgrader().expand().unwrap();
    let epoch_before = upgrader.state().unwrap().epoch;
    let slow = &members[0];
    let slow_id = slow.instance_id().to_owned();
    thread::scope(|s| {
        let call = s.spawn(|| {
            slow.unit_of_work(|s| -> Result<_, Error> {
                diesel::sql_query("SELECT pg_sleep(3)").execute(s.conn())?;
                Ok(())
            })
        });
        // The call is in flight on the steady path.
        thread::sleep(Duration::from_millis(300));
        let switch = s.spawn(|| upgrader.upgrader().switch());
        // Each member's first acknowledgement of an epoch after the
        // expand's, as seen from outside.
        let started = Instant::now();
        let mut acked: std::collections::HashMap<String, Duration> = Default::default();
        while acked.len() < members.len() && started.elapsed() < Duration::from_secs(10) {
            let rows: Vec<Observed> =
                diesel::sql_query("SELECT id, observed_epoch FROM tandem_fleet")
                    .load(&mut pg.conn())
                    .unwrap();
            for r in rows {
                if r.observed_epoch > epoch_before
                    && members.iter().any(|m| m.instance_id() == r.id)
                {
                    acked.entry(r.id).or_insert_with(|| started.elapsed());
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        call.join().unwrap().unwrap();
        switch.join().unwrap().unwrap();
        let slow_at = acked[&slow_id];
        let fast = members
            .iter()
            .filter(|m| m.instance_id() != slow_id)
            .map(|m| acked[m.instance_id()])
            .max()
            .unwrap();
        assert!(
            slow_at >= Duration::from_millis(2_000),
            "the slow member acknowledged after its call: {slow_at:?}"
        );
        assert!(
            fast < Duration::from_millis(1_000),
            "the other members acknowledged while the slow one drained: the last after {fast:?} \
             (the slow one after {slow_at:?})"
        );
    });
    assert_eq!(members[1].refresh().unwrap().version.get(), 2);
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The server processes of the test's database (but the asker's own).
fn backends(pg: &common::pg::PgDb) -> Vec<i32> {
    diesel::sql_query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .load::<Pid>(&mut pg.conn())
    .unwrap()
    .into_iter()
    .map(|p| p.pid)
    .collect()
}

/// The shared poller's own connection killed (as a terminated backend, a
/// server restart or a pooler's timeout would): the tick that finds it
/// dead fails, the poller drops it and connects again, and the lease goes
/// on being renewed. (It was a pool of one that did not test connections
/// at checkout, and diesel counts a PostgreSQL connection broken only
/// inside a failed transaction: the dead connection came back every tick,
/// and every handle of the process lost its lease.)
#[test]
fn the_shared_poller_connects_again_after_its_connection_is_killed() {
    let _alone = ONE_AT_A_TIME.lock();
    let Some((pg, url)) = common::pg_setup("the_shared_poller_connects_again") else {
        return;
    };
    let before = backends(&pg);
    let db = builder(&url, "killed")
        .pool_size(1)
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(1))
        .push(false)
        .open()
        .unwrap();
    let member = {
        let mut conn = db.connection().unwrap();
        diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut *conn)
            .unwrap()
            .pid
    };
    let poller: Vec<i32> = backends(&pg)
        .into_iter()
        .filter(|p| !before.contains(p) && *p != member)
        .collect();
    assert_eq!(
        poller.len(),
        1,
        "one connection beside the pool's: the poller's ({poller:?})"
    );
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<diesel::sql_types::Integer, _>(poller[0])
        .execute(&mut pg.conn())
        .unwrap();
    // A tick finds it dead.
    thread::sleep(Duration::from_millis(300));
    let killed = lease_until(&pg, db.instance_id());
    thread::sleep(Duration::from_millis(2_000));
    let later = lease_until(&pg, db.instance_id());
    assert!(
        later >= killed + 1_000,
        "renewed after the poller's connection was killed: lease_until moved {} ms in 2 s",
        later - killed
    );
    assert!(db.steady(), "on the steady path again");
}

/// A member's `refresh` waiting for its busy one-connection pool (its tick
/// lock held throughout) holds up no other member of the process: the
/// other's lease is renewed meanwhile and it stays on the steady path.
/// (The shared poller waited for that member's tick lock, and so no member
/// renewed until the refresh got its connection.)
#[test]
fn a_refresh_waiting_for_its_pool_holds_up_no_other_member() {
    let _alone = ONE_AT_A_TIME.lock();
    let Some((pg, url)) = common::pg_setup("a_refresh_waiting_for_its_pool") else {
        return;
    };
    let open = |label: &str, pool: u32| {
        builder(&url, label)
            .pool_size(pool)
            .connection_timeout(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(50))
            .lease(Duration::from_secs(1))
            .push(false)
            .open()
            .unwrap()
    };
    let busy = open("busy", 1);
    let other = open("other", 2);
    let held = busy.connection().unwrap();
    thread::scope(|s| {
        let refresh = s.spawn(|| busy.refresh());
        thread::sleep(Duration::from_millis(200));
        let before = lease_until(&pg, other.instance_id());
        thread::sleep(Duration::from_millis(2_000));
        let during = lease_until(&pg, other.instance_id());
        let steady = other.steady();
        drop(held);
        refresh.join().unwrap().unwrap();
        assert!(
            during >= before + 1_000,
            "the other member renewed while the busy one's refresh waited: \
             lease_until moved {} ms in 2 s",
            during - before
        );
        assert!(steady, "the other member stayed on the steady path");
    });
}
