//! A catalogue of bad input on SQLite: each case asserts the exact typed
//! error, that its message says what to do, and that nothing in the
//! database changed (schema, state row, history, data).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{accounts, catalog, open_demo, raw, temp_db, THREE_VERSIONS};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use tandem::{Catalog, CatalogError, Error, Phase, Repository, Sqlite, Tandem};

/// Everything a case could change: schema, metadata rows, data.
fn fingerprint(url: &str) -> String {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let mut conn = raw(url);
    let mut out = Vec::new();
    let queries = [
        "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS line FROM sqlite_master ORDER BY name",
        "SELECT 'state ' || version || ' ' || phase || ' ' || mode || ' ' || epoch AS line FROM tandem_state",
        "SELECT 'history ' || version || ' ' || phase || ' ' || outcome || ' ' || checksum AS line FROM tandem_history ORDER BY id",
        "SELECT 'account ' || id || ' ' || name || ' ' || email AS line FROM accounts ORDER BY id",
    ];
    for q in queries {
        if let Ok(rows) = diesel::sql_query(q).load::<Line>(&mut conn) {
            out.extend(rows.into_iter().map(|r| r.line));
        }
    }
    out.join("\n")
}

/// A demo database at version 1 with two accounts.
fn seeded() -> (tempfile::TempDir, String) {
    let (dir, url) = temp_db();
    let db = open_demo(&url);
    let repo = accounts();
    for (n, e) in [("ada", "ada@x"), ("grace", "grace@x")] {
        db.unit_of_work(|s| s.repo(&repo)?.create(s.conn(), n, e))
            .unwrap();
    }
    (dir, url)
}

/// Runs `case` on a seeded database and checks nothing changed.
fn unchanged<T>(url: &str, case: impl FnOnce() -> T) -> T {
    let before = fingerprint(url);
    let out = case();
    assert_eq!(fingerprint(url), before, "the database changed");
    out
}

fn says(err: &Error, what: &str) {
    assert!(
        err.to_string().contains(what),
        "{err} does not say {what:?}"
    );
}

#[test]
fn c01_unknown_live_version() {
    let (_d, url) = seeded();
    raw(&url)
        .batch_execute("UPDATE tandem_state SET version = 9")
        .unwrap();
    let db = open_demo(&url);
    unchanged(&url, || {
        let err = db
            .call(&accounts(), |r, s| r.email(s.conn(), 1))
            .unwrap_err();
        assert!(
            matches!(err, Error::VersionNotServed { live, .. } if live.get() == 9),
            "{err:?}"
        );
        let err = db.upgrader().upgrade_to(2).unwrap_err();
        assert!(
            matches!(err, Error::UnknownVersion { version, latest } if version.get() == 9 && latest.get() == 2),
            "{err:?}"
        );
        says(&err, "deploy a binary built with the newer catalog");
    });
}

#[test]
fn c02_live_version_newer_than_the_binary() {
    let (_d, url) = seeded();
    open_demo(&url).upgrader().upgrade_to(2).unwrap();
    let old = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
        .serves(1..=1)
        .open()
        .unwrap();
    unchanged(&url, || {
        let err = old
            .call(&accounts(), |r, s| r.email(s.conn(), 1))
            .unwrap_err();
        assert!(
            matches!(err, Error::VersionNotServed { live, first, last } if (live.get(), first.get(), last.get()) == (2, 1, 1)),
            "{err:?}"
        );
        says(&err, "deploy a binary with bindings for version 2");
    });
}

#[test]
fn c03_metadata_missing_on_an_existing_schema() {
    let (_d, url) = temp_db();
    raw(&url).batch_execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, email TEXT); INSERT INTO accounts VALUES (1, 'a', 'a@x');").unwrap();
    unchanged(&url, || {
        let err = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
            .open()
            .unwrap_err();
        assert!(
            matches!(err, Error::NotAdopted { tables: 1, .. }),
            "{err:?}"
        );
        says(&err, "baseline(K)");
    });
}

fn tampered(sql: &str, detail: &str) {
    let (_d, url) = seeded();
    raw(&url).batch_execute(sql).unwrap();
    unchanged(&url, || {
        let err = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
            .open()
            .unwrap_err();
        match &err {
            Error::MetadataCorrupt { table, detail: d } => {
                assert_eq!(table, "tandem_state");
                assert!(d.contains(detail), "{d}");
            }
            other => panic!("{sql}: expected MetadataCorrupt, got {other:?}"),
        }
        says(&err, "tandem will not guess");
    });
}

#[test]
fn c04_metadata_half_created() {
    tampered("DELETE FROM tandem_state", "no row");
}

#[test]
fn c05_tampered_phase_text() {
    tampered("UPDATE tandem_state SET phase = 'halfway'", "\"halfway\"");
}

#[test]
fn c06_negative_version() {
    tampered("UPDATE tandem_state SET version = -1", "-1");
}

#[test]
fn c07_checksum_drift() {
    let (cat_dir, cat) = catalog(THREE_VERSIONS);
    let (_d, url) = temp_db();
    Tandem::<Sqlite>::builder(&url, cat)
        .serves(1..=2)
        .open()
        .unwrap()
        .upgrader()
        .expand()
        .unwrap();
    std::fs::write(
        cat_dir.path().join("0002_labels/expand.sql"),
        "ALTER TABLE items ADD COLUMN label TEXT; -- changed",
    )
    .unwrap();
    unchanged(&url, || {
        let err = Tandem::<Sqlite>::builder(&url, Catalog::from_dir(cat_dir.path()).unwrap())
            .serves(1..=2)
            .open()
            .unwrap_err();
        assert!(
            matches!(err, Error::ChecksumDrift { version, phase: Phase::Expand, .. } if version.get() == 2),
            "{err:?}"
        );
        says(&err, "restore the original file");
    });
}

fn bad_catalog(files: &[(&str, &str)], check: fn(&CatalogError) -> bool, names: &str) {
    let dir = common::write_catalog(files);
    let err = Catalog::from_dir(dir.path()).unwrap_err();
    assert!(check(&err), "{err:?}");
    assert!(
        err.to_string().contains(names),
        "{err} does not name {names}"
    );
}

#[test]
fn c08_gap_in_the_catalog() {
    bad_catalog(
        &[("0001_a/expand.sql", "x"), ("0003_c/expand.sql", "y")],
        |e| {
            matches!(
                e,
                CatalogError::Gap {
                    expected: 2,
                    found: 3,
                    ..
                }
            )
        },
        "0003_c",
    );
}

#[test]
fn c09_duplicate_in_the_catalog() {
    bad_catalog(
        &[("0001_a/expand.sql", "x"), ("0001_b/expand.sql", "y")],
        |e| matches!(e, CatalogError::Duplicate { version: 1, .. }),
        "0001_b",
    );
}

#[test]
fn c10_missing_expand() {
    bad_catalog(
        &[("0001_a/expand.sql", "x"), ("0002_b/contract.sql", "y")],
        |e| matches!(e, CatalogError::MissingExpand { .. }),
        "0002_b",
    );
}

#[test]
fn c11_empty_expand() {
    bad_catalog(
        &[("0001_a/expand.sql", "x"), ("0002_b/expand.sql", " \n")],
        |e| matches!(e, CatalogError::Empty { .. }),
        "0002_b/expand.sql",
    );
}

fn failing_phase(
    files: &[(&str, &str)],
    run: fn(&Tandem<Sqlite>) -> Result<tandem::PhaseReport, Error>,
    phase: Phase,
    prepare: fn(&Tandem<Sqlite>),
) {
    let (_c, cat) = catalog(files);
    let (_d, url) = temp_db();
    let db = Tandem::<Sqlite>::builder(&url, cat)
        .serves(1..=2)
        .open()
        .unwrap();
    prepare(&db);
    let before_state = db.state().unwrap();
    let before = fingerprint(&url);
    let err = run(&db).unwrap_err();
    assert!(
        matches!(&err, Error::PhaseFailed { phase: p, .. } if *p == phase),
        "{err:?}"
    );
    says(&err, "rolled back");
    assert_eq!(db.state().unwrap(), before_state, "state row unchanged");
    // Only the journal of the failure was added.
    let after = fingerprint(&url);
    let added: Vec<&str> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect();
    assert!(
        added.len() == 1 && added[0].contains(" failed "),
        "{added:?}"
    );
}

const BASE: (&str, &str) = (
    "0001_items/expand.sql",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
);

#[test]
fn c12_sql_error_in_expand() {
    failing_phase(
        &[
            BASE,
            (
                "0002_x/expand.sql",
                "CREATE TABLE t (x INT); INSERT INTO nowhere VALUES (1);",
            ),
        ],
        |db| db.upgrader().expand(),
        Phase::Expand,
        |_| {},
    );
}

#[test]
fn c13_sql_error_in_switch() {
    failing_phase(
        &[
            BASE,
            ("0002_x/expand.sql", "CREATE TABLE t (x INT);"),
            ("0002_x/switch.sql", "DROP TABLE nowhere;"),
        ],
        |db| db.upgrader().switch(),
        Phase::Switch,
        |db| {
            db.upgrader().expand().unwrap();
        },
    );
}

#[test]
fn c14_sql_error_in_contract() {
    failing_phase(
        &[
            BASE,
            ("0002_x/expand.sql", "CREATE TABLE t (x INT);"),
            ("0002_x/contract.sql", "DROP TABLE nowhere;"),
        ],
        |db| db.upgrader().contract(),
        Phase::Contract,
        |db| {
            db.upgrader().expand().unwrap();
            db.upgrader().switch().unwrap();
        },
    );
}

#[test]
fn c15_contract_before_switch() {
    let (_d, url) = seeded();
    let db = open_demo(&url);
    db.upgrader().expand().unwrap();
    unchanged(&url, || {
        let err = db.upgrader().contract().unwrap_err();
        assert!(
            matches!(
                err,
                Error::PhaseOutOfOrder {
                    attempted: Phase::Contract,
                    state: "expanded",
                    ..
                }
            ),
            "{err:?}"
        );
        says(&err, "switch first");
    });
}

#[test]
fn c16_switch_while_an_instance_lacks_the_version() {
    let (_d, url) = seeded();
    let db = open_demo(&url);
    let _old = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
        .serves(1..=1)
        .label("old-binary")
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    // The fleet rows' leases move; compare everything but them.
    unchanged(&url, || {
        let err = db.upgrader().switch().unwrap_err();
        assert!(
            matches!(&err, Error::SwitchRefused { instances, .. } if instances.iter().any(|i| i.contains("old-binary"))),
            "{err:?}"
        );
        says(&err, "deploy binaries with bindings for version 2");
    });
}

#[test]
fn c17_invalid_prefix() {
    let (_d, url) = seeded();
    unchanged(&url, || {
        let err = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
            .prefix("x; DROP TABLE y")
            .open()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidPrefix { prefix, .. } if prefix == "x; DROP TABLE y"),
            "{err:?}"
        );
        says(&err, "plain identifier");
    });
}

#[test]
fn c18_password_never_shown() {
    let secret = "hunter2-very-secret";
    let url = format!("file:/nonexistent/dir/app.db?mode=rw&password={secret}");
    let err = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
        .connection_timeout(Duration::from_millis(300))
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret), "password leaked: {shown}");
        assert!(shown.contains("password=***"), "{shown}");
    }
}

#[test]
fn c19_pool_exhausted() {
    let (_d, url) = seeded();
    let db = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
        .pool_size(1)
        .connection_timeout(Duration::from_millis(200))
        .poll_interval(Duration::from_secs(5))
        .open()
        .unwrap();
    let held = db.connection().unwrap();
    unchanged(&url, || {
        let err = db
            .call(&accounts(), |r, s| r.email(s.conn(), 1))
            .unwrap_err();
        assert!(matches!(err, Error::Pool { .. }), "{err:?}");
        says(&err, "raise `pool_size`");
    });
    drop(held);
    assert!(db.call(&accounts(), |r, s| r.email(s.conn(), 1)).is_ok());
}

#[test]
fn c20_an_expired_lease_never_takes_the_steady_path() {
    let (_d, url) = seeded();
    let db = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
        .poll_interval(Duration::from_millis(20))
        .lease(Duration::from_millis(150))
        .open()
        .unwrap();
    db.pause_fleet(true);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !db.steady(),
        "an expired lease must not take the steady path"
    );
    let (binding, live) = db
        .call(&accounts(), |r, s| {
            Ok::<_, Error>((r.version(), r.db_version(s.conn())))
        })
        .unwrap();
    assert_eq!(i64::from(binding), live);
}

#[test]
fn c21_fleet_row_with_an_impossible_version() {
    let (_d, url) = seeded();
    let db = open_demo(&url);
    raw(&url)
        .batch_execute(
            "INSERT INTO tandem_fleet VALUES ('ghost', 'h', 1, 'ghost', 0, 2, 0, 4102444800000, 0)",
        )
        .unwrap();
    db.upgrader().expand().unwrap();
    let err = db.upgrader().switch().unwrap_err();
    assert!(
        matches!(&err, Error::MetadataCorrupt { table, .. } if table == "tandem_fleet"),
        "{err:?}"
    );
    assert_eq!(db.state().unwrap().version.get(), 1);
}

#[test]
fn c22_no_switch_back_file() {
    let files: Vec<(&str, &str)> = THREE_VERSIONS
        .iter()
        .copied()
        .filter(|(p, _)| !p.ends_with("switch_back.sql"))
        .collect();
    let (_c, cat) = catalog(&files);
    let (_d, url) = temp_db();
    let db = Tandem::<Sqlite>::builder(&url, cat)
        .serves(1..=2)
        .open()
        .unwrap();
    db.upgrader().upgrade_to(1).unwrap();
    db.upgrader().expand().unwrap();
    db.upgrader().switch().unwrap();
    unchanged(&url, || {
        let err = db.upgrader().switch_back().unwrap_err();
        assert!(
            matches!(err, Error::NoSwitchBack { version } if version.get() == 2),
            "{err:?}"
        );
        says(&err, "switch_back.sql");
    });
}

#[test]
fn c23_roll_backward_and_unknown_targets() {
    let (_d, url) = seeded();
    let db = open_demo(&url);
    db.upgrader().upgrade_to(2).unwrap();
    unchanged(&url, || {
        let err = db.upgrader().upgrade_to(1).unwrap_err();
        assert!(matches!(err, Error::NotRollForward { .. }), "{err:?}");
        says(&err, "only rolls forward");
        let err = db.upgrader().upgrade_to(7).unwrap_err();
        assert!(
            matches!(err, Error::UnknownVersion { version, .. } if version.get() == 7),
            "{err:?}"
        );
        let err = db.upgrader().upgrade_to(0).unwrap_err();
        assert!(
            matches!(err, Error::InvalidVersion { value: 0, .. }),
            "{err:?}"
        );
    });
}

#[test]
fn c24_bindings_with_a_gap_or_twice_the_same_version() {
    let gap = Repository::<common::Accounts>::builder("accounts")
        .binding(1, Arc::new(common::AccountsV1))
        .binding(3, Arc::new(common::AccountsV2))
        .build()
        .unwrap_err();
    assert!(
        matches!(&gap, Error::BindingGap { repository, .. } if repository == "accounts"),
        "{gap:?}"
    );
    let twice = Repository::<common::Accounts>::builder("accounts")
        .binding(1, Arc::new(common::AccountsV1))
        .binding(1, Arc::new(common::AccountsV2))
        .build()
        .unwrap_err();
    assert!(matches!(twice, Error::DuplicateBinding { .. }), "{twice:?}");
}

#[test]
fn c25_baseline_that_contradicts_the_metadata() {
    let (_d, url) = seeded();
    unchanged(&url, || {
        let err = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
            .baseline(2)
            .open()
            .unwrap_err();
        assert!(
            matches!(err, Error::BaselineMismatch { requested, live } if requested.get() == 2 && live.get() == 1),
            "{err:?}"
        );
        says(&err, "remove `baseline(..)`");
    });
}
