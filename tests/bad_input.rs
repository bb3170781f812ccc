//! A catalogue of bad input, on SQLite and on PostgreSQL: each case asserts
//! the exact typed error, that its message says what to do, and that nothing
//! in the database changed (schema, state row, history, data).
//!
//! Cases that touch a database are generic over [`Kit`] (`common/kit.rs`)
//! and run once per backend (modules `sqlite` and `postgres`, from
//! `common::per_backend!`); catalog and binding cases run once.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem::testing::faults::{FleetFaults as _, UpgraderFaults as _};

#[cfg(feature = "postgres")]
use common::PgKit;
use common::{catalog, Kit, SqliteKit, THREE_VERSIONS};
use diesel::prelude::*;
use once_cell::sync::Lazy;
use tandem::{Backend, Catalog, CatalogError, Error, Phase, Repository, Tandem};

/// Everything a case could change: schema, metadata rows, data.
fn fingerprint<K: Kit>(url: &str) -> String {
    let data = [
        "SELECT 'state ' || version || ' ' || phase || ' ' || mode || ' ' || epoch AS line FROM tandem_state",
        "SELECT 'history ' || version || ' ' || phase || ' ' || outcome || ' ' || checksum AS line FROM tandem_history ORDER BY id",
        "SELECT 'account ' || id || ' ' || name || ' ' || email AS line FROM accounts ORDER BY id",
    ];
    let mut out = Vec::new();
    for q in K::SCHEMA {
        out.extend(K::lines(url, q).expect("schema query"));
    }
    // Absent tables (a database without metadata) simply add nothing.
    for q in data {
        out.extend(K::lines(url, q).unwrap_or_default());
    }
    out.join("\n")
}

/// A demo database at version 1 with two accounts.
fn seeded<K: Kit>() -> Option<(K::Guard, String)> {
    let (guard, url) = K::fresh()?;
    let db = K::open(&url);
    let repo = K::repo();
    for (n, e) in [("ada", "ada@x"), ("grace", "grace@x")] {
        db.unit_of_work(|s| s.repo(&repo)?.create(s.conn(), n, e))
            .unwrap();
    }
    Some((guard, url))
}

/// Runs `case` on a seeded database and checks nothing changed.
fn unchanged<K: Kit, T>(url: &str, case: impl FnOnce() -> T) -> T {
    let before = fingerprint::<K>(url);
    assert!(
        before.contains("tandem_state") || before.contains("accounts"),
        "the fingerprint sees nothing: {before}"
    );
    let out = case();
    assert_eq!(fingerprint::<K>(url), before, "the database changed");
    out
}

/// The demo on `url` with a 20 ms poll and a 100 ms lease: a lease that goes
/// stale quickly once it cannot be renewed.
fn short_lease<K: Kit>(url: &str) -> Tandem<K::B> {
    Tandem::<K::B>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .poll_interval(Duration::from_millis(20))
        .lease(Duration::from_millis(100))
        .open()
        .unwrap()
}

/// Waits (at most 5 s) until `db`'s calls take the locking path.
fn off_the_steady_path<B: Backend>(db: &Tandem<B>, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while db.steady() {
        assert!(std::time::Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn says(err: &Error, what: &str) {
    assert!(
        err.to_string().contains(what),
        "{err} does not say {what:?}"
    );
}

/// Everything logged in this process from the first call on, at TRACE,
/// including `log` records (r2d2's) through the tracing-log bridge.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: Lazy<Arc<Mutex<Vec<u8>>>> = Lazy::new(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .expect("the first subscriber of this test binary");
        buf
    });
    LOGS.clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn c01_unknown_live_version<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    K::exec(&url, "UPDATE tandem_state SET version = 9");
    let db = K::open(&url);
    unchanged::<K, _>(&url, || {
        let err = db
            .call(&K::repo(), |r, s| r.email(s.conn(), 1))
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

fn c02_live_version_newer_than_the_binary<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    K::open(&url).upgrader().upgrade_to(2).unwrap();
    let old = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=1)
        .open()
        .unwrap();
    unchanged::<K, _>(&url, || {
        let err = old
            .call(&K::repo(), |r, s| r.email(s.conn(), 1))
            .unwrap_err();
        assert!(
            matches!(err, Error::VersionNotServed { live, first, last } if (live.get(), first.get(), last.get()) == (2, 1, 1)),
            "{err:?}"
        );
        says(&err, "deploy a binary with bindings for version 2");
    });
}

fn c03_metadata_missing_on_an_existing_schema<K: Kit>() {
    let Some((_d, url)) = K::fresh() else {
        return;
    };
    K::exec(&url, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, email TEXT); INSERT INTO accounts VALUES (1, 'a', 'a@x');");
    unchanged::<K, _>(&url, || {
        let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
            .open()
            .unwrap_err();
        assert!(
            matches!(err, Error::NotAdopted { tables: 1, .. }),
            "{err:?}"
        );
        says(&err, "baseline(K)");
    });
}

fn tampered<K: Kit>(sql: &str, detail: &str) {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    K::exec(&url, sql);
    unchanged::<K, _>(&url, || {
        let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
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

fn c04_metadata_half_created<K: Kit>() {
    tampered::<K>("DELETE FROM tandem_state", "no row");
}

fn c05_tampered_phase_text<K: Kit>() {
    tampered::<K>("UPDATE tandem_state SET phase = 'halfway'", "\"halfway\"");
}

fn c06_negative_version<K: Kit>() {
    tampered::<K>("UPDATE tandem_state SET version = -1", "-1");
}

fn c07_checksum_drift<K: Kit>() {
    let (cat_dir, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else {
        return;
    };
    Tandem::<K::B>::builder(&url, cat)
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
    unchanged::<K, _>(&url, || {
        let err = Tandem::<K::B>::builder(&url, Catalog::from_dir(cat_dir.path()).unwrap())
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

fn failing_phase<K: Kit>(
    files: &[(&str, &str)],
    run: fn(&Tandem<K::B>) -> Result<tandem::PhaseReport, Error>,
    phase: Phase,
    prepare: fn(&Tandem<K::B>),
) {
    let (_c, cat) = catalog(files);
    let Some((_d, url)) = K::fresh() else {
        return;
    };
    let db = Tandem::<K::B>::builder(&url, cat)
        .serves(1..=2)
        .open()
        .unwrap();
    prepare(&db);
    let before_state = db.state().unwrap();
    let before = fingerprint::<K>(&url);
    let err = run(&db).unwrap_err();
    assert!(
        matches!(&err, Error::PhaseFailed { phase: p, .. } if *p == phase),
        "{err:?}"
    );
    says(&err, "rolled back");
    assert_eq!(db.state().unwrap(), before_state, "state row unchanged");
    // Only the journal of the failure was added.
    let after = fingerprint::<K>(&url);
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

fn c12_sql_error_in_expand<K: Kit>() {
    failing_phase::<K>(
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

fn c13_sql_error_in_switch<K: Kit>() {
    failing_phase::<K>(
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

fn c14_sql_error_in_contract<K: Kit>() {
    failing_phase::<K>(
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

fn c15_contract_before_switch<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = K::open(&url);
    db.upgrader().expand().unwrap();
    unchanged::<K, _>(&url, || {
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

fn c16_switch_while_an_instance_lacks_the_version<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = K::open(&url);
    let _old = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=1)
        .label("old-binary")
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    // The fleet rows' leases move; compare everything but them.
    unchanged::<K, _>(&url, || {
        let err = db.upgrader().switch().unwrap_err();
        assert!(
            matches!(&err, Error::SwitchRefused { instances, .. } if instances.iter().any(|i| i.contains("old-binary"))),
            "{err:?}"
        );
        says(&err, "deploy binaries with bindings for version 2");
    });
}

fn c17_invalid_prefix<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    unchanged::<K, _>(&url, || {
        let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
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

fn c18_password_never_shown<K: Kit>() {
    let secret = "hunter2-very-secret";
    let logs = captured_logs();
    // A connection that fails: the error names the target, redacted.
    let err = Tandem::<K::B>::builder(
        &K::unreachable_url(secret),
        tandem::testing::demo::catalog().unwrap(),
    )
    .connection_timeout(Duration::from_millis(300))
    .open()
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret), "password leaked: {shown}");
        // The target stays recognizable: user, host and port, password masked.
        assert!(shown.contains(&K::unreachable_url("***")), "{shown}");
    }
    // A connection that works (where the backend takes passwords): a whole
    // upgrade, a failing phase and the handle's Debug, all logged at TRACE.
    {
        let (_d, url) =
            K::fresh_with_password(secret).expect("a database whose URL holds a password");
        let db = K::open(&url);
        assert!(!format!("{db:?}").contains(secret));
        db.upgrader().upgrade_to(2).unwrap();
        K::exec(&url, "UPDATE tandem_state SET phase = 'halfway'");
        // Whether opening or upgrading notices first, the error is typed.
        let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
            .open()
            .and_then(|db| db.upgrader().upgrade_to(2).map(|_| ()))
            .unwrap_err();
        assert!(matches!(err, Error::MetadataCorrupt { .. }), "{err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(secret), "password leaked: {shown}");
        }
    }
    let logged = logs.lock().unwrap().clone();
    let logged = String::from_utf8_lossy(&logged);
    assert!(!logged.is_empty(), "the subscriber captured nothing");
    assert!(!logged.contains(secret), "password leaked into the logs");
}

fn c19_pool_exhausted<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .pool_size(1)
        .connection_timeout(Duration::from_millis(200))
        .poll_interval(Duration::from_secs(5))
        .open()
        .unwrap();
    let held = db.connection().unwrap();
    unchanged::<K, _>(&url, || {
        let err = db
            .call(&K::repo(), |r, s| r.email(s.conn(), 1))
            .unwrap_err();
        assert!(matches!(err, Error::Pool { .. }), "{err:?}");
        says(&err, "raise `pool_size`");
    });
    drop(held);
    assert!(db.call(&K::repo(), |r, s| r.email(s.conn(), 1)).is_ok());
}

fn c20_an_expired_lease_never_takes_the_steady_path<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
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
        .call(&K::repo(), |r, s| {
            Ok::<_, Error>((r.version(), r.live(s.conn()).unwrap()))
        })
        .unwrap();
    assert_eq!(i64::from(binding), live);
}

fn c21_fleet_row_with_an_impossible_version<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = K::open(&url);
    K::exec(
        &url,
        "INSERT INTO tandem_fleet VALUES ('ghost', 'h', 1, 'ghost', 0, 2, 0, 4102444800000, 0, NULL)",
    );
    db.upgrader().expand().unwrap();
    let err = db.upgrader().switch().unwrap_err();
    assert!(
        matches!(&err, Error::MetadataCorrupt { table, .. } if table == "tandem_fleet"),
        "{err:?}"
    );
    assert_eq!(db.state().unwrap().version.get(), 1);
}

fn c22_no_switch_back_file<K: Kit>() {
    let files: Vec<(&str, &str)> = THREE_VERSIONS
        .iter()
        .copied()
        .filter(|(p, _)| !p.ends_with("switch_back.sql"))
        .collect();
    let (_c, cat) = catalog(&files);
    let Some((_d, url)) = K::fresh() else {
        return;
    };
    let db = Tandem::<K::B>::builder(&url, cat)
        .serves(1..=2)
        .open()
        .unwrap();
    db.upgrader().upgrade_to(1).unwrap();
    db.upgrader().expand().unwrap();
    db.upgrader().switch().unwrap();
    unchanged::<K, _>(&url, || {
        let err = db.upgrader().switch_back().unwrap_err();
        assert!(
            matches!(err, Error::NoSwitchBack { version } if version.get() == 2),
            "{err:?}"
        );
        says(&err, "switch_back.sql");
    });
}

fn c23_roll_backward_and_unknown_targets<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = K::open(&url);
    db.upgrader().upgrade_to(2).unwrap();
    unchanged::<K, _>(&url, || {
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

fn c25_baseline_that_contradicts_the_metadata<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    unchanged::<K, _>(&url, || {
        let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
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

/// The same files checked out with Windows line endings and a byte order
/// mark (`core.autocrlf`, an editor) are the same SQL: not drift. And a
/// database upgraded by a release that hashed the bytes as checked out
/// (CRLF) is still accepted by one that normalizes.
fn c26_line_endings_are_not_drift<K: Kit>() {
    use sha2::Digest as _;
    const LF: &[(&str, &str)] = &[
        (
            "0001_items/expand.sql",
            "CREATE TABLE items (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL\n);\n",
        ),
        (
            "0002_labels/expand.sql",
            "ALTER TABLE items\n  ADD COLUMN label TEXT;\n",
        ),
    ];
    let windows: Vec<(&str, String)> = LF
        .iter()
        .map(|(p, t)| (*p, format!("\u{feff}{}", t.replace('\n', "\r\n"))))
        .collect();
    let write = |dir: &std::path::Path, files: &[(&str, String)]| {
        for (p, t) in files {
            std::fs::write(dir.join(p), t).unwrap();
        }
    };
    let (cat_dir, cat) = catalog(LF);
    let Some((_d, url)) = K::fresh() else {
        return;
    };
    let open = |cat: Catalog| Tandem::<K::B>::builder(&url, cat).serves(1..=2).open();
    open(cat).unwrap().upgrader().expand().unwrap();
    write(cat_dir.path(), &windows);
    let crlf = Catalog::from_dir(cat_dir.path()).unwrap();
    let db = open(crlf).expect("a CRLF + BOM checkout of the applied files is not drift");
    db.upgrader()
        .switch()
        .expect("the switch verifies the same checksums");
    assert_eq!(db.state().unwrap().version.get(), 2);
    drop(db);
    // What a release before normalization recorded from that checkout.
    let hex = |text: &str| {
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    K::exec(
        &url,
        &format!(
            "UPDATE tandem_history SET checksum = '{}' WHERE version = 2 AND phase = 'expand'",
            hex(&windows[1].1)
        ),
    );
    let (_lf_dir, lf) = catalog(LF);
    open(lf).expect("a checksum recorded from a CRLF checkout by an earlier release");
    // A real change is still drift.
    let (_c, changed) = catalog(&[
        LF[0],
        (
            "0002_labels/expand.sql",
            "ALTER TABLE items\n  ADD COLUMN label2 TEXT;\n",
        ),
    ]);
    let err = open(changed).unwrap_err();
    assert!(
        matches!(err, Error::ChecksumDrift { version, .. } if version.get() == 2),
        "{err:?}"
    );
}

/// Settings at `Duration::MAX`: never a panic or a silent wrap. A setting
/// with a bounded meaning is refused by `open` with a typed error naming it;
/// `wait_for_lease(Duration::MAX)`, "wait as long as it takes", waits.
fn c27_settings_at_their_maximum<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let builder = || Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap());
    let huge = Duration::MAX;
    let policy = |patience, escalation| tandem::WriterPolicy {
        patience,
        escalation,
        ..tandem::WriterPolicy::default()
    };
    unchanged::<K, _>(&url, || {
        for (name, result) in [
            ("poll_interval", builder().poll_interval(huge).open()),
            ("lease", builder().lease(huge).open()),
            (
                "connection_timeout",
                builder().connection_timeout(huge).open(),
            ),
            (
                "writer_policy (patience)",
                builder()
                    .writer_policy(policy(huge, Duration::from_millis(5)))
                    .open(),
            ),
            (
                "writer_policy (escalation)",
                builder()
                    .writer_policy(policy(Duration::from_millis(100), huge))
                    .open(),
            ),
            ("lock_timeout", builder().lock_timeout(huge).open()),
        ] {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidSetting { setting, value, .. } if *setting == name && *value == huge),
                "{name}: {err:?}"
            );
            says(
                &err,
                if name == "lease" {
                    "at most 7200s"
                } else {
                    "at most 3600s"
                },
            );
        }
    });
    // The largest accepted values open and serve.
    let hour = Duration::from_secs(3600);
    let db = builder()
        .poll_interval(hour)
        .lease(hour * 2)
        .connection_timeout(hour)
        .writer_policy(tandem::WriterPolicy {
            patience: hour,
            escalation: hour,
            attempts: u32::MAX,
        })
        .open()
        .unwrap();
    assert!(db
        .call(&K::repo(), |r, s| r.email(s.conn(), 1))
        .unwrap()
        .is_some());
    // Waiting "forever" for another upgrader's lease: it waits, then works.
    let holder = db.upgrader().lease(Duration::from_millis(400)).crash_at(1);
    assert!(matches!(holder.expand(), Err(Error::InjectedCrash { .. })));
    let report = db.upgrader().wait_for_lease(huge).expand().unwrap();
    assert_eq!(report.version.get(), 2);
    // The upgrader's own lease at its maximum: no overflow either.
    let report = db.upgrader().lease(huge).switch().unwrap();
    assert_eq!(report.version.get(), 2);
}

/// The state row deleted under a running service: calls on the locking path
/// get `MetadataCorrupt` naming the table and the repair, not "Record not
/// found"; nothing else changes.
fn c30_state_row_deleted_under_a_service<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = short_lease::<K>(&url);
    K::exec(&url, "DELETE FROM tandem_state");
    // The poller cannot renew: the lease goes stale and calls take the
    // locking path, which reads the (missing) row.
    off_the_steady_path(&db, "still steady without a state row");
    let err = db
        .call(&K::repo(), |r, s| r.email(s.conn(), 1))
        .unwrap_err();
    match &err {
        Error::MetadataCorrupt { table, detail } => {
            assert_eq!(table, "tandem_state");
            assert!(
                detail.contains("no row") && detail.contains("tandem_history"),
                "{detail}"
            );
        }
        other => panic!("expected MetadataCorrupt, got {other:?}"),
    }
    let err = db
        .unit_of_work(|s| s.repo(&K::repo())?.email(s.conn(), 1))
        .unwrap_err();
    assert!(matches!(err, Error::MetadataCorrupt { .. }), "{err:?}");
}

/// A prefix whose tables belong to the application (`app_history` beside
/// the prefix `app_`): refused, naming the table; nothing adopted or created.
fn c31_a_prefix_whose_tables_are_the_applications<K: Kit>() {
    let Some((_d, url)) = K::fresh() else {
        return;
    };
    K::exec(
        &url,
        "CREATE TABLE app_history (id INTEGER PRIMARY KEY, event TEXT NOT NULL); \
         INSERT INTO app_history VALUES (1, 'signup');",
    );
    let before = fingerprint::<K>(&url);
    let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .prefix("app_")
        .baseline(1)
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::PrefixTaken { table, .. } if table == "app_history"),
        "{err:?}"
    );
    says(&err, "choose another metadata prefix");
    assert_eq!(fingerprint::<K>(&url), before, "the database changed");
    // And a state table that is the application's, not tandem's.
    K::exec(
        &url,
        "CREATE TABLE app2_state (id INTEGER PRIMARY KEY, value TEXT);",
    );
    let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .prefix("app2_")
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::PrefixTaken { table, detail } if table == "app2_state" && detail.contains("version")),
        "{err:?}"
    );
}

/// A fleet row no live instance wrote (a ghost): a lease in 2100 and an
/// acknowledgement of every epoch. It must not count as acknowledging, its
/// lease is cut to at most two hours, and an operator can evict it (journaled).
fn c32_a_ghost_fleet_row<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .poll_interval(Duration::from_millis(20))
        .lease(Duration::from_millis(200))
        .writer_policy(tandem::WriterPolicy {
            attempts: 2,
            ..tandem::WriterPolicy::default()
        })
        .open()
        .unwrap();
    K::exec(
        &url,
        "INSERT INTO tandem_fleet VALUES ('ghost-id', 'gone-host', 4242, 'ghost', 1, 2, 9223372036854775807, 4102444800000, 0, NULL)",
    );
    db.upgrader().expand().unwrap();
    let err = db.upgrader().switch().unwrap_err();
    match &err {
        Error::FleetNotAcknowledged { instances, .. } => {
            assert!(
                instances.iter().any(|i| i.contains("ghost-id")),
                "{instances:?}"
            )
        }
        other => panic!("a ghost acknowledging every epoch let the switch through: {other:?}"),
    }
    says(&err, "Upgrader::evict(id)");
    let s = db.state().unwrap();
    assert_eq!(
        (s.version.get(), s.phase),
        (1, tandem::StatePhase::Expanded)
    );
    let lease = db
        .instances()
        .unwrap()
        .into_iter()
        .find(|i| i.id == "ghost-id")
        .expect("the ghost is still listed")
        .lease_until_ms;
    let two_hours_from_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 7_200_000;
    assert!(
        lease <= two_hours_from_now + 60_000,
        "the ghost's lease was not cut: {lease}"
    );
    let described = db.upgrader().evict("ghost-id").unwrap();
    assert!(
        described.contains("gone-host") && described.contains("4242"),
        "{described}"
    );
    let last = db.history().unwrap().pop().unwrap();
    assert_eq!(
        (last.phase.as_str(), last.detail.as_deref()),
        ("evict", Some(described.as_str()))
    );
    let err = db.upgrader().evict("ghost-id").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownInstance { id } if id == "ghost-id"),
        "{err:?}"
    );
    db.upgrader().switch().unwrap();
    assert_eq!(db.state().unwrap().version.get(), 2);
}

/// An epoch at the end of its range (a hand edit): refused as corrupt
/// before an increment could overflow (SQLite would make it a REAL).
fn c33_an_epoch_at_its_maximum<K: Kit>() {
    tampered::<K>(
        "UPDATE tandem_state SET epoch = 9223372036854775807",
        "9223372036854775807",
    );
}

/// An application error for c35: the binding refuses after writing.
#[derive(Debug)]
enum Refused {
    Tandem(#[allow(dead_code)] Error),
    Query(#[allow(dead_code)] diesel::result::Error),
    AfterWriting,
}
impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Tandem(e)
    }
}
impl From<diesel::result::Error> for Refused {
    fn from(e: diesel::result::Error) -> Self {
        Refused::Query(e)
    }
}

/// What `call` promises (see its `## Atomicity`): a binding that writes and
/// then fails keeps its write on the steady path (autocommit) and loses it
/// on the locking path (the call's transaction); `unit_of_work`, and a
/// transaction the binding opens itself, are all or nothing on both.
fn c35_what_a_failing_call_leaves<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    let db = short_lease::<K>(&url);
    let repo = K::repo();
    let count = |name: &str| {
        K::lines(
            &url,
            &format!("SELECT CAST(count(*) AS TEXT) AS line FROM accounts WHERE name = '{name}'"),
        )
        .unwrap()[0]
            .clone()
    };
    let run = |name: &str| {
        let plain = db.call(&repo, |r, s| -> Result<(), Refused> {
            r.create(s.conn(), &format!("{name}-call"), "x@x")?;
            Err(Refused::AfterWriting)
        });
        let own_tx = db.call(&repo, |r, s| -> Result<(), Refused> {
            s.conn().transaction(|c| -> Result<(), Refused> {
                r.create(c, &format!("{name}-tx"), "x@x")?;
                Err(Refused::AfterWriting)
            })
        });
        let uow = db.unit_of_work(|s| -> Result<(), Refused> {
            s.repo(&repo)?
                .create(s.conn(), &format!("{name}-uow"), "x@x")?;
            Err(Refused::AfterWriting)
        });
        for r in [plain, own_tx, uow] {
            assert!(matches!(r, Err(Refused::AfterWriting)), "{r:?}");
        }
    };
    assert!(db.steady());
    run("steady");
    assert_eq!(
        count("steady-call"),
        "1",
        "steady path: the write before the error stays"
    );
    assert_eq!(count("steady-tx"), "0");
    assert_eq!(count("steady-uow"), "0");
    db.pause_fleet(true);
    off_the_steady_path(&db, "still steady with the fleet paused");
    run("locking");
    assert_eq!(
        count("locking-call"),
        "0",
        "locking path: the call's transaction rolled back"
    );
    assert_eq!(count("locking-tx"), "0");
    assert_eq!(count("locking-uow"), "0");
}

/// Metadata written by a release before fleet rows carried their catalog
/// (no `catalog` column): opened, the column is added, and a row without it
/// is not compared.
fn c40_a_fleet_table_of_an_earlier_release<K: Kit>() {
    let Some((_d, url)) = seeded::<K>() else {
        return;
    };
    K::exec(
        &url,
        "DELETE FROM tandem_fleet; ALTER TABLE tandem_fleet DROP COLUMN catalog",
    );
    K::exec(
        &url,
        "INSERT INTO tandem_fleet VALUES ('earlier', 'h', 1, 'earlier-release', 1, 2, 1, 4102444800000, 0)",
    );
    let db = K::open(&url);
    let columns = K::lines(
        &url,
        "SELECT CAST(count(*) AS TEXT) AS line FROM tandem_fleet WHERE catalog IS NULL",
    )
    .unwrap();
    assert_eq!(
        columns,
        vec!["1".to_owned()],
        "the earlier release's row is kept, without a catalog"
    );
    assert!(db
        .call(&K::repo(), |r, s| r.email(s.conn(), 1))
        .unwrap()
        .is_some());
    db.upgrader().evict("earlier").unwrap();
    db.upgrader().upgrade_to(2).unwrap();
}

common::per_backend!(
    c01_unknown_live_version,
    c02_live_version_newer_than_the_binary,
    c03_metadata_missing_on_an_existing_schema,
    c04_metadata_half_created,
    c05_tampered_phase_text,
    c06_negative_version,
    c07_checksum_drift,
    c12_sql_error_in_expand,
    c13_sql_error_in_switch,
    c14_sql_error_in_contract,
    c15_contract_before_switch,
    c16_switch_while_an_instance_lacks_the_version,
    c17_invalid_prefix,
    c18_password_never_shown,
    c19_pool_exhausted,
    c20_an_expired_lease_never_takes_the_steady_path,
    c21_fleet_row_with_an_impossible_version,
    c22_no_switch_back_file,
    c23_roll_backward_and_unknown_targets,
    c25_baseline_that_contradicts_the_metadata,
    c26_line_endings_are_not_drift,
    c27_settings_at_their_maximum,
    c30_state_row_deleted_under_a_service,
    c31_a_prefix_whose_tables_are_the_applications,
    c32_a_ghost_fleet_row,
    c33_an_epoch_at_its_maximum,
    c35_what_a_failing_call_leaves,
    c40_a_fleet_table_of_an_earlier_release,
);

/// Every spelling of an in-memory (or private temporary) SQLite database is
/// one database that every call sees, not a pool of separate ones.
#[test]
fn c28_sqlite_in_memory_spellings_are_one_database() {
    for url in [
        ":memory:",
        "file::memory:",
        "file::memory:?cache=private",
        "",
    ] {
        let db = SqliteKit::open(url);
        // Threads at once: a pool of several connections would give some
        // of them a database of their own, without the tables.
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || -> Result<(), Error> {
                    let repo = SqliteKit::repo();
                    for i in 0..10 {
                        let email = format!("{t}-{i}@x");
                        let id =
                            db.unit_of_work(|s| s.repo(&repo)?.create(s.conn(), "a", &email))?;
                        let read = db.call(&repo, |r, s| r.email(s.conn(), id))?;
                        assert_eq!(read, Some(email));
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap().unwrap_or_else(|e| panic!("{url:?}: {e}"));
        }
        db.upgrader()
            .upgrade_to(2)
            .unwrap_or_else(|e| panic!("{url:?}: {e}"));
    }
}

/// A switch that fails on `:memory:` (one connection) reports at once: its
/// cleanup must not wait for a second connection the pool cannot give.
#[test]
fn c29_a_failing_switch_on_memory_reports_at_once() {
    let (_c, cat) = catalog(&[
        BASE,
        ("0002_x/expand.sql", "CREATE TABLE t (x INT);"),
        ("0002_x/switch.sql", "DROP TABLE nowhere;"),
    ]);
    let db = Tandem::<tandem::Sqlite>::builder(":memory:", cat)
        .serves(1..=2)
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    let started = std::time::Instant::now();
    let err = db.upgrader().switch().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhaseFailed {
                phase: Phase::Switch,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the failed switch took {:?} (waiting for a second connection?)",
        started.elapsed()
    );
    let s = db.state().unwrap();
    assert_eq!((s.version.get(), s.upgrader), (1, None));
}

/// Messages a new user misread: a backfill registered for a version the
/// catalog lacks is a registration error, not "deploy a newer binary"; an
/// empty `serves` range says so; the test kit's failures read the same
/// through `Debug` (what `main` and `Box<dyn Error>` print) as `Display`.
#[test]
fn c34_messages_say_what_is_wrong() {
    let (_c, one) = catalog(&[BASE]);
    let err = Tandem::<tandem::Sqlite>::builder(":memory:", one)
        .serves(1..=1)
        .backfill(2, "copy emails", |_| Ok(0))
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::BackfillBeyondCatalog { step, version, latest } if step == "copy emails" && version.get() == 2 && latest.get() == 1),
        "{err:?}"
    );
    says(
        &err,
        "register it for the version whose expand it completes",
    );
    assert!(!err.to_string().contains("deploy a binary"), "{err}");

    let err =
        Tandem::<tandem::Sqlite>::builder(":memory:", tandem::testing::demo::catalog().unwrap())
            .serves(
                #[allow(clippy::reversed_empty_ranges)]
                {
                    2..=1
                },
            )
            .open()
            .unwrap_err();
    assert!(
        matches!(err, Error::EmptyServedRange { first, last } if (first.get(), last.get()) == (2, 1)),
        "{err:?}"
    );
    says(&err, "empty range");
    says(&err, "serves(1..=2)");

    // A kit failure, as `main() -> Result<(), Box<dyn Error>>` would print it.
    let kit = tandem::testing::Kit::sqlite(tandem::testing::demo::catalog().unwrap());
    let failure = kit.transition(5).unwrap_err();
    let boxed: Box<dyn std::error::Error> = Box::new(failure);
    assert_eq!(format!("{boxed:?}"), boxed.to_string());
    assert!(
        boxed
            .to_string()
            .contains("cannot test the change to version 5"),
        "{boxed}"
    );
}

/// Transaction control inside a phase file is refused when the catalog
/// loads, naming the file and the line: before, an `expand.sql` ending in
/// `COMMIT;` left its column created with history `running`, and a contract
/// `DROP TABLE a; COMMIT; DROP TABLE missing;` dropped `a` and journaled
/// nothing.
#[test]
fn c36_transaction_control_in_phase_sql() {
    for (file, sql, line, word) in [
        (
            "0002_x/expand.sql",
            "ALTER TABLE items ADD COLUMN label TEXT;\nCOMMIT;\n",
            2,
            "COMMIT",
        ),
        (
            "0002_x/contract.sql",
            "DROP TABLE a; COMMIT; DROP TABLE missing;",
            1,
            "COMMIT",
        ),
        (
            "0002_x/expand.postgres.sql",
            "BEGIN;\nCREATE TABLE t (x INT);\n",
            1,
            "BEGIN",
        ),
        (
            "0002_x/switch.sqlite.sql",
            "SAVEPOINT s;\nCREATE TABLE t (x INT);\n",
            1,
            "SAVEPOINT",
        ),
        (
            "0002_x/switch.sql",
            "CREATE TABLE t (x INT);\n\nEND;\n",
            3,
            "END",
        ),
    ] {
        let mut files = vec![BASE, (file, sql)];
        if !file.contains("expand") {
            files.push(("0002_x/expand.sql", "CREATE TABLE u (x INT);"));
        } else if file.contains("postgres") {
            files.push(("0002_x/expand.sqlite.sql", "CREATE TABLE u (x INT);"));
        }
        let dir = common::write_catalog(&files);
        let err = Catalog::from_dir(dir.path()).unwrap_err();
        match &err {
            CatalogError::TransactionControl {
                path,
                line: l,
                statement,
            } => {
                assert!(path.ends_with(file), "{path:?}");
                assert_eq!((*l, statement.as_str()), (line, word), "{file}");
            }
            other => panic!("{file}: expected TransactionControl, got {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains(&format!("{file}:{line}")), "{shown}");
        assert!(shown.contains("one transaction of its own"), "{shown}");
    }
    // The same words inside strings, comments, trigger bodies and dollar
    // quotes are SQL, not transaction control.
    let dir = common::write_catalog(&[
        BASE,
        (
            "0002_x/expand.sqlite.sql",
            "CREATE TABLE log (m TEXT); -- COMMIT;\nCREATE TRIGGER t AFTER INSERT ON items BEGIN INSERT INTO log VALUES ('COMMIT;'); END;",
        ),
        (
            "0002_x/expand.postgres.sql",
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN COMMIT; RETURN NEW; END $$;",
        ),
    ]);
    Catalog::from_dir(dir.path()).expect("keywords inside strings, comments and bodies are SQL");
}

/// Passwords in every spelling libpq accepts (and some it misreads) never
/// reach an error's `Display` or `Debug`, the builder's `Debug`, or the
/// logs: neither whole nor in the pieces libpq quotes from a malformed URL.
/// Each password is `Zk7`, a delimiter, then `Qw9`.
#[cfg(feature = "postgres")]
#[test]
fn c37_passwords_in_every_spelling() {
    let logs = captured_logs();
    let spellings = [
        "postgres://u:Zk7Qw9@127.0.0.1:1/db",
        "postgresql://u:Zk7Qw9@127.0.0.1:1/db?sslmode=disable",
        "postgres://u:Zk7/Qw9@127.0.0.1:1/db",
        "postgres://u:Zk7?Qw9@127.0.0.1:1/db",
        "postgres://u:Zk7#Qw9@127.0.0.1:1/db",
        "postgres://u:Zk7%zzQw9@127.0.0.1:1/db",
        "postgres://u:Zk7%40Qw9@127.0.0.1:1/db",
        "postgres://u:Zk7Qw9@[::1]:1/db",
        "postgres://127.0.0.1:1/db?password=Zk7Qw9&user=u",
        "host=127.0.0.1 port=1 user=u password=Zk7Qw9",
        "host=127.0.0.1 port=1 user=u password = Zk7Qw9",
        "host=127.0.0.1 port=1 user=u password='Zk7 Qw9'",
        "host=127.0.0.1 port=1 user=u password='Zk7\\'Qw9'",
        "host=127.0.0.1 port=1 password=Zk7Qw9 user=u dbname=db",
    ];
    let leaks = |shown: &str| shown.contains("Zk7") || shown.contains("Qw9");
    for url in spellings {
        let builder =
            Tandem::<tandem::Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
                .connection_timeout(Duration::from_millis(300));
        let debug = format!("{builder:?}");
        assert!(!leaks(&debug), "{url}: the builder's Debug shows {debug}");
        let started = std::time::Instant::now();
        let err = builder.open().unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{url}: {err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!leaks(&shown), "{url}: password leaked: {shown}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: took {:?}",
            started.elapsed()
        );
    }
    // A pool that cannot open connections logs through tandem's handler
    // (tracing, redacted), not r2d2's default (`log`, verbatim).
    if let Some((_d, url)) = PgKit::fresh_with_password("Zk7Qw9") {
        let db =
            Tandem::<tandem::Postgres>::builder(&url, tandem::testing::demo::catalog().unwrap())
                .connection_timeout(Duration::from_millis(300))
                .poll_interval(Duration::from_secs(5))
                .open()
                .unwrap();
        let name = url.rsplit('/').next().unwrap().to_owned();
        let admin = std::env::var("PG_DATABASE_URL").unwrap();
        PgKit::exec(
            &admin,
            &format!(
                "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
            ),
        );
        let held: Vec<_> = std::iter::from_fn(|| db.connection().ok())
            .take(20)
            .collect();
        let err = db
            .connection()
            .err()
            .expect("no connection while the database refuses them");
        drop(held);
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!leaks(&shown), "password leaked: {shown}");
        }
        PgKit::exec(
            &admin,
            &format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"),
        );
        std::thread::sleep(Duration::from_millis(100));
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(
            logged.contains("database connection failed"),
            "tandem's connection error handler logged nothing"
        );
        assert!(
            !logged.contains("ERROR r2d2"),
            "r2d2's default handler logged"
        );
    }
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!leaks(&logged), "password leaked into the logs");
}

/// A database that cannot be opened at all is reported with its cause at
/// once, not after the pool's 30 s `connection_timeout` as "timed out".
#[test]
fn c38_permanent_connection_errors_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_db = dir.path().join("notes.txt");
    std::fs::write(
        &not_a_db,
        "these are not the pages you are looking for ".repeat(100),
    )
    .unwrap();
    type Open = Box<dyn Fn() -> Result<(), Error>>;
    let mut cases: Vec<(String, &str, Open)> = Vec::new();
    for (url, cause) in [
        ("/nonexistent/dir/app.db".to_owned(), "unable to open"),
        (not_a_db.display().to_string(), "not a database"),
        ("app\0.db".to_owned(), "nul"),
    ] {
        let u = url.clone();
        cases.push((
            url,
            cause,
            Box::new(move || {
                Tandem::<tandem::Sqlite>::builder(&u, tandem::testing::demo::catalog().unwrap())
                    .open()
                    .map(|_| ())
            }),
        ));
    }
    #[cfg(feature = "postgres")]
    for (url, cause) in [
        ("postgres://u@127.0.0.1:1/db".to_owned(), "refused"),
        ("postgres://u@127.0.0.1:1/d\0b".to_owned(), "nul"),
    ] {
        let u = url.clone();
        cases.push((
            url,
            cause,
            Box::new(move || {
                Tandem::<tandem::Postgres>::builder(&u, tandem::testing::demo::catalog().unwrap())
                    .open()
                    .map(|_| ())
            }),
        ));
    }
    for (url, cause, open) in cases {
        let started = std::time::Instant::now();
        let err = open().unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::Connect { .. }), "{url:?}: {err:?}");
        assert!(
            took < Duration::from_secs(3),
            "{url:?}: took {took:?} ({err})"
        );
        assert!(
            err.to_string().to_lowercase().contains(cause),
            "{url:?}: {err} does not name the cause {cause:?}"
        );
        assert!(!err.to_string().contains("timed out"), "{url:?}: {err}");
    }
    let text = std::fs::read_to_string(&not_a_db).unwrap();
    assert!(text.starts_with("these are not"), "the file was changed");
}

/// Which database errors count as passing lock conflicts (retried by
/// phases) and which do not, from real errors: on SQLite by its messages
/// (compiled in English); on PostgreSQL by kind (serialization failure)
/// and, where diesel exposes no SQLSTATE, by the messages the server gives
/// with `lc_messages` set explicitly to `C`.
#[test]
fn c39_lock_conflicts_are_recognized() {
    use diesel::connection::SimpleConnection;
    use tandem::Locks as _;
    let (_d, url) = common::temp_db();
    let mut first = common::raw(&url);
    first
        .batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY); BEGIN IMMEDIATE;")
        .unwrap();
    let mut second = common::raw(&url);
    second.batch_execute("PRAGMA busy_timeout = 0").unwrap();
    let busy = second.batch_execute("BEGIN IMMEDIATE").unwrap_err();
    assert!(tandem::Sqlite::is_transient(&busy), "{busy}");
    first
        .batch_execute("INSERT INTO t VALUES (1); COMMIT;")
        .unwrap();
    let unique = second
        .batch_execute("INSERT INTO t VALUES (1)")
        .unwrap_err();
    assert!(!tandem::Sqlite::is_transient(&unique), "{unique}");
    let syntax = second.batch_execute("SELEC 1").unwrap_err();
    assert!(!tandem::Sqlite::is_transient(&syntax), "{syntax}");

    #[cfg(feature = "postgres")]
    if let Some((_g, url)) = PgKit::fresh() {
        use diesel::Connection as _;
        let name = url.rsplit('/').next().unwrap().to_owned();
        PgKit::exec(&url, &format!("ALTER DATABASE {name} SET lc_messages = 'C'; CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0), (2, 0);"));
        let connect = || diesel::PgConnection::establish(&url).unwrap();
        let transient = |e: &diesel::result::Error| tandem::Postgres::is_transient(e);
        // Lock timeout (55P03).
        let mut holder = connect();
        holder
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;")
            .unwrap();
        let mut waiter = connect();
        let timeout = waiter
            .batch_execute("BEGIN; SET LOCAL lock_timeout = '50ms'; SELECT * FROM t;")
            .unwrap_err();
        assert!(
            transient(&timeout),
            "lock timeout not recognized: {timeout}"
        );
        waiter.batch_execute("ROLLBACK").unwrap();
        // NOWAIT (55P03, "could not obtain lock").
        let nowait = waiter
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE NOWAIT;")
            .unwrap_err();
        assert!(transient(&nowait), "NOWAIT not recognized: {nowait}");
        waiter.batch_execute("ROLLBACK").unwrap();
        holder.batch_execute("COMMIT").unwrap();
        // Deadlock (40P01): two transactions take rows 1 and 2 in opposite orders.
        let mut a = connect();
        let mut b = connect();
        a.batch_execute(
            "BEGIN; SET LOCAL deadlock_timeout = '20ms'; UPDATE t SET v = 1 WHERE id = 1;",
        )
        .unwrap();
        b.batch_execute(
            "BEGIN; SET LOCAL deadlock_timeout = '20ms'; UPDATE t SET v = 1 WHERE id = 2;",
        )
        .unwrap();
        let other = std::thread::spawn(move || {
            let r = b.batch_execute("UPDATE t SET v = 2 WHERE id = 1;");
            let _ = b.batch_execute("ROLLBACK");
            r
        });
        let mine = a.batch_execute("UPDATE t SET v = 2 WHERE id = 2;");
        let _ = a.batch_execute("ROLLBACK");
        let theirs = other.join().unwrap();
        let deadlock = mine
            .err()
            .or(theirs.err())
            .expect("one side is the deadlock victim");
        assert!(transient(&deadlock), "deadlock not recognized: {deadlock}");
        // Serialization failure (40001), by kind.
        let mut a = connect();
        let mut b = connect();
        a.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM t; UPDATE t SET v = v + 1 WHERE id = 1;").unwrap();
        b.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM t; UPDATE t SET v = v + 1 WHERE id = 2;").unwrap();
        a.batch_execute("COMMIT").unwrap();
        let serialization = b.batch_execute("COMMIT").unwrap_err();
        assert!(
            transient(&serialization),
            "serialization failure not recognized: {serialization}"
        );
        // And what is not a conflict.
        let unique = a.batch_execute("INSERT INTO t VALUES (1, 0)").unwrap_err();
        assert!(!transient(&unique), "{unique}");
        let syntax = a.batch_execute("SELEC 1").unwrap_err();
        assert!(!transient(&syntax), "{syntax}");
        let missing = a.batch_execute("SELECT * FROM nowhere").unwrap_err();
        assert!(!transient(&missing), "{missing}");
    }
}
