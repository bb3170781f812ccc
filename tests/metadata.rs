//! Metadata tables: created on first use, custom prefixes, adoption only by
//! an explicit baseline, and damaged or foreign metadata refused with typed
//! errors that change nothing.

mod common;

use common::{accounts, catalog, columns, open_demo, raw, tables, temp_db, THREE_VERSIONS};
use diesel::connection::SimpleConnection;
use tandem::{Error, Mode, Sqlite, StatePhase, Tandem};

#[test]
fn first_use_creates_metadata_and_installs_version_1() {
    let (_dir, url) = temp_db();
    let db = open_demo(&url);
    let state = db.state().unwrap();
    assert_eq!(state.version.get(), 1);
    assert_eq!(state.phase, StatePhase::Stable);
    assert_eq!(state.mode, Mode::Steady);
    assert_eq!(state.upgrader, None);
    let history = db.history().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0].version.get(),
            history[0].phase.as_str(),
            history[0].outcome.as_str()
        ),
        (1, "expand", "applied")
    );
    assert_eq!(
        history[0].checksum,
        db.catalog()
            .phase(history[0].version, tandem::Phase::Expand, "sqlite")
            .unwrap()
            .checksum
    );
    let mut conn = raw(&url);
    let t = tables(&mut conn);
    for table in ["accounts", "tandem_state", "tandem_history", "tandem_fleet"] {
        assert!(t.contains(&table.to_owned()), "{table} missing from {t:?}");
    }
    // Opening again adopts the same metadata; nothing is re-applied.
    drop(db);
    let again = open_demo(&url);
    assert_eq!(again.history().unwrap().len(), 1);
}

#[test]
fn in_memory_databases_work() {
    let db = open_demo(":memory:");
    let repo = accounts();
    let id = db
        .call(&repo, |r, s| r.create(s.conn(), "a", "a@x"))
        .unwrap();
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), id))
            .unwrap()
            .as_deref(),
        Some("a@x")
    );
}

#[test]
fn custom_prefix_keeps_separate_metadata() {
    let (_dir, cat) = catalog(THREE_VERSIONS);
    let (_db_dir, url) = temp_db();
    let a = Tandem::<Sqlite>::builder(&url, cat.clone())
        .prefix("app_meta_")
        .open()
        .unwrap();
    assert_eq!(a.state().unwrap().version.get(), 1);
    let mut conn = raw(&url);
    let t = tables(&mut conn);
    assert!(t.contains(&"app_meta_state".to_owned()), "{t:?}");
    assert!(!t.contains(&"tandem_state".to_owned()), "{t:?}");
    // The default prefix finds no metadata in a database with tables: it refuses to guess.
    let err = Tandem::<Sqlite>::builder(&url, cat).open().unwrap_err();
    assert!(
        matches!(err, Error::NotAdopted { tables: 4, .. }),
        "{err:?}"
    );
}

#[test]
fn invalid_prefix_is_refused_before_touching_the_database() {
    let (_dir, cat) = catalog(THREE_VERSIONS);
    let (_db_dir, url) = temp_db();
    for prefix in ["x; DROP TABLE y", "", "9lives_", "Upper_", "a b"] {
        let err = Tandem::<Sqlite>::builder(&url, cat.clone())
            .prefix(prefix)
            .open()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidPrefix { prefix: p, .. } if p == prefix),
            "{prefix}: {err:?}"
        );
        assert!(err.to_string().contains("plain identifier"), "{err}");
    }
    assert!(
        !std::path::Path::new(&url).exists(),
        "no database file may be created"
    );
}

#[test]
fn existing_schema_is_adopted_only_by_baseline() {
    let (_dir, cat) = catalog(THREE_VERSIONS);
    let (_db_dir, url) = temp_db();
    raw(&url)
        .batch_execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, label TEXT); \
             INSERT INTO items (name) VALUES ('kept');",
        )
        .unwrap();
    let err = Tandem::<Sqlite>::builder(&url, cat.clone())
        .open()
        .unwrap_err();
    assert!(
        matches!(err, Error::NotAdopted { tables: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("baseline"), "{err}");
    assert!(
        !tables(&mut raw(&url)).contains(&"tandem_state".to_owned()),
        "refusal created metadata"
    );

    let db = Tandem::<Sqlite>::builder(&url, cat.clone())
        .baseline(2)
        .open()
        .unwrap();
    assert_eq!(db.live_version().get(), 2);
    let history = db.history().unwrap();
    assert_eq!(
        (history[0].version.get(), history[0].phase.as_str()),
        (2, "baseline")
    );
    drop(db);
    // The same baseline again is harmless; another one is refused.
    Tandem::<Sqlite>::builder(&url, cat.clone())
        .baseline(2)
        .open()
        .unwrap();
    let err = Tandem::<Sqlite>::builder(&url, cat.clone())
        .baseline(1)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::BaselineMismatch { .. }), "{err:?}");
    // A baseline beyond the catalog is refused.
    let err = Tandem::<Sqlite>::builder(&url, cat)
        .baseline(9)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::UnknownVersion { .. }), "{err:?}");
    // The adopted data is untouched.
    assert!(columns(&mut raw(&url), "items").contains(&"label".to_owned()));
}

#[test]
fn damaged_metadata_is_refused_and_left_alone() {
    let cases: &[(&str, &str)] = &[
        ("UPDATE tandem_state SET phase = 'exploded'", "phase"),
        ("UPDATE tandem_state SET version = -3", "version -3"),
        ("UPDATE tandem_state SET mode = 'party'", "mode"),
        ("DELETE FROM tandem_state", "no row"),
    ];
    for (tamper, detail) in cases {
        let (_dir, url) = temp_db();
        drop(open_demo(&url));
        raw(&url).batch_execute(tamper).unwrap();
        let err = Tandem::<Sqlite>::builder(&url, tandem::testing::demo::catalog().unwrap())
            .open()
            .unwrap_err();
        match &err {
            Error::MetadataCorrupt { table, detail: d } => {
                assert_eq!(table, "tandem_state");
                assert!(d.contains(detail), "{tamper}: {d}");
            }
            other => panic!("{tamper}: expected MetadataCorrupt, got {other:?}"),
        }
        assert!(err.to_string().contains("will not guess"), "{err}");
    }
}

#[test]
fn future_version_fails_calls_before_any_query_and_refuses_upgrades() {
    let (_dir, url) = temp_db();
    let db = open_demo(&url);
    drop(db);
    // A newer binary moved the database to version 7 (unknown to this catalog).
    raw(&url)
        .batch_execute("UPDATE tandem_state SET version = 7")
        .unwrap();
    let db = open_demo(&url);
    assert_eq!(db.live_version().get(), 7);
    let mut ran = false;
    let err = db
        .call(&accounts(), |_, _| {
            ran = true;
            Ok::<_, Error>(())
        })
        .unwrap_err();
    assert!(!ran, "the closure must not run");
    assert!(
        matches!(err, Error::VersionNotServed { live, .. } if live.get() == 7),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("deploy a binary with bindings for version 7"),
        "{err}"
    );
    let err = db.upgrader().expand().unwrap_err();
    assert!(
        matches!(err, Error::UnknownVersion { version, .. } if version.get() == 7),
        "{err:?}"
    );
    assert_eq!(db.state().unwrap().version.get(), 7, "nothing changed");
}
