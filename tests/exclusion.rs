//! One upgrader at a time: in one process, between handles on one SQLite
//! file, and between OS processes. The loser gets a typed error naming the
//! holder, or waits; a dead holder's lease expires.

mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;
use tandem::testing::faults::UpgraderFaults as _;

use common::{open_demo, temp_db};
use tandem::{Error, StatePhase};

/// Runs this test binary again as a child process that executes `test` with
/// `TANDEM_CHILD` set to `role` and `TANDEM_CHILD_DB` to the database.
fn spawn_child(test: &str, role: &str, url: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TANDEM_CHILD", role)
        .env("TANDEM_CHILD_DB", url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The value printed by a child as `KEY=value` (libtest may print the test
/// name before it on the same line).
fn reported(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split(key).nth(1))
        .unwrap_or_else(|| panic!("child printed no {key}: {stdout}"))
        .trim()
        .to_owned()
}

fn child_role() -> Option<(String, String)> {
    Some((
        std::env::var("TANDEM_CHILD").ok()?,
        std::env::var("TANDEM_CHILD_DB").ok()?,
    ))
}

#[test]
fn a_second_upgrader_in_the_same_process_is_told_who_holds_the_lease() {
    let db = open_demo(":memory:");
    let first = db.upgrader().lease(Duration::from_secs(60)).crash_at(1);
    assert!(matches!(first.expand(), Err(Error::InjectedCrash { .. })));
    let err = db.upgrader().expand().unwrap_err();
    match &err {
        Error::UpgraderBusy {
            holder,
            expires_in_ms,
        } => {
            assert_eq!(holder, first.id());
            assert!(*expires_in_ms > 50_000, "{expires_in_ms}");
        }
        other => panic!("expected UpgraderBusy, got {other:?}"),
    }
    assert!(err.to_string().contains(first.id()), "{err}");
    assert_eq!(db.state().unwrap().upgrader.as_deref(), Some(first.id()));
    assert_eq!(
        db.state().unwrap().phase,
        StatePhase::Stable,
        "nothing changed"
    );
}

#[test]
fn handles_on_one_file_exclude_each_other_and_a_dead_lease_expires() {
    let (_dir, url) = temp_db();
    let a = open_demo(&url);
    let b = open_demo(&url);
    let holder = a.upgrader().lease(Duration::from_millis(400)).crash_at(1);
    assert!(matches!(holder.expand(), Err(Error::InjectedCrash { .. })));
    let err = b.upgrader().expand().unwrap_err();
    assert!(
        matches!(&err, Error::UpgraderBusy { holder: h, .. } if h == holder.id()),
        "{err:?}"
    );
    // Waiting outlasts the dead holder's lease.
    let report = b
        .upgrader()
        .wait_for_lease(Duration::from_secs(5))
        .expand()
        .unwrap();
    assert!(!report.already_done);
    assert_eq!(b.state().unwrap().phase, StatePhase::Expanded);
}

#[test]
fn concurrent_upgraders_on_one_file_apply_each_phase_once() {
    let (_dir, url) = temp_db();
    drop(open_demo(&url));
    let runners: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let db = open_demo(&url);
                db.upgrader()
                    .wait_for_lease(Duration::from_secs(20))
                    .upgrade_to(2)
                    .map(|r| r.len())
            })
        })
        .collect();
    let worked: usize = runners
        .into_iter()
        .map(|r| r.join().unwrap().unwrap())
        .sum();
    assert_eq!(worked, 3, "three phases in all, whoever ran them");
    let db = open_demo(&url);
    let history = db.history().unwrap();
    for phase in ["expand", "switch", "contract"] {
        assert_eq!(
            history
                .iter()
                .filter(|h| h.version.get() == 2 && h.phase == phase)
                .count(),
            1,
            "{phase}"
        );
    }
}

#[test]
fn an_upgrader_in_another_process_is_excluded() {
    if let Some((role, url)) = child_role() {
        // Child: take the lease and die holding it.
        assert_eq!(role, "holder");
        let db = open_demo(&url);
        let up = db.upgrader().lease(Duration::from_millis(800)).crash_at(1);
        assert!(matches!(up.expand(), Err(Error::InjectedCrash { .. })));
        println!("HOLDER={}", up.id());
        std::process::exit(0);
    }
    let (_dir, url) = temp_db();
    drop(open_demo(&url));
    let child = spawn_child("an_upgrader_in_another_process_is_excluded", "holder", &url);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let holder_id = reported(&stdout, "HOLDER=");

    let db = open_demo(&url);
    let err = db.upgrader().expand().unwrap_err();
    match &err {
        Error::UpgraderBusy { holder, .. } => assert_eq!(holder, &holder_id),
        other => panic!("expected UpgraderBusy, got {other:?}"),
    }
    assert_ne!(
        holder_id.split(':').nth(1),
        Some(std::process::id().to_string().as_str()),
        "held by the other process"
    );
    db.upgrader()
        .wait_for_lease(Duration::from_secs(5))
        .upgrade_to(2)
        .unwrap();
    assert_eq!(db.state().unwrap().version.get(), 2);
}

#[test]
fn three_processes_race_and_each_phase_is_applied_once() {
    if let Some((role, url)) = child_role() {
        assert_eq!(role, "racer");
        let db = open_demo(&url);
        let reports = db
            .upgrader()
            .wait_for_lease(Duration::from_secs(30))
            .upgrade_to(2)
            .unwrap();
        println!("RAN={}", reports.len());
        std::process::exit(0);
    }
    let (_dir, url) = temp_db();
    drop(open_demo(&url));
    let children: Vec<_> = (0..3)
        .map(|_| {
            spawn_child(
                "three_processes_race_and_each_phase_is_applied_once",
                "racer",
                &url,
            )
        })
        .collect();
    let mut ran = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        ran += reported(&stdout, "RAN=").parse::<usize>().unwrap();
    }
    assert_eq!(ran, 3);
    let db = open_demo(&url);
    let history = db.history().unwrap();
    let pids: std::collections::BTreeSet<_> = history
        .iter()
        .filter(|h| h.version.get() == 2)
        .map(|h| h.by.split(':').nth(1).unwrap_or("").to_owned())
        .collect();
    for phase in ["expand", "switch", "contract"] {
        assert_eq!(
            history
                .iter()
                .filter(|h| h.version.get() == 2 && h.phase == phase)
                .count(),
            1,
            "{phase}"
        );
    }
    assert!(
        !pids.contains(&std::process::id().to_string()),
        "the children did the work: {pids:?}"
    );
    assert_eq!(db.state().unwrap().version.get(), 2);
}
