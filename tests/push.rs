//! Push (`Builder::push`, `fleet::push`): on a direct connection every
//! instance hears the state row's changes as they commit and acknowledges
//! deploying mode at once, whatever its poll interval; behind a
//! transaction-mode PgBouncer the probe notice does not arrive and the
//! fleet polls, as before; a listening session killed is opened again.
//! Built only with the `postgres` feature; `scripts/test` runs it against a
//! throwaway server and a real PgBouncer.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use tandem::{Postgres, StatePhase, Tandem};

/// A poll so long that a switch waiting for polls would take about as long.
const SLOW_POLL: Duration = Duration::from_secs(30);

fn open(url: &str, label: &str, poll: Duration, push: bool) -> Tandem<Postgres> {
    Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label(label)
        .statement_cache(false)
        .poll_interval(poll)
        .push(push)
        .pool_size(3)
        .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
        .open()
        .unwrap()
}

/// How many sessions of the test's database run `LISTEN`.
fn listening_sessions(url: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = <diesel::PgConnection as diesel::Connection>::establish(url).unwrap();
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .get_result::<N>(&mut conn)
    .unwrap()
    .n
}

/// Expands, then times the switch: entering deploying mode, waiting for
/// every other instance's acknowledgement, the version bump.
fn timed_switch(fleet: &[Tandem<Postgres>]) -> Duration {
    common::seed(&fleet[0], 20);
    fleet[0].upgrader().expand().unwrap();
    let started = Instant::now();
    fleet[0].upgrader().switch().unwrap();
    let took = started.elapsed();
    let s = fleet[1].state().unwrap();
    assert_eq!((s.version.get(), s.phase), (2, StatePhase::Switched));
    took
}

/// Three instances polling every 30 s: with push (the default) the switch
/// is not held up by their polls: each hears deploying mode as it commits,
/// drains and acknowledges, and the switch is done in well under a second
/// (bounded here at 5 s for a loaded machine). One listening session serves
/// the whole process. (Before push the same switch waited for both other
/// instances' next polls, up to 30 s.)
#[test]
fn a_listening_fleet_acknowledges_deploying_mode_whatever_its_poll() {
    let Some((_db, url)) = common::pg_setup("a_listening_fleet_acknowledges") else {
        return;
    };
    let fleet: Vec<_> = (0..3)
        .map(|n| open(&url, &format!("i{n}"), SLOW_POLL, true))
        .collect();
    assert!(
        fleet.iter().all(Tandem::pushed),
        "every instance hears notices"
    );
    assert_eq!(listening_sessions(&url), 1, "one session per process");
    let took = timed_switch(&fleet);
    eprintln!("switch with push, 30 s polls: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(fleet);
    let started = Instant::now();
    while listening_sessions(&url) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the last handle gone, its listening session closes"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// `push(false)`: no listening session; the fleet polls (here every 100 ms)
/// and the switch still completes.
#[test]
fn push_off_opens_no_session_and_polls() {
    let Some((_db, url)) = common::pg_setup("push_off_opens_no_session") else {
        return;
    };
    let fleet: Vec<_> = (0..2)
        .map(|n| open(&url, &format!("i{n}"), Duration::from_millis(100), false))
        .collect();
    assert!(!fleet.iter().any(Tandem::pushed));
    assert_eq!(listening_sessions(&url), 0);
    let took = timed_switch(&fleet);
    eprintln!("switch without push, 100 ms polls: {took:?}");
}

/// The listening session killed on the server: the instances say they do
/// not hear notices while it is gone, the hearer opens another, and a
/// switch after it is again not held up by 30 s polls.
#[test]
fn a_killed_listening_session_is_opened_again() {
    let Some((db, url)) = common::pg_setup("a_killed_listening_session") else {
        return;
    };
    let fleet: Vec<_> = (0..2)
        .map(|n| open(&url, &format!("i{n}"), SLOW_POLL, true))
        .collect();
    assert!(fleet[1].pushed());
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .execute(&mut db.conn())
    .unwrap();
    let started = Instant::now();
    while fleet[1].pushed() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the loss is seen"
        );
        thread::sleep(Duration::from_millis(5));
    }
    while !fleet[1].pushed() {
        assert!(started.elapsed() < Duration::from_secs(20), "reconnected");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listening_sessions(&url), 1);
    let took = timed_switch(&fleet);
    eprintln!("switch after the listening session came back: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Behind PgBouncer in transaction mode `LISTEN` is lost with the server
/// connection it ran on: the probe notice does not arrive, no instance says
/// it hears notices, and the fleet polls (every 100 ms here): the switch
/// completes.
#[test]
fn behind_a_transaction_pooler_the_fleet_falls_back_to_polling() {
    let Some((_db, url)) = common::pgbouncer_setup("behind_a_transaction_pooler_falls_back") else {
        return;
    };
    let opened = Instant::now();
    let fleet: Vec<_> = (0..3)
        .map(|n| open(&url, &format!("i{n}"), Duration::from_millis(100), true))
        .collect();
    eprintln!(
        "three handles opened behind PgBouncer (one probe): {:?}",
        opened.elapsed()
    );
    assert!(
        !fleet.iter().any(Tandem::pushed),
        "nothing heard through the pooler"
    );
    let took = timed_switch(&fleet);
    eprintln!("switch behind PgBouncer, 100 ms polls: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A change of the state row that commits while a handle opens, after its
/// last read and before it subscribes to notices, sends its notice to no
/// one in the handle's process; a state row edited by hand sends none at
/// all. Either way the handle's first tick after subscribing reads the row
/// (its subscription starts as noticed): here an epoch bumped by hand right
/// after the open is acknowledged at the first poll (2 s), not at the first
/// renewal (a quarter of the 60 s lease). Seen failing before the fix (a
/// subscription that started unnoticed): the row was still unacknowledged
/// after 6 s.
#[test]
fn a_change_before_the_subscription_is_read_at_the_first_tick() {
    let Some((db, url)) = common::pg_setup("a_change_before_the_subscription") else {
        return;
    };
    let handle = Tandem::<Postgres>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .poll_interval(Duration::from_secs(2))
        .lease(Duration::from_secs(60))
        .open()
        .unwrap();
    assert!(handle.pushed());
    let before = handle.state().unwrap().epoch;
    diesel::sql_query("UPDATE tandem_state SET epoch = epoch + 1")
        .execute(&mut db.conn())
        .unwrap();
    let started = Instant::now();
    loop {
        let me = handle.instances().unwrap();
        assert_eq!(me.len(), 1);
        if me[0].observed_epoch == before + 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "epoch {} by hand still unacknowledged after {:?} (acknowledged {})",
            before + 1,
            started.elapsed(),
            me[0].observed_epoch
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("acknowledged after {:?}", started.elapsed());
}

/// PostgreSQL's default lease is 30 s, renewed about every quarter lease:
/// a steady instance at the default settings writes its fleet row about
/// every 7.5 s, not every second poll (BENCHMARKS.md, "The fleet at scale",
/// measures what that costs the server).
#[test]
fn the_default_lease_on_postgres_is_30_s_and_renewals_are_rare() {
    #[derive(diesel::QueryableByName)]
    struct Left {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        left: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        until: i64,
    }
    let Some((db, url)) = common::pg_setup("the_default_lease_on_postgres") else {
        return;
    };
    let handle = Tandem::<Postgres>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .open()
        .unwrap();
    let read = || {
        diesel::sql_query(
            "SELECT lease_until - (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS left, \
             lease_until AS until FROM tandem_fleet",
        )
        .get_result::<Left>(&mut db.conn())
        .unwrap()
    };
    let first = read();
    assert!(
        (25_000..=30_000).contains(&first.left),
        "lease left {} ms",
        first.left
    );
    thread::sleep(Duration::from_secs(3));
    let later = read();
    assert_eq!(later.until, first.until, "no renewal within 3 s");
    drop(handle);
}
