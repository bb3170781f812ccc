//! The upgrader killed with SIGKILL at every step boundary of expand (with a
//! batched backfill), switch and contract, on SQLite and PostgreSQL, while
//! another process keeps calling; then the same command run again finishes
//! the job. Checked: the state is whole after every kill, each phase is
//! applied exactly once, no call ever ran a binding other than the live
//! version, and no acknowledged write is lost.
//!
//! The test binary runs itself again as the upgrader child
//! (`TANDEM_CRASH_STEP`), which stops at step k; the parent kills it there.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tandem::testing::faults::UpgraderFaults as _;

use common::{accounts_on, AccountsOn};
use tandem::{Backend, Error, StatePhase, Tandem};

const SEEDED: usize = 2500;

fn child() -> Option<(usize, String, String)> {
    Some((
        std::env::var("TANDEM_CRASH_STEP").ok()?.parse().ok()?,
        std::env::var("TANDEM_CRASH_URL").ok()?,
        std::env::var("TANDEM_CRASH_MARKER").ok()?,
    ))
}

/// Calls on `db` until `stop`: (binding, state version at start, at end) and
/// acknowledged writes.
fn caller<B: Backend>(db: Tandem<B>, stop: Arc<AtomicBool>) -> thread::JoinHandle<common::Seen>
where
    common::AccountsV1: AccountsOn<B::Connection>,
    common::AccountsV2: AccountsOn<B::Connection>,
{
    thread::spawn(move || {
        let repo = accounts_on::<B::Connection>();
        let (mut calls, mut acked, mut errors) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let email = format!("c{i}@x");
            match db.unit_of_work(|s| {
                let r = s.repo(&repo)?;
                let before = r.live(s.conn()).unwrap();
                let id = r.create(s.conn(), "c", &email)?;
                Ok::<_, Error>((r.version(), before, r.live(s.conn()).unwrap(), id))
            }) {
                Ok((v, b, a, id)) => {
                    calls.push((v, b, a));
                    acked.insert(id, email);
                }
                Err(e) => errors.push(e.to_string()),
            }
            thread::sleep(Duration::from_millis(3));
        }
        (calls, acked, errors)
    })
}

fn wait_for_marker_or_exit(marker: &Path, child: &mut std::process::Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if marker.exists() {
            return true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the upgrader child failed");
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the upgrader child neither halted nor finished"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

macro_rules! crash_suite {
    ($test:ident, $backend:ty, $setup:expr) => {
        #[test]
        fn $test() {
            type B = $backend;
            let open = |url: &str, label: &str| {
                Tandem::<B>::builder(url, tandem::testing::demo::catalog().unwrap())
                    .label(label)
                    .poll_interval(Duration::from_millis(20))
                    .lease(Duration::from_millis(200))
                    .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
                    .open()
                    .unwrap()
            };
            if let Some((step, url, marker)) = child() {
                let db = open(&url, "upgrader");
                // Halted at `step`, this never returns (the parent kills the
                // process); past the last step boundary the upgrade must have
                // finished: a failure here fails the child, and the parent
                // checks the child's exit status.
                db.upgrader()
                    .lease(Duration::from_millis(300))
                    .halt_at(step, marker)
                    .upgrade_to(2)
                    .expect("the upgrader child ran past its last step boundary and failed");
                return;
            }
            let mut step = 1;
            let mut halted_at = Vec::new();
            loop {
                let Some((_guard, url)) = $setup(stringify!($test)) else {
                    return;
                };
                let db = open(&url, "server");
                let repo = accounts_on::<<B as Backend>::Connection>();
                common::seed(&db, SEEDED);
                let stop = Arc::new(AtomicBool::new(false));
                let calls = caller(db.clone(), stop.clone());
                let dir = tempfile::tempdir().unwrap();
                let marker = dir.path().join("halted");
                let mut child = Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", stringify!($test), "--test-threads=1"])
                    .env("TANDEM_CRASH_STEP", step.to_string())
                    .env("TANDEM_CRASH_URL", &url)
                    .env("TANDEM_CRASH_MARKER", &marker)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                let halted = wait_for_marker_or_exit(&marker, &mut child);
                if halted {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    halted_at.push(std::fs::read_to_string(&marker).unwrap());
                    // Whatever the kill left is whole.
                    let s = db.state().unwrap();
                    assert!(
                        matches!(
                            (s.version.get(), s.phase),
                            (1, StatePhase::Stable | StatePhase::Expanded)
                                | (2, StatePhase::Switched | StatePhase::Stable)
                        ),
                        "step {step}: torn state {s:?}"
                    );
                    // The same command again finishes the job.
                    db.upgrader()
                        .wait_for_lease(Duration::from_secs(10))
                        .upgrade_to(2)
                        .unwrap();
                }
                thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
                let (made, acked, errors) = calls.join().unwrap();
                // The checks below are over these calls: there must be some.
                assert!(
                    !made.is_empty() && !acked.is_empty(),
                    "step {step}: no call ran while the upgrader was killed and rerun"
                );
                assert!(
                    errors.is_empty(),
                    "step {step}: calls failed: {:?}",
                    &errors[..errors.len().min(3)]
                );
                for (v, before, after) in &made {
                    assert_eq!(
                        (i64::from(*v), i64::from(*v)),
                        (*before, *after),
                        "step {step}: a call saw a torn version"
                    );
                }
                let s = db.state().unwrap();
                assert_eq!(
                    (s.version.get(), s.phase),
                    (2, StatePhase::Stable),
                    "step {step}"
                );
                let history = db.history().unwrap();
                for phase in ["expand", "switch", "contract"] {
                    let n = history
                        .iter()
                        .filter(|h| {
                            h.version.get() == 2 && h.phase == phase && h.outcome == "applied"
                        })
                        .count();
                    assert_eq!(n, 1, "step {step}: {phase} applied {n} times");
                }
                for (id, email) in &acked {
                    assert_eq!(
                        db.call(&repo, |r, s| r.email(s.conn(), *id))
                            .unwrap()
                            .as_ref(),
                        Some(email),
                        "step {step}: lost write"
                    );
                }
                for id in [1_i64, SEEDED as i64] {
                    assert_eq!(
                        db.call(&repo, |r, s| r.email(s.conn(), id)).unwrap(),
                        Some(format!("s{}@x", id - 1)),
                        "step {step}"
                    );
                }
                if !halted {
                    break;
                }
                step += 1;
            }
            eprintln!(
                "{}: killed at {} step boundaries: {halted_at:?}",
                stringify!($test),
                halted_at.len()
            );
            for phase in ["expand", "switch", "contract"] {
                assert!(
                    halted_at.iter().any(|a| a.starts_with(phase)),
                    "never killed in {phase}"
                );
            }
        }
    };
}

use common::sqlite_setup;
crash_suite!(
    sigkill_at_every_step_on_sqlite,
    tandem::Sqlite,
    sqlite_setup
);

#[cfg(feature = "postgres")]
use common::pg_setup;
#[cfg(feature = "postgres")]
crash_suite!(
    sigkill_at_every_step_on_postgres,
    tandem::Postgres,
    pg_setup
);
