//! A bounded switch (issue 10, item 9): an instance process frozen
//! (`SIGSTOP`) inside a locking-path transaction holds the shared schema
//! lock. The switch gives up within its bound
//! ([`Builder::switch_timeout`](tandem::Builder::switch_timeout)) with a
//! typed error, returns the fleet to steady mode and leaves the database as
//! it was; once the instance resumes and goes, the switch goes through.
//!
//! The test binary runs itself again as the instance (`TANDEM_FROZEN_URL`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tandem::{Backend, Error, Mode, StatePhase, Tandem};

const BOUND: Duration = Duration::from_secs(2);

fn open<B: Backend>(url: &str, label: &str) -> Tandem<B> {
    Tandem::<B>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label(label)
        .poll_interval(Duration::from_millis(50))
        // Ten polls on both backends (PostgreSQL's default is 30 s): the
        // killed instance's lease runs out within the test.
        .lease(Duration::from_millis(500))
        .switch_timeout(BOUND)
        .open()
        .unwrap()
}

/// The instance: two threads whose calls overlap, each holding its
/// locking-path transaction for 200 ms; `in-tx` marks that one is inside
/// (a locking-path call of version 1, not a steady one still in flight).
fn run_instance<B: Backend>(url: &str, dir: &Path) {
    let db = open::<B>(url, "frozen");
    std::fs::write(dir.join("ready"), "").unwrap();
    let workers: Vec<_> = (0..2)
        .map(|n| {
            let (db, dir) = (db.clone(), dir.to_owned());
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100 * n));
                loop {
                    // The test's `pause`: no calls while it switches back.
                    if dir.join("pause").exists() {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    // Off the steady path before the call starts, so the call
                    // takes the locking path: the drain closes the steady
                    // path while steady calls are still in flight, and those
                    // hold no database lock.
                    let locking = !db.steady();
                    let _ = db.unit_of_work(|s| -> Result<(), Error> {
                        // Version 1 on the locking path: the switch cannot
                        // commit before this call ends. (A call that waited
                        // for the lock behind a switch that committed first
                        // runs version 2, after it: no marker.)
                        if locking && !db.steady() && s.version().get() == 1 {
                            let _ = std::fs::write(dir.join("in-tx"), "");
                            thread::sleep(Duration::from_millis(200));
                        }
                        Ok(())
                    });
                    thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

fn spawn(test: &str, url: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TANDEM_FROZEN_URL", url)
        .env("TANDEM_FROZEN_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {path:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn frozen_instance<B: Backend>(test: &str, url: &str) {
    let db = open::<B>(url, "upgrader");
    db.upgrader().expand().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(test, url, dir.path());
    wait_for(&dir.path().join("ready"));
    // The switch moves the fleet to the locking path; once the instance is
    // inside a locking-path transaction of version 1, freeze it. (A fast
    // switch can take the lock first, between the acknowledgement and the
    // instance's next call: then it commits, and the try starts again after
    // a switch back.)
    let in_tx = dir.path().join("in-tx");
    let mut tries = 0;
    let switch = loop {
        tries += 1;
        assert!(
            tries <= 20,
            "no try found the instance inside a call of version 1"
        );
        let _ = std::fs::remove_file(&in_tx);
        let switch = {
            let db = db.clone();
            thread::spawn(move || {
                let started = Instant::now();
                (db.upgrader().switch(), started.elapsed())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !in_tx.exists() && !switch.is_finished() {
            assert!(Instant::now() < deadline, "timed out waiting for {in_tx:?}");
            thread::sleep(Duration::from_millis(1));
        }
        if in_tx.exists() {
            break switch;
        }
        let (result, _) = switch.join().unwrap();
        result.unwrap_or_else(|e| panic!("a switch with nothing frozen: {e:?}"));
        // Back, with the instance's calls paused (on SQLite its overlapping
        // calls hold the only write lock nearly all the time).
        let pause = dir.path().join("pause");
        std::fs::write(&pause, "").unwrap();
        thread::sleep(Duration::from_millis(500));
        db.upgrader().switch_back().unwrap();
        // Until the instance is steady again its calls take the locking
        // path at version 1 and would leave a marker for the next try.
        thread::sleep(Duration::from_millis(500));
        std::fs::remove_file(&pause).unwrap();
    };
    signal(&child, "-STOP");
    let frozen_at = Instant::now();
    // Unfreeze after a minute whatever happens, so a hung switch fails the
    // test instead of hanging it.
    let (result, took) = loop {
        if switch.is_finished() {
            break switch.join().unwrap();
        }
        if frozen_at.elapsed() > Duration::from_secs(60) {
            signal(&child, "-CONT");
            let _ = child.kill();
            panic!("the switch waited over a minute for a frozen instance");
        }
        thread::sleep(Duration::from_millis(10));
    };
    eprintln!("{test}: the switch gave up after {took:?} (bound {BOUND:?}): {result:?}");
    match &result {
        Err(Error::LockTimeout { .. } | Error::FleetNotAcknowledged { .. }) => {}
        other => {
            signal(&child, "-CONT");
            let _ = child.kill();
            panic!("expected the switch to give up on the frozen instance: {other:?}");
        }
    }
    // The bound, with slack for one last lock attempt and a loaded machine.
    assert!(
        took < BOUND + Duration::from_millis(1500),
        "the switch waited {took:?}, over its bound of {BOUND:?}"
    );
    let state = db.state().unwrap();
    assert_eq!(
        (state.version.get(), state.phase),
        (1, StatePhase::Expanded),
        "database unchanged"
    );
    if B::NAME == "sqlite" {
        // The frozen process holds SQLite's only write lock: nobody can
        // write, the cleanup included. Deploying mode keeps every call on
        // the locking path (safe); the next command returns it to steady.
        eprintln!("{test}: mode {:?} while the writer is frozen", state.mode);
        assert!(
            state.upgrader.is_some(),
            "the cleanup cannot release the lease while the frozen process holds the write lock: {state:?}"
        );
    } else {
        assert_eq!(state.mode, Mode::Steady, "back to steady");
        assert!(state.upgrader.is_none(), "lease released: {state:?}");
    }
    // The instance resumes and goes; the switch then goes through.
    signal(&child, "-CONT");
    let _ = child.kill();
    let _ = child.wait();
    // No waiting for the lease: one the cleanup could not release (SQLite,
    // whose write lock the frozen process held) is this process's own, and
    // its next upgrader takes it over at once.
    let up = db.upgrader().lease(Duration::from_secs(5));
    let report = loop {
        match up.switch() {
            Ok(r) => break r,
            // The killed instance's lease runs out first.
            Err(Error::LockTimeout { .. } | Error::FleetNotAcknowledged { .. })
                if frozen_at.elapsed() < Duration::from_secs(60) =>
            {
                thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("the switch after the instance went: {e:?}"),
        }
    };
    assert!(!report.already_done);
    let state = db.state().unwrap();
    assert_eq!(
        (state.version.get(), state.phase, state.mode),
        (2, StatePhase::Switched, Mode::Steady)
    );
}

fn child_role<B: Backend>() -> bool {
    let (Ok(url), Ok(dir)) = (
        std::env::var("TANDEM_FROZEN_URL"),
        std::env::var("TANDEM_FROZEN_DIR"),
    ) else {
        return false;
    };
    run_instance::<B>(&url, Path::new(&dir));
    true
}

#[test]
fn sqlite_switch_gives_up_on_a_frozen_instance() {
    if child_role::<tandem::Sqlite>() {
        return;
    }
    let Some((_dir, url)) = common::sqlite_setup("sqlite_switch_gives_up_on_a_frozen_instance")
    else {
        return;
    };
    frozen_instance::<tandem::Sqlite>("sqlite_switch_gives_up_on_a_frozen_instance", &url);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_switch_gives_up_on_a_frozen_instance() {
    if child_role::<tandem::Postgres>() {
        return;
    }
    let Some((_db, url)) = common::pg_setup("postgres_switch_gives_up_on_a_frozen_instance") else {
        return;
    };
    frozen_instance::<tandem::Postgres>("postgres_switch_gives_up_on_a_frozen_instance", &url);
}
