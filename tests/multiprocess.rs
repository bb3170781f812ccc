//! A fleet of OS processes on one database (SQLite file, PostgreSQL, and
//! PostgreSQL behind PgBouncer in transaction mode): an old instance whose
//! binary serves only version 1, two new instances serving 1 and 2, each
//! calling under load, and an upgrader process that expands, is refused the
//! switch while the old instance lives, then (old instance gone) switches,
//! switches back, switches again and contracts. The old binary restarts
//! mid-deploy the way Kubernetes and systemd restart it: during expand (its
//! second process opens with history rows of a version it does not know)
//! and after the switch back (its third), and each time it serves. Every
//! call records its binding and the version the database showed at its
//! start and end.
//!
//! The test binary runs itself again as each child (`TANDEM_MP_ROLE`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{accounts_on, AccountsOn};
use tandem::{Backend, Error, Tandem};

const THREADS: usize = 4;

fn spawn(test: &str, role: &str, url: &str, dir: &Path) -> Child {
    spawn_gen(test, role, 1, url, dir)
}

/// `generation`: which start of the role's binary this is (the old one restarts).
fn spawn_gen(test: &str, role: &str, generation: u32, url: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TANDEM_MP_ROLE", role)
        .env("TANDEM_MP_GEN", generation.to_string())
        .env("TANDEM_MP_URL", url)
        .env("TANDEM_MP_DIR", dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn child() -> Option<(String, String, PathBuf)> {
    Some((
        std::env::var("TANDEM_MP_ROLE").ok()?,
        std::env::var("TANDEM_MP_URL").ok()?,
        PathBuf::from(std::env::var("TANDEM_MP_DIR").ok()?),
    ))
}

fn wait_for(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// This process's generation (`TANDEM_MP_GEN`).
fn generation() -> u32 {
    std::env::var("TANDEM_MP_GEN")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

/// The name an instance process's files go by: the role, and for the old
/// binary its generation (`old-2`).
fn name(role: &str) -> String {
    if role == "old" {
        format!("old-{}", generation())
    } else {
        role.to_owned()
    }
}

/// An instance process: THREADS callers until `stop` (or `stop-old-<gen>`
/// for the old binary), then its records go to `<name>.log`.
fn run_instance<B: Backend>(db: Tandem<B>, role: &str, dir: &Path)
where
    common::AccountsV1: AccountsOn<B::Connection>,
    common::AccountsV2: AccountsOn<B::Connection>,
{
    let me = name(role);
    let stop_file = dir.join(if role == "old" {
        format!("stop-{me}")
    } else {
        "stop".to_owned()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|n| {
            let (db, stop, role) = (db.clone(), stop.clone(), me.clone());
            thread::spawn(move || {
                let repo = accounts_on::<B::Connection>();
                let mut log = String::new();
                let mut mine: Vec<i64> = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("{role}-{n}-{i}@x");
                    let result = if i % 3 != 0 || mine.is_empty() {
                        db.unit_of_work(|s| {
                            let r = s.repo(&repo)?;
                            let before = r.live(s.conn()).unwrap();
                            let id = r.create(s.conn(), &role, &email)?;
                            Ok::<_, Error>((
                                r.version(),
                                before,
                                r.live(s.conn()).unwrap(),
                                Some(id),
                            ))
                        })
                    } else {
                        let id = mine[(i as usize) % mine.len()];
                        db.call(&repo, |r, s| {
                            let before = r.live(s.conn()).unwrap();
                            r.email(s.conn(), id)?;
                            Ok::<_, Error>((r.version(), before, r.live(s.conn()).unwrap(), None))
                        })
                    };
                    match result {
                        Ok((v, before, after, id)) => {
                            log.push_str(&format!("C {v} {before} {after}\n"));
                            if let Some(id) = id {
                                mine.push(id);
                                log.push_str(&format!("A {id} {email}\n"));
                            }
                        }
                        // The old binary cannot serve version 2: it never gets there,
                        // because the switch waits for it to leave.
                        Err(e) => {
                            log.push_str(&format!("E {}\n", e.to_string().replace('\n', " ")))
                        }
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                log
            })
        })
        .collect();
    std::fs::write(dir.join(format!("{me}.ready")), "").unwrap();
    wait_for(&stop_file, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let log: String = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // Leave the fleet table before the log says this instance is done: the
    // upgrader switches as soon as it sees the old instance's log.
    drop(db);
    std::fs::write(dir.join(format!("{me}.log")), log).unwrap();
}

/// The upgrader process.
fn run_upgrader<B: Backend>(db: Tandem<B>, dir: &Path) {
    let ready = |name: &str| wait_for(&dir.join(format!("{name}.ready")), Duration::from_secs(60));
    let gone = |name: &str| {
        std::fs::write(dir.join(format!("stop-{name}")), "").unwrap();
        wait_for(&dir.join(format!("{name}.log")), Duration::from_secs(60));
    };
    for name in ["old-1", "new-a", "new-b"] {
        ready(name);
    }
    thread::sleep(Duration::from_millis(300));
    let up = db.upgrader();
    up.expand().unwrap();
    // The old binary restarts during expand, and serves.
    gone("old-1");
    ready("old-2");
    thread::sleep(Duration::from_millis(300));
    let refused = match up.switch() {
        Err(e @ Error::SwitchRefused { .. }) => e.to_string(),
        other => panic!("the switch must be refused while the old instance lives: {other:?}"),
    };
    std::fs::write(dir.join("refused"), refused).unwrap();
    thread::sleep(Duration::from_millis(200));
    gone("old-2");
    let switch = up.switch().unwrap();
    thread::sleep(Duration::from_millis(300));
    up.switch_back().unwrap();
    // After the switch back the old binary starts again, and serves.
    std::fs::write(dir.join("switched-back"), "").unwrap();
    ready("old-3");
    thread::sleep(Duration::from_millis(300));
    gone("old-3");
    up.switch().unwrap();
    thread::sleep(Duration::from_millis(400));
    up.contract().unwrap();
    thread::sleep(Duration::from_millis(200));
    std::fs::write(
        dir.join("upgrader.log"),
        format!(
            "fleet_ack={:?} writer_wait={:?} held={:?} max_lock_wait={:?}\n",
            switch.fleet_ack,
            switch.writer_wait,
            switch.held,
            db.max_lock_wait()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("stop"), "").unwrap();
}

/// The instance processes' log names.
const LOGS: [&str; 5] = ["old-1", "old-2", "old-3", "new-a", "new-b"];

struct Outcome {
    calls: Vec<(u32, i64, i64)>,
    acked: BTreeMap<i64, String>,
    errors: Vec<String>,
}

fn collect(dir: &Path) -> Outcome {
    let mut o = Outcome {
        calls: Vec::new(),
        acked: BTreeMap::new(),
        errors: Vec::new(),
    };
    for role in LOGS {
        let text = std::fs::read_to_string(dir.join(format!("{role}.log"))).unwrap();
        for line in text.lines() {
            let mut f = line.splitn(4, ' ');
            match (f.next(), f.next(), f.next(), f.next()) {
                (Some("C"), Some(v), Some(b), Some(a)) => {
                    o.calls
                        .push((v.parse().unwrap(), b.parse().unwrap(), a.parse().unwrap()))
                }
                (Some("A"), Some(id), Some(email), None) => {
                    o.acked.insert(id.parse().unwrap(), email.to_owned());
                }
                _ => o.errors.push(format!("{role}: {line}")),
            }
        }
    }
    o
}

macro_rules! fleet_of_processes {
    ($test:ident, $backend:ty, $setup:expr, $statement_cache:expr) => {
        #[test]
        fn $test() {
            type B = $backend;
            let open = |url: &str, label: &str, serves: std::ops::RangeInclusive<u32>| {
                Tandem::<B>::builder(url, tandem::testing::demo::catalog().unwrap())
                    .serves(serves)
                    .label(label)
                    .poll_interval(Duration::from_millis(50))
                    .pool_size(THREADS as u32 + 2)
                    .statement_cache($statement_cache)
                    .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
                    .open()
                    .unwrap()
            };
            if let Some((role, url, dir)) = child() {
                match role.as_str() {
                    "old" => run_instance(open(&url, "old", 1..=1), &role, &dir),
                    "new-a" | "new-b" => run_instance(open(&url, &role, 1..=2), &role, &dir),
                    "upgrader" => run_upgrader(open(&url, "upgrader", 1..=2), &dir),
                    other => panic!("unknown role {other}"),
                }
                return;
            }
            let Some((guard, url)) = $setup(stringify!($test)) else {
                return;
            };
            drop(open(&url, "setup", 1..=2)); // creates version 1
            let dir = tempfile::tempdir().unwrap();
            let children: Vec<(String, Child)> = ["old", "new-a", "new-b", "upgrader"]
                .iter()
                .map(|r| (r.to_string(), spawn(stringify!($test), r, &url, dir.path())))
                .collect();
            let mut children = children.into_iter();
            // The old binary, restarted by the parent as a supervisor would:
            // once during expand, once after the switch back.
            let (_, mut old) = children.next().unwrap();
            assert!(old.wait().unwrap().success(), "the old-1 process failed");
            let mut old = spawn_gen(stringify!($test), "old", 2, &url, dir.path());
            assert!(old.wait().unwrap().success(), "the old-2 process failed");
            wait_for(&dir.path().join("switched-back"), Duration::from_secs(120));
            let mut old = spawn_gen(stringify!($test), "old", 3, &url, dir.path());
            assert!(old.wait().unwrap().success(), "the old-3 process failed");
            for (role, mut c) in children {
                assert!(c.wait().unwrap().success(), "the {role} process failed");
            }
            let refused = std::fs::read_to_string(dir.path().join("refused")).unwrap();
            assert!(
                refused.contains("old") && refused.contains("serves 1..=1"),
                "{refused}"
            );
            let o = collect(dir.path());
            for g in 1..=3 {
                let log = std::fs::read_to_string(dir.path().join(format!("old-{g}.log"))).unwrap();
                assert!(
                    log.lines().any(|l| l == "C 1 1 1"),
                    "the old binary's process {g} served no call"
                );
            }
            assert!(
                o.errors.is_empty(),
                "failed calls: {:?}",
                &o.errors[..o.errors.len().min(5)]
            );
            assert!(o.calls.len() > 100, "too few calls: {}", o.calls.len());
            for (binding, before, after) in &o.calls {
                assert_eq!(
                    (i64::from(*binding), i64::from(*binding)),
                    (*before, *after),
                    "a call ran a binding other than the live version"
                );
            }
            let versions: BTreeSet<u32> = o.calls.iter().map(|c| c.0).collect();
            assert_eq!(
                versions.into_iter().collect::<Vec<_>>(),
                vec![1, 2],
                "at most two versions in use, both served"
            );
            // No lost write: every acknowledged write reads back through version 2.
            let db = open(&url, "checker", 2..=2);
            let repo = accounts_on::<<B as Backend>::Connection>();
            let mut lost = 0;
            for (id, email) in &o.acked {
                if db
                    .call(&repo, |r, s| r.email(s.conn(), *id))
                    .unwrap()
                    .as_ref()
                    != Some(email)
                {
                    lost += 1;
                }
            }
            assert_eq!(lost, 0, "lost writes out of {}", o.acked.len());
            let state = db.state().unwrap();
            assert_eq!(
                (state.version.get(), state.phase, state.mode),
                (2, tandem::StatePhase::Stable, tandem::Mode::Steady)
            );
            // Started once more now, the old binary is told what to deploy.
            let late = Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
                .serves(1..=1)
                .label("old-late")
                .statement_cache($statement_cache)
                .open();
            let err = match late {
                Err(e) => e,
                Ok(late) => late.call(&repo, |r, s| r.email(s.conn(), 1)).unwrap_err(),
            };
            assert!(
                matches!(err, Error::VersionNotServed { live, first, last } if (live.get(), first.get(), last.get()) == (2, 1, 1))
                    && err.to_string().contains("deploy a binary with bindings for version 2"),
                "{err:?}"
            );
            let stats = std::fs::read_to_string(dir.path().join("upgrader.log")).unwrap();
            eprintln!(
                "{}: {} calls, {} acknowledged writes, 0 lost; upgrader: {stats}",
                stringify!($test),
                o.calls.len(),
                o.acked.len()
            );
            drop(db);
            let remaining: Vec<String> = {
                let db = open(&url, "final", 2..=2);
                db.instances()
                    .unwrap()
                    .into_iter()
                    .map(|i| i.label)
                    .filter(|l| l != "final")
                    .collect()
            };
            assert!(
                remaining.is_empty(),
                "instances left in the fleet table: {remaining:?}"
            );
            after_check(&guard);
        }
    };
}

trait AfterCheck {
    fn after_check(&self);
}
fn after_check<G: AfterCheck>(g: &G) {
    g.after_check()
}

impl AfterCheck for tempfile::TempDir {
    fn after_check(&self) {}
}

use common::sqlite_setup;

fleet_of_processes!(
    sqlite_fleet_of_processes,
    tandem::Sqlite,
    sqlite_setup,
    true
);

#[cfg(feature = "postgres")]
impl AfterCheck for common::pg::PgDb {
    /// No advisory lock is left held on the database.
    fn after_check(&self) {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.conn();
        let held: N = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
        )
        .get_result(&mut conn)
        .unwrap();
        assert_eq!(held.n, 0, "advisory locks left held");
    }
}

#[cfg(feature = "postgres")]
use common::pg_setup;

#[cfg(feature = "postgres")]
fleet_of_processes!(
    postgres_fleet_of_processes,
    tandem::Postgres,
    pg_setup,
    true
);

#[cfg(feature = "postgres")]
use common::pgbouncer_setup;

// Behind PgBouncer in transaction mode, 2 server connections for the whole
// fleet: no session state, no prepared statements (PgBouncer 1.18).
#[cfg(feature = "postgres")]
fleet_of_processes!(
    pgbouncer_fleet_of_processes,
    tandem::Postgres,
    pgbouncer_setup,
    false
);
