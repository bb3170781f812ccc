//! Metadata tables: created on first use, custom prefixes, adoption only by
//! an explicit baseline, and damaged or foreign metadata refused with typed
//! errors that change nothing.

mod common;

use common::{accounts, catalog, open_demo, per_backend, Kit, THREE_VERSIONS};
use tandem::{Backend, Error, Mode, StatePhase, Tandem};

fn first_use_creates_metadata_and_installs_version_1<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
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
            .phase(
                history[0].version,
                tandem::Phase::Expand,
                <K::B as Backend>::NAME
            )
            .unwrap()
            .checksum
    );
    let t = K::tables(&url);
    for table in ["accounts", "tandem_state", "tandem_history", "tandem_fleet"] {
        assert!(t.contains(&table.to_owned()), "{table} missing from {t:?}");
    }
    // Opening again adopts the same metadata; nothing is re-applied.
    drop(db);
    let again = K::open(&url);
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

fn custom_prefix_keeps_separate_metadata<K: Kit>() {
    let (_dir, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let a = Tandem::<K::B>::builder(&url, cat.clone())
        .prefix("app_meta_")
        .open()
        .unwrap();
    assert_eq!(a.state().unwrap().version.get(), 1);
    let t = K::tables(&url);
    assert!(t.contains(&"app_meta_state".to_owned()), "{t:?}");
    assert!(!t.contains(&"tandem_state".to_owned()), "{t:?}");
    // The default prefix finds no metadata in a database with tables: it refuses to guess.
    let err = Tandem::<K::B>::builder(&url, cat).open().unwrap_err();
    assert!(
        matches!(err, Error::NotAdopted { tables: 4, .. }),
        "{err:?}"
    );
}

fn invalid_prefix_is_refused_before_touching_the_database<K: Kit>() {
    let (_dir, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    for prefix in ["x; DROP TABLE y", "", "9lives_", "Upper_", "a b"] {
        let err = Tandem::<K::B>::builder(&url, cat.clone())
            .prefix(prefix)
            .open()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidPrefix { prefix: p, .. } if p == prefix),
            "{prefix}: {err:?}"
        );
        assert!(err.to_string().contains("plain identifier"), "{err}");
    }
    if <K::B as Backend>::NAME == "sqlite" {
        assert!(
            !std::path::Path::new(&url).exists(),
            "no database file may be created"
        );
    } else {
        assert_eq!(
            K::tables(&url),
            Vec::<String>::new(),
            "no table may be created"
        );
    }
}

fn existing_schema_is_adopted_only_by_baseline<K: Kit>() {
    let (_dir, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    K::exec(
        &url,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, label TEXT); \
         INSERT INTO items (id, name) VALUES (1, 'kept');",
    );
    let err = Tandem::<K::B>::builder(&url, cat.clone())
        .open()
        .unwrap_err();
    assert!(
        matches!(err, Error::NotAdopted { tables: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("baseline"), "{err}");
    assert!(
        !K::tables(&url).contains(&"tandem_state".to_owned()),
        "refusal created metadata"
    );

    let db = Tandem::<K::B>::builder(&url, cat.clone())
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
    Tandem::<K::B>::builder(&url, cat.clone())
        .baseline(2)
        .open()
        .unwrap();
    let err = Tandem::<K::B>::builder(&url, cat.clone())
        .baseline(1)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::BaselineMismatch { .. }), "{err:?}");
    // A baseline beyond the catalog is refused.
    let err = Tandem::<K::B>::builder(&url, cat)
        .baseline(9)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::UnknownVersion { .. }), "{err:?}");
    // The adopted data is untouched.
    assert!(K::columns(&url, "items").contains(&"label".to_owned()));
}

fn damaged_metadata_is_refused_and_left_alone<K: Kit>() {
    let cases: &[(&str, &str)] = &[
        ("UPDATE tandem_state SET phase = 'exploded'", "phase"),
        ("UPDATE tandem_state SET version = -3", "version -3"),
        ("UPDATE tandem_state SET mode = 'party'", "mode"),
        ("DELETE FROM tandem_state", "no row"),
    ];
    for (tamper, detail) in cases {
        let Some((_d, url)) = K::fresh() else { return };
        drop(K::open(&url));
        K::exec(&url, tamper);
        let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
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

fn future_version_fails_calls_before_any_query_and_refuses_upgrades<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    drop(db);
    // A newer binary moved the database to version 7 (unknown to this catalog).
    K::exec(&url, "UPDATE tandem_state SET version = 7");
    let db = K::open(&url);
    assert_eq!(db.live_version().get(), 7);
    let mut ran = false;
    let err = db
        .call(&K::repo(), |_, _| {
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

per_backend!(
    first_use_creates_metadata_and_installs_version_1,
    custom_prefix_keeps_separate_metadata,
    invalid_prefix_is_refused_before_touching_the_database,
    existing_schema_is_adopted_only_by_baseline,
    damaged_metadata_is_refused_and_left_alone,
    future_version_fails_calls_before_any_query_and_refuses_upgrades,
);
