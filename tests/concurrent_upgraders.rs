//! Four OS processes run `upgrade_to(2)` at the same moment, on SQLite, on
//! PostgreSQL and on PostgreSQL behind PgBouncer in transaction mode: two
//! wait for the lease, two do not. Checked: each phase is
//! applied exactly once (the history says so, and says a child ran it), a
//! process that did not wait either finished or exited with
//! `UpgraderBusy` naming another racer, and the final state is right with
//! every seeded row readable through the new binding.
//!
//! The test binary runs itself again as each racer (`TANDEM_RACER`); the
//! racers open their handles first and then start together on a signal file.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::accounts_on;
use tandem::{Backend, Error, StatePhase, Tandem};

const SEEDED: usize = 3000;
const RACERS: usize = 4;

/// (role, url, go-file) when this process is a racer.
fn racer() -> Option<(String, String, String)> {
    Some((
        std::env::var("TANDEM_RACER").ok()?,
        std::env::var("TANDEM_RACER_URL").ok()?,
        std::env::var("TANDEM_RACER_GO").ok()?,
    ))
}

fn wait_for(go: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !go.exists() {
        assert!(Instant::now() < deadline, "no start signal");
        thread::sleep(Duration::from_millis(1));
    }
}

/// What a racer printed: its id and its outcome (`done` or `busy <holder>`).
fn reported(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split(key).nth(1))
        .unwrap_or_else(|| panic!("racer printed no {key}: {stdout}"))
        .trim()
        .to_owned()
}

macro_rules! race_suite {
    ($test:ident, $backend:ty, $setup:expr, $statement_cache:expr) => {
        #[test]
        fn $test() {
            type B = $backend;
            let open = |url: &str, label: &str| {
                Tandem::<B>::builder(url, tandem::testing::demo::catalog().unwrap())
                    .label(label)
                    .statement_cache($statement_cache)
                    .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
                    .open()
                    .unwrap()
            };
            if let Some((role, url, go)) = racer() {
                let db = open(&url, &role);
                let waits = role.starts_with("waiter");
                let up = if waits {
                    db.upgrader().wait_for_lease(Duration::from_secs(60))
                } else {
                    db.upgrader()
                };
                println!("ID={}", up.id());
                wait_for(Path::new(&go));
                match up.upgrade_to(2) {
                    Ok(_) => println!("OUTCOME=done"),
                    Err(Error::UpgraderBusy { holder, .. }) if !waits => {
                        println!("OUTCOME=busy {holder}")
                    }
                    Err(e) => println!("OUTCOME=error {e}"),
                }
                return;
            }
            let Some((_guard, url)) = $setup(stringify!($test)) else {
                return;
            };
            let db = open(&url, "checker");
            let repo = accounts_on::<<B as Backend>::Connection>();
            common::seed(&db, SEEDED);
            let dir = tempfile::tempdir().unwrap();
            let go = dir.path().join("go");
            let children: Vec<_> = (0..RACERS)
                .map(|i| {
                    let role = if i % 2 == 0 {
                        format!("waiter{i}")
                    } else {
                        format!("eager{i}")
                    };
                    Command::new(std::env::current_exe().unwrap())
                        .args([
                            "--exact",
                            stringify!($test),
                            "--nocapture",
                            "--test-threads=1",
                        ])
                        .env("TANDEM_RACER", role)
                        .env("TANDEM_RACER_URL", &url)
                        .env("TANDEM_RACER_GO", &go)
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            // Every racer has opened its handle (the fleet table lists it).
            let deadline = Instant::now() + Duration::from_secs(60);
            while db.instances().unwrap().len() < RACERS + 1 {
                assert!(Instant::now() < deadline, "racers did not start");
                thread::sleep(Duration::from_millis(5));
            }
            std::fs::write(&go, "go").unwrap();
            let mut ids = Vec::new();
            let mut outcomes = Vec::new();
            for child in children {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success());
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                ids.push(reported(&stdout, "ID="));
                outcomes.push(reported(&stdout, "OUTCOME="));
            }
            eprintln!("{}: outcomes {outcomes:?}", stringify!($test));
            for (i, outcome) in outcomes.iter().enumerate() {
                if i % 2 == 0 {
                    assert_eq!(outcome, "done", "a waiting racer must finish");
                } else if let Some(holder) = outcome.strip_prefix("busy ") {
                    assert!(
                        ids.iter().enumerate().any(|(j, id)| j != i && id == holder),
                        "racer {i} was told {holder:?}, not another racer ({ids:?})"
                    );
                } else {
                    assert_eq!(outcome, "done", "racer {i}");
                }
            }
            let s = db.state().unwrap();
            assert_eq!((s.version.get(), s.phase), (2, StatePhase::Stable));
            assert_eq!(s.upgrader, None, "the lease was released");
            let history = db.history().unwrap();
            let mut by = BTreeSet::new();
            for phase in ["expand", "switch", "contract"] {
                let runs: Vec<_> = history
                    .iter()
                    .filter(|h| h.version.get() == 2 && h.phase == phase)
                    .collect();
                assert_eq!(runs.len(), 1, "{phase}: {runs:?}");
                assert_eq!(runs[0].outcome, "applied", "{phase}");
                assert!(
                    ids.contains(&runs[0].by),
                    "{phase} was run by {}, not a racer",
                    runs[0].by
                );
                by.insert(runs[0].by.clone());
            }
            eprintln!("{}: phases run by {by:?}", stringify!($test));
            db.refresh().unwrap();
            for id in [1_i64, (SEEDED / 2) as i64, SEEDED as i64] {
                assert_eq!(
                    db.call(&repo, |r, s| r.email(s.conn(), id)).unwrap(),
                    Some(format!("s{}@x", id - 1))
                );
            }
        }
    };
}

use common::sqlite_setup;
race_suite!(
    four_upgrader_processes_race_on_sqlite,
    tandem::Sqlite,
    sqlite_setup,
    true
);

#[cfg(feature = "postgres")]
use common::pg_setup;
#[cfg(feature = "postgres")]
race_suite!(
    four_upgrader_processes_race_on_postgres,
    tandem::Postgres,
    pg_setup,
    true
);

// Behind PgBouncer in transaction mode (2 server connections): the lease
// alone excludes, whatever server session each racer's statements land on.
#[cfg(feature = "postgres")]
use common::pgbouncer_setup;
#[cfg(feature = "postgres")]
race_suite!(
    four_upgrader_processes_race_behind_pgbouncer,
    tandem::Postgres,
    pgbouncer_setup,
    false
);
