//! The first start of a fleet: several instance processes open an empty
//! database at the same moment. Exactly one creates the metadata and applies
//! version 1; the others wait and adopt it. None fails (before: `relation
//! "accounts" already exists`, a duplicate key in `pg_type`, or the advice to
//! run `baseline(K)`). 4 processes × 10 rounds, on SQLite and PostgreSQL.
//!
//! The test binary runs itself again as each opener (`TANDEM_FIRST_URL`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tandem::{Backend, Tandem};

const PROCESSES: usize = 4;
const ROUNDS: usize = 10;

/// The child: wait for `go`, open, report `ok` or the error.
fn opener<B: Backend>() -> bool {
    let (Ok(url), Ok(dir)) = (
        std::env::var("TANDEM_FIRST_URL"),
        std::env::var("TANDEM_FIRST_DIR"),
    ) else {
        return false;
    };
    let dir = Path::new(&dir);
    let me = std::process::id();
    std::fs::write(dir.join(format!("ready-{me}")), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("go").exists() {
        assert!(Instant::now() < deadline, "never told to go");
        thread::sleep(Duration::from_micros(200));
    }
    let outcome = match Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .open()
    {
        Ok(db) => match db.state() {
            Ok(s) if s.version.get() == 1 => "ok".to_owned(),
            Ok(s) => format!("opened at version {}", s.version),
            Err(e) => format!("state: {e}"),
        },
        Err(e) => format!("open: {e}"),
    };
    std::fs::write(dir.join(format!("result-{me}")), outcome).unwrap();
    true
}

fn rounds<B: Backend>(test: &str, fresh: impl Fn() -> Option<(Box<dyn std::any::Any>, String)>) {
    if opener::<B>() {
        return;
    }
    for round in 0..ROUNDS {
        let Some((_guard, url)) = fresh() else { return };
        let dir = tempfile::tempdir().unwrap();
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", test, "--nocapture", "--test-threads=1"])
                    .env("TANDEM_FIRST_URL", &url)
                    .env("TANDEM_FIRST_DIR", dir.path())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("ready-"))
            })
            .count()
            < PROCESSES
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: openers never got ready"
            );
            thread::sleep(Duration::from_millis(5));
        }
        std::fs::write(dir.path().join("go"), "").unwrap();
        for mut child in children {
            assert!(
                child.wait().unwrap().success(),
                "round {round}: an opener crashed"
            );
        }
        let results: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_name()
                    .to_string_lossy()
                    .starts_with("result-")
                    .then(|| std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        assert_eq!(results.len(), PROCESSES, "round {round}");
        for r in &results {
            assert_eq!(r, "ok", "round {round}: {results:?}");
        }
        let db = Tandem::<B>::builder(&url, tandem::testing::demo::catalog().unwrap())
            .serves(1..=2)
            .open()
            .unwrap();
        let installs = db
            .history()
            .unwrap()
            .iter()
            .filter(|h| h.version.get() == 1 && h.phase == "expand")
            .count();
        assert_eq!(
            installs, 1,
            "round {round}: version 1 applied {installs} times"
        );
    }
}

#[test]
fn four_processes_open_an_empty_sqlite_database_at_once() {
    rounds::<tandem::Sqlite>(
        "four_processes_open_an_empty_sqlite_database_at_once",
        || {
            let (dir, url) = common::temp_db();
            Some((Box::new(dir), url))
        },
    );
}

#[cfg(feature = "postgres")]
#[test]
fn four_processes_open_an_empty_postgres_database_at_once() {
    rounds::<tandem::Postgres>(
        "four_processes_open_an_empty_postgres_database_at_once",
        || {
            let (db, url) = common::pg_setup("four_processes_open_an_empty_postgres_database")?;
            Some((Box::new(db), url))
        },
    );
}
