//! Server restarts and killed connections (issue 10, item 7), on a private
//! PostgreSQL cluster per test that the test restarts (`pg_ctl restart -m
//! fast`): mid-backfill, mid-switch in deploying mode, and the upgrader's
//! backend terminated (`pg_terminate_backend`). Afterwards the fleet is in
//! steady mode, no lease is held, a rerun finishes, and every acknowledged
//! write reads back; connections the restart broke are not handed out
//! again.
//!
//! The cluster comes from the PostgreSQL server binaries (`initdb`,
//! `pg_ctl`) under `/usr/lib/postgresql/*/bin`; as root it runs as the
//! `postgres` user. Without them the tests say SKIPPED, unless
//! `TANDEM_REQUIRE_PG=1` (`scripts/test`), under which that is a failure.
#![cfg(feature = "postgres")]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::accounts_on;
use tandem::testing::faults::FleetFaults as _;
use tandem::{Mode, Postgres, StatePhase, Tandem};

/// A throwaway cluster on a loopback port, stopped and removed on drop.
struct Cluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn as_postgres(root: bool, program: &std::path::Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn start(test: &str) -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                let mut bins: Vec<PathBuf> = dirs
                    .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                    .filter(|b| b.join("initdb").exists())
                    .collect();
                bins.sort();
                bins.pop()
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var("TANDEM_REQUIRE_PG").as_deref() != Ok("1"),
                "{test}: TANDEM_REQUIRE_PG=1 but no PostgreSQL server binaries under /usr/lib/postgresql"
            );
            eprintln!("SKIPPED {test}: needs PostgreSQL's server binaries (initdb, pg_ctl)");
            return None;
        };
        let root = is_root();
        let dir = tempfile::tempdir().unwrap();
        if root {
            assert!(Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success());
        }
        let data = dir.path().join("data");
        let ok = as_postgres(root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb failed");
        let log = dir.path().join("server.log");
        let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
        for attempt in 0..8u64 {
            let port = 20000 + ((seed.wrapping_mul(7919) + attempt * 104_729) % 40000) as u16;
            let started = as_postgres(root, &bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.path().display()
                ))
                .arg("start")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if started {
                return Some(Cluster {
                    _dir: dir,
                    data,
                    log,
                    bin,
                    port,
                });
            }
        }
        panic!("could not start a private PostgreSQL cluster");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast`: every connection is closed, the server
    /// comes back on the same port. Returns how long it was gone.
    fn restart(&self) -> Duration {
        let started = Instant::now();
        let ok = as_postgres(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-m", "fast", "restart"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl restart failed");
        started.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn open(url: &str, label: &str, slow_backfill: Option<Arc<AtomicUsize>>) -> Tandem<Postgres> {
    Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label(label)
        .poll_interval(Duration::from_millis(50))
        .pool_size(6)
        .connection_timeout(Duration::from_secs(5))
        .switch_timeout(Duration::from_secs(20))
        .backfill(2, "copy emails", move |conn| {
            let copied = tandem::testing::demo::backfill_emails(conn)?;
            if let Some(batches) = &slow_backfill {
                // Inside the batch's transaction, after its statement.
                batches.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(150));
            }
            Ok(copied)
        })
        .open()
        .unwrap()
}

/// Writes through the handle until stopped: (acknowledged (id, email),
/// failures with when they started relative to `restarted`).
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, String)>>>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    handle: thread::JoinHandle<()>,
}

fn writer(db: &Tandem<Postgres>) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let (db, stop, acked, failures) =
            (db.clone(), stop.clone(), acked.clone(), failures.clone());
        thread::spawn(move || {
            let repo = accounts_on::<diesel::PgConnection>();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let email = format!("w{i}@x");
                let started = Instant::now();
                match db.unit_of_work(|s| s.repo(&repo)?.create(s.conn(), "w", &email)) {
                    Ok(id) => acked.lock().unwrap().push((id, email)),
                    Err(e) => failures.lock().unwrap().push((started, e.to_string())),
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    Writer {
        stop,
        acked,
        failures,
        handle,
    }
}

impl Writer {
    /// Stops it; returns (acknowledged writes, failures of calls that
    /// started after `back`, when the server was up again).
    fn finish(self, back: Instant) -> (Vec<(i64, String)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        let after: Vec<String> = self
            .failures
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > back)
            .map(|(_, e)| e.clone())
            .collect();
        (self.acked.lock().unwrap().clone(), after)
    }
}

/// Holds `n` pooled connections at once, so that the pool has `n` idle ones
/// (all of which a restart breaks).
fn warm_pool(db: &Tandem<Postgres>, n: usize) {
    let held: Vec<_> = (0..n).map(|_| db.connection().unwrap()).collect();
    drop(held);
}

fn assert_clean(db: &Tandem<Postgres>, version: u32, phase: StatePhase) {
    let state = db.state().unwrap();
    assert_eq!(
        (state.version.get(), state.phase, state.mode),
        (version, phase, Mode::Steady),
        "steady mode, database as before: {state:?}"
    );
    assert!(state.upgrader.is_none(), "no lease left: {state:?}");
}

/// Every acknowledged write reads back through version 2.
fn assert_no_lost_write(url: &str, acked: &[(i64, String)]) {
    let db = Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(2..=2)
        .label("checker")
        .open()
        .unwrap();
    let repo = accounts_on::<diesel::PgConnection>();
    let lost = acked
        .iter()
        .filter(|(id, email)| {
            db.call(&repo, |r, s| r.email(s.conn(), *id))
                .unwrap()
                .as_ref()
                != Some(email)
        })
        .count();
    assert_eq!(lost, 0, "lost writes out of {}", acked.len());
}

fn finish_upgrade(db: &Tandem<Postgres>) {
    let up = db.upgrader().wait_for_lease(Duration::from_secs(5));
    up.switch().unwrap();
    up.contract().unwrap();
}

#[test]
fn a_restart_mid_backfill_leaves_steady_mode_and_no_lease() {
    let Some(cluster) = Cluster::start("a_restart_mid_backfill_leaves_steady_mode_and_no_lease")
    else {
        return;
    };
    let url = cluster.url();
    let batches = Arc::new(AtomicUsize::new(0));
    let db = open(&url, "backfill", Some(batches.clone()));
    common::seed(&db, 20_000);
    // The application writes through a handle of its own; the upgrader's
    // pool has idle connections, which the restart breaks.
    let app = open(&url, "app", None);
    warm_pool(&db, 5);
    let w = writer(&app);
    let expand = {
        let db = db.clone();
        thread::spawn(move || db.upgrader().expand())
    };
    while batches.load(Ordering::SeqCst) < 2 {
        thread::sleep(Duration::from_millis(5));
    }
    let gone = cluster.restart();
    let back = Instant::now();
    let result = expand.join().unwrap();
    eprintln!("server gone {gone:?}; expand: {result:?}");
    assert!(
        result.is_err(),
        "the backfill lost its connection: {result:?}"
    );
    assert_clean(&db, 1, StatePhase::Stable);
    thread::sleep(Duration::from_millis(300));
    let (acked, after) = w.finish(back);
    assert!(
        after.is_empty(),
        "calls after the restart got broken connections: {after:?}"
    );
    let report = db.upgrader().expand().unwrap();
    assert!(
        report.batches > 0,
        "the rerun resumed the backfill: {report:?}"
    );
    finish_upgrade(&db);
    drop(app);
    assert_no_lost_write(&url, &acked);
}

#[test]
fn a_restart_mid_switch_leaves_steady_mode_and_no_lease() {
    let Some(cluster) = Cluster::start("a_restart_mid_switch_leaves_steady_mode_and_no_lease")
    else {
        return;
    };
    let url = cluster.url();
    let db = open(&url, "upgrader", None);
    common::seed(&db, 200);
    db.upgrader().expand().unwrap();
    let app = open(&url, "app", None);
    // Another instance that does not acknowledge (paused): the switch
    // waits in deploying mode.
    let other = Tandem::<Postgres>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label("paused")
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(60))
        .open()
        .unwrap();
    other.pause_fleet(true);
    warm_pool(&db, 5);
    let w = writer(&app);
    let switch = {
        let db = db.clone();
        thread::spawn(move || db.upgrader().switch())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while other.state().map(|s| s.mode).ok() != Some(Mode::Deploying) {
        assert!(
            Instant::now() < deadline,
            "the switch never entered deploying mode"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let gone = cluster.restart();
    let back = Instant::now();
    let result = switch.join().unwrap();
    eprintln!("server gone {gone:?}; switch: {result:?}");
    assert!(
        result.is_err(),
        "the switch lost its connection: {result:?}"
    );
    assert_clean(&db, 1, StatePhase::Expanded);
    thread::sleep(Duration::from_millis(300));
    let (acked, after) = w.finish(back);
    assert!(
        after.is_empty(),
        "calls after the restart got broken connections: {after:?}"
    );
    other.pause_fleet(false);
    finish_upgrade(&db);
    drop((other, app));
    assert_no_lost_write(&url, &acked);
}

#[test]
fn a_terminated_upgrader_backend_leaves_steady_mode_and_no_lease() {
    let Some(cluster) =
        Cluster::start("a_terminated_upgrader_backend_leaves_steady_mode_and_no_lease")
    else {
        return;
    };
    let url = cluster.url();
    let batches = Arc::new(AtomicUsize::new(0));
    let db = open(&url, "terminated", Some(batches.clone()));
    common::seed(&db, 20_000);
    let w = writer(&db);
    let expand = {
        let db = db.clone();
        thread::spawn(move || db.upgrader().expand())
    };
    while batches.load(Ordering::SeqCst) < 2 {
        thread::sleep(Duration::from_millis(5));
    }
    // The backend running the backfill (it sleeps between batches inside
    // its transaction: idle in transaction).
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName, Debug)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        k: bool,
    }
    let mut admin = diesel::PgConnection::establish(&url).unwrap();
    let killed: Vec<Killed> = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS k FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND state = 'idle in transaction' AND query LIKE '%account_emails%'",
    )
    .load(&mut admin)
    .unwrap();
    let back = Instant::now();
    assert!(
        killed.iter().any(|k| k.k),
        "no backfill backend found to terminate: {killed:?}"
    );
    let result = expand.join().unwrap();
    eprintln!("terminated {} backend(s); expand: {result:?}", killed.len());
    assert!(
        result.is_err(),
        "the backfill lost its connection: {result:?}"
    );
    assert_clean(&db, 1, StatePhase::Stable);
    thread::sleep(Duration::from_millis(300));
    let (acked, after) = w.finish(back);
    assert!(after.is_empty(), "calls after the kill failed: {after:?}");
    db.upgrader().expand().unwrap();
    finish_upgrade(&db);
    assert_no_lost_write(&url, &acked);
}

/// A restart breaks every idle pooled connection. The first call to find
/// one fails (nobody could know); the pool is then swept, and no later call
/// gets a broken connection. (Before: each of the five idle connections
/// failed a call in turn, "server closed the connection unexpectedly".)
#[test]
fn broken_connections_are_not_handed_out_again() {
    let Some(cluster) = Cluster::start("broken_connections_are_not_handed_out_again") else {
        return;
    };
    let url = cluster.url();
    // A slow poller, so that calls, not its ticks, meet the broken ones.
    let db = Tandem::<Postgres>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label("idle")
        .poll_interval(Duration::from_secs(10))
        .pool_size(6)
        .connection_timeout(Duration::from_secs(5))
        .open()
        .unwrap();
    common::seed(&db, 10);
    warm_pool(&db, 5);
    let gone = cluster.restart();
    let repo = accounts_on::<diesel::PgConnection>();
    let failed: Vec<String> = (0..8)
        .filter_map(|i| {
            db.unit_of_work(|s| s.repo(&repo)?.create(s.conn(), "after", &format!("a{i}@x")))
                .err()
                .map(|e| e.to_string())
        })
        .collect();
    eprintln!(
        "server gone {gone:?}; {} of 8 calls failed: {failed:?}",
        failed.len()
    );
    assert!(
        failed.len() <= 1,
        "broken connections were handed out again: {failed:?}"
    );
}
