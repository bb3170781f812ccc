//! The upgrader's phases: order, idempotence, multi-hop, switch back,
//! checksum drift, and SQL errors that roll back and change nothing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{catalog, per_backend, Kit, THREE_VERSIONS};
use tandem::{Backend, Catalog, Error, Phase, StatePhase, Tandem};

fn open<K: Kit>(url: &str, cat: Catalog, serves: std::ops::RangeInclusive<u32>) -> Tandem<K::B> {
    Tandem::<K::B>::builder(url, cat)
        .serves(serves)
        .open()
        .unwrap()
}

fn phases<B: Backend>(db: &Tandem<B>) -> Vec<(u32, String, String)> {
    db.history()
        .unwrap()
        .into_iter()
        .map(|h| (h.version.get(), h.phase.to_string(), h.outcome.to_string()))
        .collect()
}

fn row(v: u32, phase: &str, outcome: &str) -> (u32, String, String) {
    (v, phase.to_owned(), outcome.to_owned())
}

fn upgrade_to_walks_every_hop_from_an_old_database<K: Kit>() {
    let (_c, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=3);
    let reports = db.upgrader().upgrade_to(3).unwrap();
    let done: Vec<_> = reports.iter().map(|r| (r.version.get(), r.phase)).collect();
    assert_eq!(
        done,
        vec![
            (2, Phase::Expand),
            (2, Phase::Switch),
            (2, Phase::Contract),
            (3, Phase::Expand),
            (3, Phase::Switch),
            (3, Phase::Contract)
        ]
    );
    let state = db.state().unwrap();
    assert_eq!(
        (state.version.get(), state.phase, state.upgrader),
        (3, StatePhase::Stable, None)
    );
    assert_eq!(db.live_version().get(), 3);
    assert_eq!(
        phases(&db),
        vec![
            row(1, "expand", "applied"),
            row(2, "expand", "applied"),
            row(2, "switch", "applied"),
            row(2, "contract", "applied"),
            row(3, "expand", "applied"),
            row(3, "switch", "applied"),
            row(3, "contract", "applied"),
        ]
    );
    let t = K::tables(&url);
    assert!(
        t.contains(&"tags".to_owned()) && !t.contains(&"switched_to_2".to_owned()),
        "{t:?}"
    );
    assert!(K::columns(&url, "items").contains(&"label".to_owned()));
    // Nothing left to do: running again is a no-op.
    assert!(db.upgrader().upgrade_to(3).unwrap().is_empty());
    assert_eq!(db.history().unwrap().len(), 7);
}

fn each_phase_is_idempotent<K: Kit>() {
    let (_c, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=2);
    let up = db.upgrader();
    assert!(!up.expand().unwrap().already_done);
    assert!(up.expand().unwrap().already_done);
    assert!(!up.switch().unwrap().already_done);
    assert!(up.switch().unwrap().already_done);
    assert!(!up.contract().unwrap().already_done);
    assert!(up.contract().unwrap().already_done);
    assert_eq!(db.history().unwrap().len(), 4);
}

fn phases_out_of_order_are_refused_and_change_nothing<K: Kit>() {
    let (_c, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=3);
    let up = db.upgrader();
    let before = db.state().unwrap();

    let err = up.switch().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhaseOutOfOrder {
                attempted: Phase::Switch,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("run expand first"), "{err}");
    up.expand().unwrap();
    let expanded = db.state().unwrap();

    // Contract before switch.
    let err = up.contract().unwrap_err();
    assert!(
        matches!(&err, Error::PhaseOutOfOrder { attempted: Phase::Contract, version, live, state: "expanded", .. } if version.get() == 2 && live.get() == 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("switch first"), "{err}");
    assert_eq!(db.state().unwrap(), expanded);

    up.switch().unwrap();
    // At most two versions: version 3 cannot be expanded before 2 is contracted.
    let err = up.expand().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhaseOutOfOrder {
                attempted: Phase::Expand,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at most two versions"), "{err}");

    // Roll forward only.
    up.contract().unwrap();
    let err = up.upgrade_to(1).unwrap_err();
    assert!(matches!(err, Error::NotRollForward { .. }), "{err:?}");
    let err = up.upgrade_to(9).unwrap_err();
    assert!(
        matches!(err, Error::UnknownVersion { version, .. } if version.get() == 9),
        "{err:?}"
    );
    // Switch back after contract is no longer possible.
    let err = up.switch_back().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhaseOutOfOrder {
                attempted: Phase::SwitchBack,
                ..
            }
        ),
        "{err:?}"
    );
    assert_ne!(before.epoch, db.state().unwrap().epoch);
}

fn switch_back_runs_switch_back_sql_and_restores_the_old_binding<K: Kit>() {
    let (_c, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=2);
    let up = db.upgrader();
    up.expand().unwrap();
    up.switch().unwrap();
    assert!(K::tables(&url).contains(&"switched_to_2".to_owned()));
    let report = up.switch_back().unwrap();
    assert_eq!((report.version.get(), report.phase), (2, Phase::SwitchBack));
    let state = db.state().unwrap();
    assert_eq!(
        (state.version.get(), state.phase),
        (1, StatePhase::Expanded)
    );
    assert_eq!(db.live_version().get(), 1);
    assert!(!K::tables(&url).contains(&"switched_to_2".to_owned()));
    assert!(up.switch_back().unwrap().already_done);
    // And forward again.
    up.switch().unwrap();
    assert_eq!(db.live_version().get(), 2);
    let h = phases(&db);
    assert_eq!(
        &h[2..],
        &[
            row(2, "switch", "applied"),
            row(2, "switch_back", "applied"),
            row(2, "switch", "applied")
        ]
    );
}

fn switch_back_without_switch_back_sql_is_refused<K: Kit>() {
    let files: Vec<(&str, &str)> = THREE_VERSIONS
        .iter()
        .copied()
        .filter(|(p, _)| !p.ends_with("switch_back.sql"))
        .collect();
    let (_c, cat) = catalog(&files);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=2);
    db.upgrader().expand().unwrap();
    db.upgrader().switch().unwrap();
    let err = db.upgrader().switch_back().unwrap_err();
    assert!(
        matches!(err, Error::NoSwitchBack { version } if version.get() == 2),
        "{err:?}"
    );
    assert_eq!(db.live_version().get(), 2);
}

fn demo_switch_back_window_keeps_writes_of_both_bindings<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    let repo = K::repo();
    let up = db.upgrader();
    let old = db
        .call(&repo, |r, s| r.create(s.conn(), "old", "old@x"))
        .unwrap();
    up.expand().unwrap();
    up.switch().unwrap();
    let new = db
        .unit_of_work(|s| s.repo(&repo)?.create(s.conn(), "new", "new@x"))
        .unwrap();
    db.unit_of_work(|s| s.repo(&repo)?.set_email(s.conn(), old, "old2@x"))
        .unwrap();
    up.switch_back().unwrap();
    // The v1 binding sees what v2 wrote (sync triggers), and vice versa after.
    assert_eq!(
        db.call(&repo, |r, s| Ok::<_, Error>((
            r.version(),
            r.email(s.conn(), new)?
        )))
        .unwrap(),
        (1, Some("new@x".into()))
    );
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), old))
            .unwrap()
            .as_deref(),
        Some("old2@x")
    );
    db.call(&repo, |r, s| r.set_email(s.conn(), new, "new2@x"))
        .unwrap();
    up.switch().unwrap();
    up.contract().unwrap();
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), new))
            .unwrap()
            .as_deref(),
        Some("new2@x")
    );
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), old))
            .unwrap()
            .as_deref(),
        Some("old2@x")
    );
}

fn a_switch_that_would_strand_this_binary_is_refused<K: Kit>() {
    let (_c, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=1);
    db.upgrader().expand().unwrap();
    let err = db.upgrader().switch().unwrap_err();
    assert!(
        matches!(&err, Error::SwitchRefused { version, instances } if version.get() == 2 && instances.len() == 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("this instance"), "{err}");
    assert_eq!(db.state().unwrap().version.get(), 1);
}

fn checksum_drift_is_refused_naming_version_and_phase<K: Kit>() {
    let (cat_dir, cat) = catalog(THREE_VERSIONS);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=2);
    db.upgrader().expand().unwrap();
    db.upgrader().switch().unwrap();
    drop(db);

    // Someone edits an applied file.
    std::fs::write(
        cat_dir.path().join("0002_labels/expand.sql"),
        "ALTER TABLE items ADD COLUMN label TEXT; -- edited",
    )
    .unwrap();
    let err = Tandem::<K::B>::builder(&url, Catalog::from_dir(cat_dir.path()).unwrap())
        .serves(1..=2)
        .open()
        .unwrap_err();
    match &err {
        Error::ChecksumDrift {
            version,
            phase,
            recorded,
            current,
        } => {
            assert_eq!((version.get(), *phase), (2, Phase::Expand));
            assert_ne!(recorded, current);
        }
        other => panic!("expected ChecksumDrift, got {other:?}"),
    }
    assert!(err.to_string().contains("new version"), "{err}");

    // Restored, then a contract file appears for the live version: allowed (not applied yet).
    std::fs::write(
        cat_dir.path().join("0002_labels/expand.sql"),
        "ALTER TABLE items ADD COLUMN label TEXT;",
    )
    .unwrap();
    std::fs::write(cat_dir.path().join("0002_labels/contract.sql"), "SELECT 1;").unwrap();
    let db = Tandem::<K::B>::builder(&url, Catalog::from_dir(cat_dir.path()).unwrap())
        .serves(1..=2)
        .open()
        .unwrap();
    db.upgrader().contract().unwrap();
    drop(db);
    // But removing the applied switch.sql is drift too.
    std::fs::remove_file(cat_dir.path().join("0002_labels/switch.sql")).unwrap();
    let err = Tandem::<K::B>::builder(&url, Catalog::from_dir(cat_dir.path()).unwrap())
        .serves(1..=2)
        .open()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChecksumDrift {
                phase: Phase::Switch,
                ..
            }
        ),
        "{err:?}"
    );
}

fn sql_errors_roll_the_phase_back_and_are_journaled<K: Kit>() {
    let broken = [
        (
            "0001_items/expand.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        ),
        (
            "0002_labels/expand.sql",
            "CREATE TABLE half_done (x INTEGER); ALTER TABLE no_such_table ADD COLUMN y TEXT;",
        ),
    ];
    let (_c, cat) = catalog(&broken);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=2);
    let before = db.state().unwrap();
    let err = db.upgrader().expand().unwrap_err();
    match &err {
        Error::PhaseFailed {
            version,
            phase,
            source,
        } => {
            assert_eq!((version.get(), *phase), (2, Phase::Expand));
            assert!(source.to_string().contains("no_such_table"), "{source}");
        }
        other => panic!("expected PhaseFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(db.state().unwrap(), before, "state row unchanged");
    assert!(
        !K::tables(&url).contains(&"half_done".to_owned()),
        "the first statement was rolled back too"
    );
    let h = db.history().unwrap();
    let failed = h.last().unwrap();
    assert_eq!(
        (
            failed.version.get(),
            failed.phase.as_str(),
            failed.outcome.as_str()
        ),
        (2, "expand", "failed")
    );
    assert!(failed
        .detail
        .as_deref()
        .unwrap_or("")
        .contains("no_such_table"));
    drop(db);

    // Fixed SQL: the same command finishes the job.
    let (_c2, fixed) = catalog(&[
        broken[0],
        (
            "0002_labels/expand.sql",
            "CREATE TABLE half_done (x INTEGER);",
        ),
    ]);
    let db = open::<K>(&url, fixed, 1..=2);
    db.upgrader().upgrade_to(2).unwrap();
    assert_eq!(db.state().unwrap().version.get(), 2);
}

fn switch_and_contract_sql_errors_leave_the_version_where_it_was<K: Kit>() {
    let files = [
        (
            "0001_items/expand.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        ),
        (
            "0002_labels/expand.sql",
            "ALTER TABLE items ADD COLUMN label TEXT;",
        ),
        (
            "0002_labels/switch.sql",
            "CREATE TABLE sw (x INTEGER); INSERT INTO nowhere VALUES (1);",
        ),
    ];
    let (_c, cat) = catalog(&files);
    let Some((_d, url)) = K::fresh() else { return };
    let db = open::<K>(&url, cat, 1..=2);
    db.upgrader().expand().unwrap();
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
    assert_eq!(db.live_version().get(), 1);
    let s = db.state().unwrap();
    assert_eq!((s.version.get(), s.phase), (1, StatePhase::Expanded));
    assert!(!K::tables(&url).contains(&"sw".to_owned()));
    drop(db);

    let files = [
        files[0],
        files[1],
        ("0002_labels/contract.sql", "DROP TABLE does_not_exist;"),
    ];
    let (_c, cat) = catalog(&files);
    let db = open::<K>(&url, cat, 1..=2);
    db.upgrader().switch().unwrap();
    let err = db.upgrader().contract().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhaseFailed {
                phase: Phase::Contract,
                ..
            }
        ),
        "{err:?}"
    );
    let s = db.state().unwrap();
    assert_eq!((s.version.get(), s.phase), (2, StatePhase::Switched));
}

fn a_failed_backfill_resumes_where_it_stopped<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let fail_once = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let build = |fail: Arc<AtomicBool>, calls: Arc<std::sync::atomic::AtomicUsize>| {
        Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
            .backfill(2, "copy emails", move |conn| {
                // The second batch fails once (a transient problem, say).
                if calls.fetch_add(1, Ordering::SeqCst) == 1 && fail.swap(false, Ordering::SeqCst) {
                    return Err(diesel::result::Error::RollbackTransaction);
                }
                K::backfill_emails(conn)
            })
            .open()
            .unwrap()
    };
    let db = build(fail_once.clone(), calls.clone());
    let repo = K::repo();
    db.unit_of_work(|s| -> tandem::Result<()> {
        let r = s.repo(&repo)?;
        for i in 0..2500 {
            r.create(s.conn(), &format!("n{i}"), &format!("e{i}@x"))?;
        }
        Ok(())
    })
    .unwrap();
    // The triggers are not there yet, so v1 rows have no account_emails row.
    let err = db.upgrader().expand().unwrap_err();
    assert!(
        matches!(&err, Error::StepFailed { step, batches: 1, .. } if step == "copy emails"),
        "{err:?}"
    );
    let h = db.history().unwrap();
    assert_eq!(
        h.last().map(|h| h.outcome.as_str()),
        Some("running"),
        "SQL applied, steps pending"
    );
    assert_eq!(db.state().unwrap().phase, StatePhase::Stable);
    let report = db.upgrader().expand().unwrap();
    assert_eq!(
        report.batches, 2,
        "resumed: the remaining 1500 rows in two batches"
    );
    assert_eq!(db.state().unwrap().phase, StatePhase::Expanded);
    db.upgrader().upgrade_to(2).unwrap();
    for id in [1_i64, 1000, 2500] {
        let email = db.call(&repo, |r, s| r.email(s.conn(), id)).unwrap();
        assert_eq!(email, Some(format!("e{}@x", id - 1)));
    }
}

/// The demo with 2500 accounts: a backfill in batches, a switch back whose
/// old binding reads what the new one wrote, and forward again to the end.
fn upgrade_cycle_with_backfill_and_switch_back<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    let repo = K::repo();
    let ids: Vec<i64> = db
        .unit_of_work(|s| -> tandem::Result<Vec<i64>> {
            let r = s.repo(&repo)?;
            (0..2500)
                .map(|i| r.create(s.conn(), &format!("n{i}"), &format!("e{i}@x")))
                .collect()
        })
        .unwrap();
    let up = db.upgrader();
    let expand = up.expand().unwrap();
    assert_eq!(expand.batches, 3);
    up.switch().unwrap();
    assert_eq!(
        db.call(&repo, |r, s| Ok::<_, Error>((
            r.version(),
            K::live(s.conn())
        )))
        .unwrap(),
        (2, 2)
    );
    let new = db
        .unit_of_work(|s| s.repo(&repo)?.create(s.conn(), "new", "new@x"))
        .unwrap();
    up.switch_back().unwrap();
    // The v1 binding reads what v2 wrote (sync triggers).
    assert_eq!(
        db.call(&repo, |r, s| Ok::<_, Error>((
            r.version(),
            r.email(s.conn(), new)?
        )))
        .unwrap(),
        (1, Some("new@x".to_owned()))
    );
    db.call(&repo, |r, s| r.set_email(s.conn(), ids[0], "changed@x"))
        .unwrap();
    up.switch().unwrap();
    up.contract().unwrap();
    let state = db.state().unwrap();
    assert_eq!((state.version.get(), state.phase), (2, StatePhase::Stable));
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), ids[0]))
            .unwrap()
            .as_deref(),
        Some("changed@x")
    );
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), ids[2499]))
            .unwrap()
            .as_deref(),
        Some("e2499@x")
    );
    let history: Vec<String> = db
        .history()
        .unwrap()
        .into_iter()
        .map(|h| format!("{}:{}:{}", h.version, h.phase, h.outcome))
        .collect();
    assert_eq!(
        history,
        [
            "1:expand:applied",
            "2:expand:applied",
            "2:switch:applied",
            "2:switch_back:applied",
            "2:switch:applied",
            "2:contract:applied"
        ]
    );
}

/// A handle with a one-connection pool (an upgrader job, a small tool),
/// beside a serving instance (so the switch goes through deploying mode):
/// every phase runs on the connection the upgrader holds, none asks the
/// pool for a second one while it does.
fn a_one_connection_pool_runs_every_phase<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let serving = K::open(&url);
    let db = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .pool_size(1)
        .connection_timeout(std::time::Duration::from_secs(2))
        .backfill(2, "copy emails", |c| K::backfill_emails(c))
        .open()
        .unwrap();
    let repo = K::repo();
    db.call(&repo, |r, s| r.create(s.conn(), "ada", "ada@x"))
        .unwrap();
    let reports = db
        .upgrader()
        .upgrade_to(2)
        .unwrap_or_else(|e| panic!("a one-connection upgrader failed: {e}"));
    assert_eq!(reports.len(), 3);
    for db in [&db, &serving] {
        assert_eq!(
            db.call(&repo, |r, s| Ok::<_, Error>((
                r.version(),
                r.email(s.conn(), 1)?
            )))
            .unwrap(),
            (2, Some("ada@x".to_owned()))
        );
    }
}

/// `backfill_sql`: one statement, run in batches until it changes no row,
/// with no Rust code; a statement that cannot run as a batch is refused
/// when the handle opens.
fn a_sql_backfill_runs_one_statement_until_it_changes_nothing<K: Kit>() {
    let Some((_d, url)) = K::fresh() else { return };
    let postgres = <K::B as Backend>::NAME == "postgres";
    drop(K::open(&url)); // version 1
    K::exec(
        &url,
        if postgres {
            "INSERT INTO accounts (name, email) SELECT 'n' || g, 'e' || g || '@x' FROM generate_series(1, 1200) g"
        } else {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1200) \
             INSERT INTO accounts (name, email) SELECT 'n' || x, 'e' || x || '@x' FROM c"
        },
    );
    let copy = format!(
        "INSERT INTO account_emails (account_id, email) SELECT id, email FROM accounts a \
         WHERE email <> '' AND NOT EXISTS (SELECT 1 FROM account_emails e WHERE e.account_id = a.id) \
         LIMIT 500{}",
        if postgres { " ON CONFLICT (account_id) DO NOTHING" } else { "" }
    );
    let builder =
        || Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap()).serves(1..=2);
    for (bad, says) in [
        (format!("{copy}; {copy}"), "holds 2 statements"),
        ("COMMIT".to_owned(), "`COMMIT` controls the transaction"),
        ("  -- nothing\n".to_owned(), "holds no statement"),
        (
            "UPDATE accounts SET email = lower(email)".to_owned(),
            "has no WHERE",
        ),
    ] {
        let err = builder()
            .backfill_sql(2, "copy emails", &bad)
            .open()
            .err()
            .unwrap();
        assert!(
            matches!(&err, Error::BadBackfill { step, version, .. } if step == "copy emails" && version.get() == 2),
            "{err:?}"
        );
        assert!(err.to_string().contains(says), "{err}");
    }
    let db = builder()
        .backfill_sql(2, "copy emails", &copy)
        .open()
        .unwrap();
    let reports = db.upgrader().upgrade_to(2).unwrap();
    assert_eq!(
        (reports[0].phase, reports[0].batches),
        (Phase::Expand, 3),
        "500 + 500 + 200 rows"
    );
    let missing = K::lines(
        &url,
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM accounts a LEFT JOIN account_emails e ON e.account_id = a.id \
         WHERE e.email IS NULL",
    );
    assert_eq!(missing, Some(vec!["0".to_owned()]));
}

per_backend!(
    a_sql_backfill_runs_one_statement_until_it_changes_nothing,
    a_one_connection_pool_runs_every_phase,
    upgrade_cycle_with_backfill_and_switch_back,
    upgrade_to_walks_every_hop_from_an_old_database,
    each_phase_is_idempotent,
    phases_out_of_order_are_refused_and_change_nothing,
    switch_back_runs_switch_back_sql_and_restores_the_old_binding,
    switch_back_without_switch_back_sql_is_refused,
    demo_switch_back_window_keeps_writes_of_both_bindings,
    a_switch_that_would_strand_this_binary_is_refused,
    checksum_drift_is_refused_naming_version_and_phase,
    sql_errors_roll_the_phase_back_and_are_journaled,
    switch_and_contract_sql_errors_leave_the_version_where_it_was,
    a_failed_backfill_resumes_where_it_stopped,
);
