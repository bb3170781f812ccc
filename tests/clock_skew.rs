//! Hosts whose clocks disagree (invariant 8 of `tandem::protocol`), on
//! PostgreSQL: instance processes run under libfaketime (`faketime -f
//! "-10s" …`), their wall clocks off by ±10 s and ±60 s, while this process
//! upgrades. Leases, expiries and cutoffs come from the database's clock, so:
//!
//! - the switch stays refused while a skewed old instance (serves 1..=1)
//!   lives, whichever way its clock is off, and its calls never fail;
//! - a skewed instance that is killed stops counting about two leases after
//!   its last renewal, by the database's clock, not when its own clock said.
//!
//! Needs Debian's `faketime`; `scripts/test` installs it and sets
//! `TANDEM_REQUIRE_FAKETIME=1`, under which a missing `faketime` fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tandem::{Error, Postgres, Tandem};

const LEASE: Duration = Duration::from_millis(500);

fn faketime() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("faketime"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("TANDEM_REQUIRE_FAKETIME").as_deref() != Ok("1"),
            "TANDEM_REQUIRE_FAKETIME=1 but `faketime` is not on PATH (apt-get install faketime)"
        );
        eprintln!("SKIPPED: the clock-skew tests need `faketime` (apt-get install faketime)");
    }
    found
}

fn open(url: &str, label: &str, serves: std::ops::RangeInclusive<u32>) -> Tandem<Postgres> {
    Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(serves)
        .label(label)
        .poll_interval(Duration::from_millis(50))
        .lease(LEASE)
        .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
        .open()
        .unwrap()
}

/// The child: an instance that calls until `dir/stop` exists, then writes
/// `calls errors` to `dir/result`.
fn run_child() -> bool {
    let (Ok(url), Ok(dir), Ok(serves)) = (
        std::env::var("TANDEM_SKEW_URL"),
        std::env::var("TANDEM_SKEW_DIR"),
        std::env::var("TANDEM_SKEW_LAST"),
    ) else {
        return false;
    };
    let dir = PathBuf::from(dir);
    let db = open(&url, "skewed", 1..=serves.parse().unwrap());
    let repo = common::accounts_on::<diesel::PgConnection>();
    // `faketime` runs this as its child: the parent kills it by this pid.
    std::fs::write(dir.join("pid"), std::process::id().to_string()).unwrap();
    std::fs::write(dir.join("ready"), "").unwrap();
    let (mut calls, mut errors) = (0u64, Vec::new());
    while !dir.join("stop").exists() {
        match db.call(&repo, |r, s| {
            r.live(s.conn()).map(|live| (r.version(), live))
        }) {
            Ok((binding, live)) if i64::from(binding) == live => calls += 1,
            Ok((binding, live)) => errors.push(format!("binding {binding} on version {live}")),
            Err(e) => errors.push(e.to_string()),
        }
        thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(
        dir.join("result"),
        format!("{calls} {}\n{}", errors.len(), errors.join("\n")),
    )
    .unwrap();
    true
}

/// Starts this test as an instance process under `faketime`, its clock off
/// by `offset` (`"-10s"`), serving `1..=last`; returns once it has joined.
fn spawn_skewed(
    faketime: &Path,
    test: &str,
    offset: &str,
    url: &str,
    dir: &Path,
    last: u32,
) -> Child {
    let child = Command::new(faketime)
        .args(["-f", offset])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TANDEM_SKEW_URL", url)
        .env("TANDEM_SKEW_DIR", dir)
        .env("TANDEM_SKEW_LAST", last.to_string())
        // Only the wall clock: hosts' monotonic clocks are never compared
        // (and libfaketime's faked timed waits can hang a process).
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("ready").exists() {
        assert!(
            Instant::now() < deadline,
            "the skewed instance never joined"
        );
        thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child, dir: &Path) -> (u64, u64, String) {
    std::fs::write(dir.join("stop"), "").unwrap();
    assert!(
        child.wait().unwrap().success(),
        "the skewed instance failed"
    );
    let result = std::fs::read_to_string(dir.join("result")).unwrap();
    let (head, rest) = result.split_once('\n').unwrap_or((&result, ""));
    let mut n = head.split(' ').map(|x| x.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap(), rest.to_owned())
}

/// An old binary (serves 1..=1) whose clock is off lives through several
/// leases: every switch attempt is refused, naming it, and its calls work.
#[test]
fn a_skewed_old_instance_keeps_the_switch_refused() {
    if run_child() {
        return;
    }
    let Some(faketime) = faketime() else { return };
    let Some((_guard, url)) = common::pg_setup("a_skewed_old_instance_keeps_the_switch_refused")
    else {
        return;
    };
    let up = open(&url, "upgrader", 1..=2);
    common::seed(&up, 10);
    up.upgrader().expand().unwrap();
    for offset in ["-10s", "-60s", "+10s", "+60s"] {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_skewed(
            &faketime,
            "a_skewed_old_instance_keeps_the_switch_refused",
            offset,
            &url,
            dir.path(),
            1,
        );
        // Long enough for a lease its own clock dated 10 s back to look
        // expired and be removed, were leases on hosts' clocks.
        thread::sleep(LEASE * 4);
        match up.upgrader().switch() {
            Err(Error::SwitchRefused { instances, .. }) => assert!(
                instances.iter().any(|i| i.contains("skewed")),
                "{offset}: {instances:?}"
            ),
            other => panic!(
                "{offset}: the switch must be refused while the old instance lives: {other:?}"
            ),
        }
        let (calls, errors, detail) = stop(child, dir.path());
        assert!(calls > 0, "{offset}: the skewed instance made no call");
        assert_eq!(
            errors, 0,
            "{offset}: the skewed instance's calls failed: {detail}"
        );
        assert_eq!(up.state().unwrap().version.get(), 1, "{offset}");
    }
}

/// A skewed instance (serves 1..=2) is killed: the switch, which waits for
/// every live instance to acknowledge deploying mode, goes through once the
/// instance's lease has run out by the database's clock (about two leases
/// after its last renewal), not when its own skewed clock would say.
#[test]
fn a_killed_skewed_instance_stops_counting_within_two_leases() {
    if run_child() {
        return;
    }
    let Some(faketime) = faketime() else { return };
    for offset in ["+10s", "+60s", "-10s"] {
        let Some((_guard, url)) = common::pg_setup("a_killed_skewed_instance_stops_counting")
        else {
            return;
        };
        let up = open(&url, "upgrader", 1..=2);
        up.upgrader().expand().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_skewed(
            &faketime,
            "a_killed_skewed_instance_stops_counting_within_two_leases",
            offset,
            &url,
            dir.path(),
            2,
        );
        thread::sleep(LEASE);
        // SIGKILL the instance itself (faketime's child): no clean exit,
        // its fleet row stays behind.
        let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
        let killed = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(killed.success(), "could not kill the skewed instance {pid}");
        child.wait().unwrap();
        let killed = Instant::now();
        let report = up
            .upgrader()
            .switch()
            .unwrap_or_else(|e| panic!("{offset}: {e}"));
        let took = killed.elapsed();
        assert_eq!(report.version.get(), 2);
        assert!(
            took < LEASE * 2 + Duration::from_millis(1500),
            "{offset}: the killed instance held the switch for {took:?} (two leases are {:?})",
            LEASE * 2
        );
        eprintln!("{offset}: switched {took:?} after the kill (lease {LEASE:?})");
    }
}
