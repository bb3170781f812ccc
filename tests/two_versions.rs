//! The accounts service of `examples/accounts_service` through its two
//! changes (1→2: one email becomes many; 2→3: the name splits and NOT NULL
//! columns arrive), with the test kit, on SQLite and PostgreSQL: every
//! binding works where it must, data crosses each switch both ways, a
//! release with bindings for 2 and 3 only walks a version 1 database, the
//! version gate holds within a call, and the kit names what breaks.

#[path = "../examples/accounts_service/app/mod.rs"]
mod app;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use app::repos::{Profile, V1};
use app::{AppBackend, Service};
use diesel::sql_types::BigInt;
use diesel::{QueryableByName, RunQueryDsl};
use tandem::testing::{Failure, Kit, Stage};
use tandem::{Backend, Catalog, Error, Repository, StatePhase};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The hand-written catalog with version 2's expand replaced by `sql` (both
/// backends).
fn catalog_with_expand_2(sqlite: &str, postgres: &str) -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/accounts_service/schema_versions_sql");
    for version in [
        "0001_accounts",
        "0002_account_emails",
        "0003_names_and_plans",
    ] {
        std::fs::create_dir(dir.path().join(version)).unwrap();
        for file in std::fs::read_dir(src.join(version)).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), dir.path().join(version).join(file.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join("0002_account_emails/expand.sql"), sqlite).unwrap();
    std::fs::write(
        dir.path().join("0002_account_emails/expand.postgres.sql"),
        postgres,
    )
    .unwrap();
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    (dir, catalog)
}

/// The suite, on one backend, for one of the service's two catalogs: the
/// operations (`app::catalog`, no Rust backfill) or the hand-written SQL
/// (`app::catalog_sql`, with the Rust backfills `configure` registers).
macro_rules! two_versions_suite {
    ($name:ident, $backend:ty, $kit:expr, $catalog:path, $configure:expr, $db:literal, $old_after:expr) => {
        mod $name {
            use super::*;

            type B = $backend;
            type C = <$backend as Backend>::Connection;

            fn kit(test: &str, catalog: Catalog) -> Option<Kit<B>> {
                let kit: Option<Kit<B>> = $kit(&format!("{}{test}", $db), catalog);
                kit.map(|k| k.configure($configure))
            }

            fn app_catalog() -> Catalog {
                $catalog().unwrap()
            }

            fn count(conn: &mut C, sql: &str) -> i64 {
                diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
            }

            #[test]
            fn v1_to_v2_every_binding_works_where_it_must() {
                let Some(kit) = kit("v1_to_v2_every_binding", app_catalog()) else { return };
                let repos = B::repos(1..=2).unwrap();
                let change = kit.transition(2).unwrap();
                let ran = change
                    .check(&repos.accounts, |r, s| {
                        let id = r.create(s.conn(), "Ada", "Lovelace", "ada@example.com")?;
                        assert_eq!(r.profile(s.conn(), id)?.map(|p| p.display_name()).as_deref(), Some("Ada Lovelace"));
                        r.rename(s.conn(), id, "Ada", "King")?;
                        assert_eq!(r.profile(s.conn(), id)?.unwrap().last_name, "King");
                        Ok::<_, diesel::result::Error>(())
                    })
                    .unwrap();
                let seen: Vec<String> = ran.iter().map(|(at, v)| format!("v{v} at {at}")).collect();
                // Version 1 runs after the switch where the kit finds it
                // again: on the switched database if the switch ran nothing
                // (the hand-written catalog's), after a switch back if it
                // swapped triggers (the operations').
                let expected = if $old_after == Stage::Switched {
                    ["v1 at version 1 stable", "v1 at version 2 expanded", "v1 at version 2 switched", "v2 at version 2 switched", "v2 at version 2 contracted"]
                } else {
                    ["v1 at version 1 stable", "v1 at version 2 expanded", "v2 at version 2 switched", "v1 at version 2 switched back", "v2 at version 2 contracted"]
                };
                assert_eq!(seen, expected);
                change
                    .check(&repos.emails, |r, s| {
                        let id = s.repo(&repos.accounts).unwrap().create(s.conn(), "Test", "User", "old@example.com")?;
                        r.set_primary(s.conn(), id, "new@example.com")?;
                        assert_eq!(r.primary(s.conn(), id)?.as_deref(), Some("new@example.com"));
                        assert_eq!(r.all(s.conn(), id)?, ["new@example.com"]);
                        Ok::<_, diesel::result::Error>(())
                    })
                    .unwrap();
            }

            #[test]
            fn v2_to_v3_every_binding_works_where_it_must() {
                let Some(kit) = kit("v2_to_v3_every_binding", app_catalog()) else { return };
                let repos = B::repos(2..=3).unwrap();
                let change = kit.transition(3).unwrap();
                let ran = change
                    .check(&repos.accounts, |r, s| {
                        let id = r.create(s.conn(), "Grace", "Brewster Hopper", "grace@example.com")?;
                        let p = r.profile(s.conn(), id)?.unwrap();
                        assert_eq!((p.first_name.as_str(), p.last_name.as_str()), ("Grace", "Brewster Hopper"));
                        r.rename(s.conn(), id, "Grace", "Hopper")?;
                        assert_eq!(r.profile(s.conn(), id)?.unwrap().display_name(), "Grace Hopper");
                        Ok::<_, diesel::result::Error>(())
                    })
                    .unwrap();
                assert_eq!(ran.len(), 5);
                let addresses = repos.addresses.unwrap();
                change
                    .check(&addresses, |r, s| {
                        let id = s.repo(&repos.accounts).unwrap().create(s.conn(), "Alan", "Turing", "alan@example.com")?;
                        r.add(s.conn(), id, "alan@bletchley.uk")?;
                        let all = s.repo(&repos.emails).unwrap().all(s.conn(), id)?;
                        assert_eq!(all, ["alan@example.com", "alan@bletchley.uk"], "primary first");
                        Ok::<_, diesel::result::Error>(())
                    })
                    .unwrap();
            }

            #[test]
            fn v1_to_v2_data_crosses_the_switch_both_ways() {
                let Some(kit) = kit("v1_to_v2_data_crosses", app_catalog()) else { return };
                let repos = B::repos(1..=2).unwrap();
                let change = kit.transition(2).unwrap();
                // What the account looks like through each version: name and primary email.
                let read = |s: &mut tandem::Session<'_, B>, id: &i64| -> tandem::Result<(Option<Profile>, Option<String>)> {
                    let profile = s.repo(&repos.accounts)?.profile(s.conn(), *id)?;
                    Ok((profile, s.repo(&repos.emails)?.primary(s.conn(), *id)?))
                };
                let write = |s: &mut tandem::Session<'_, B>, email: &str| -> tandem::Result<i64> {
                    let id = s.repo(&repos.accounts)?.create(s.conn(), "Edsger", "Dijkstra", "first@example.com")?;
                    // An update after the insert: the update triggers must carry it too.
                    s.repo(&repos.emails)?.set_primary(s.conn(), id, email)?;
                    Ok(id)
                };
                change
                    .forward(&repos.accounts, |_, s| write(s, "old@example.com"), |_, s, id| read(s, id))
                    .unwrap();
                change
                    .backward(&repos.accounts, |_, s| write(s, "new@example.com"), |_, s, id| read(s, id))
                    .unwrap();
            }

            #[test]
            fn v2_to_v3_data_crosses_the_switch_both_ways_and_the_kit_names_a_lossy_read() {
                let Some(kit) = kit("v2_to_v3_data_crosses", app_catalog()) else { return };
                let repos = B::repos(2..=3).unwrap();
                let change = kit.transition(3).unwrap();
                // A named fn, not a closure: `Repository<dyn Trait>` hands out
                // `&(dyn Trait + 'static)`, which closure annotations cannot name.
                fn read(r: &(dyn app::repos::Accounts<C> + 'static), s: &mut tandem::Session<'_, B>, id: &i64) -> diesel::QueryResult<Option<Profile>> {
                    r.profile(s.conn(), *id)
                }
                change
                    .forward(&repos.accounts, |r, s| r.create(s.conn(), "Barbara", "Liskov", "b@example.com"), read)
                    .unwrap();
                change
                    .backward(&repos.accounts, |r, s| r.create(s.conn(), "Donald", "Knuth", "d@example.com"), read)
                    .unwrap();
                // Version 2 has one name: a two-word first name written by version 3
                // comes back split differently. The kit says who wrote and who read.
                let err = change
                    .backward(&repos.accounts, |r, s| r.create(s.conn(), "Mary Ann", "Evans", "m@example.com"), read)
                    .unwrap_err();
                match &err {
                    Failure::Mismatch { written_by, read_by, written_at, read_at, .. } => {
                        assert_eq!((written_by.get(), read_by.get()), (3, 2));
                        assert_eq!((written_at.stage, read_at.stage), (Stage::Switched, $old_after));
                    }
                    other => panic!("expected a mismatch, got {other}"),
                }
                let text = err.to_string();
                assert!(text.contains("version 3 binding at version 3 switched") && text.contains("version 2 binding"), "{text}");
                // What version 2 can express (the whole name) does cross.
                change
                    .backward(
                        &repos.accounts,
                        |r, s| r.create(s.conn(), "Mary Ann", "Evans", "m@example.com"),
                        |r, s, id| r.profile(s.conn(), *id).map(|p| p.map(|p| p.display_name())),
                    )
                    .unwrap();
            }

            #[test]
            fn a_release_with_bindings_for_2_and_3_only_walks_a_version_1_database() {
                let Some(kit) = kit("a_release_with_bindings_for_2_and_3", app_catalog()) else { return };
                // An installation in the field, at version 1, with data written by release 1.
                let field = kit.transition(2).unwrap().fresh_at(Stage::PreviousStable).unwrap();
                let release1 = B::repos(1..=1).unwrap();
                let v1 = tandem::Version::FIRST;
                let ids: Vec<i64> = [("Ada", "Lovelace"), ("Grace", "Hopper"), ("Edsger", "")]
                    .iter()
                    .map(|(first, last)| field.run(&release1.accounts, v1, |r, s| r.create(s.conn(), first, last, "x@example.com")).unwrap())
                    .collect();
                // The new release: bindings for 2 and 3 only.
                let new = Service::<B> {
                    db: ($configure)(tandem::Tandem::<B>::builder(field.url(), app_catalog()))
                        .serves(2..=3)
                        .label("release-3")
                        .open()
                        .unwrap(),
                    repos: B::repos(2..=3).unwrap(),
                };
                // Before: typed, no statement ran, mapped to 503 + Retry-After.
                let err = new
                    .db
                    .unit_of_work(|s| Ok::<_, app::AppError>(s.repo(&new.repos.accounts)?.profile(s.conn(), ids[0])?))
                    .unwrap_err();
                assert!(
                    matches!(&err, app::AppError::Tandem(Error::Upgrading { live, first, last })
                        if (live.get(), first.get(), last.get()) == (1, 2, 3)),
                    "{err:?}"
                );
                let r = new.get_account(ids[0]);
                assert_eq!((r.status, r.retry_after), (503, Some(1)), "{r:?}");
                // upgrade_to(3) walks every phase of 2, then of 3.
                let reports = new.db.upgrader().upgrade_to(3).unwrap();
                let walked: Vec<String> = reports.iter().map(|r| format!("{} {}", r.phase, r.version)).collect();
                assert_eq!(walked, ["expand 2", "switch 2", "contract 2", "expand 3", "switch 3", "contract 3"]);
                let state = new.db.state().unwrap();
                assert_eq!((state.version.get(), state.phase), (3, StatePhase::Stable));
                // After: served, and the data written by version 1 came along.
                let r = new.get_account(ids[0]);
                assert_eq!(r.status, 200, "{r:?}");
                assert!(r.body.contains("\"Ada Lovelace\"") && r.body.contains("x@example.com") && r.body.contains("plan=free"), "{r:?}");
                for id in &ids {
                    let p = new.db.call(&new.repos.accounts, |r, s| Ok::<_, Error>(r.profile(s.conn(), *id)?)).unwrap().unwrap();
                    assert!(!p.first_name.is_empty(), "{p:?}");
                }
                assert_eq!(new.db.call(&new.repos.accounts, |r, s| Ok::<_, Error>(r.profile(s.conn(), ids[2])?)).unwrap().unwrap().last_name, "");
            }

            #[test]
            fn the_version_gate_is_decided_once_per_call_through_a_switch() {
                let Some(kit) = kit("the_version_gate_is_decided_once", app_catalog()) else { return };
                let staged = kit.transition(3).unwrap().fresh_at(Stage::PreviousStable).unwrap();
                let service = Arc::new(Service::<B> {
                    db: ($configure)(tandem::Tandem::<B>::builder(staged.url(), app_catalog()))
                        .serves(2..=3)
                        .poll_interval(Duration::from_millis(20))
                        .open()
                        .unwrap(),
                    repos: B::repos(2..=3).unwrap(),
                });
                let id = service.db.call(&service.repos.accounts, |r, s| Ok::<_, Error>(r.create(s.conn(), "Ada", "Lovelace", "a@x")?)).unwrap();
                let stop = Arc::new(AtomicBool::new(false));
                let workers: Vec<_> = (0..4)
                    .map(|_| {
                        let (service, stop) = (Arc::clone(&service), Arc::clone(&stop));
                        thread::spawn(move || {
                            let mut seen = Vec::new();
                            while !stop.load(Ordering::Relaxed) {
                                let r = &service.repos;
                                let gate = service
                                    .db
                                    .unit_of_work(|s| {
                                        let on = s.at_least(3);
                                        // The gated feature, or the fallback, then the live version at the end.
                                        match (on, &r.plans) {
                                            (true, Some(plans)) => drop(s.repo(plans)?.plan(s.conn(), id)?),
                                            _ => drop(s.repo(&r.accounts)?.profile(s.conn(), id)?),
                                        }
                                        let live = count(s.conn(), "SELECT version AS n FROM tandem_state WHERE id = 1");
                                        Ok::<_, app::AppError>((on, s.version().get(), live))
                                    })
                                    .unwrap();
                                seen.push(gate);
                                let r = service.set_plan(id, "pro");
                                assert!(r.status == 204 || r.status == 404, "{r:?}");
                            }
                            seen
                        })
                    })
                    .collect();
                thread::sleep(Duration::from_millis(100));
                service.db.upgrader().expand().unwrap();
                service.db.upgrader().switch().unwrap();
                thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
                let seen: Vec<(bool, u32, i64)> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
                for (on, version, live) in &seen {
                    assert_eq!((*on, i64::from(*version)), (*version >= 3, *live), "gate, binding and live version agree");
                }
                assert!(seen.iter().any(|s| !s.0) && seen.iter().any(|s| s.0), "calls on both sides of the switch");
            }

            #[test]
            fn an_expand_that_breaks_the_old_binding_is_caught_with_version_state_and_error() {
                // Version 2's expand that also drops accounts.email: not additive.
                let (sqlite, postgres) = (
                    "CREATE TABLE account_emails (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL, email TEXT NOT NULL, is_primary BOOLEAN NOT NULL DEFAULT FALSE);\n\
                     ALTER TABLE accounts DROP COLUMN email;",
                    "CREATE TABLE account_emails (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, email TEXT NOT NULL, is_primary BOOLEAN NOT NULL DEFAULT FALSE);\n\
                     ALTER TABLE accounts DROP COLUMN email;",
                );
                // The lint refuses it before any database is opened, naming the
                // file, the line, the rule and what to write instead.
                let (_dir, broken) = catalog_with_expand_2(sqlite, postgres);
                let Some(linted) = kit("an_expand_that_breaks_the_old_binding", broken) else { return };
                let err = linted.transition(2).map(drop).unwrap_err();
                match &err {
                    Failure::Lint { to, backend, findings } => {
                        assert_eq!((to.get(), *backend), (2, <B as Backend>::NAME));
                        let found: Vec<_> = findings.iter().map(|f| (f.rule, f.line)).collect();
                        assert_eq!(found, vec![(tandem::lint::Rule::ExpandDrop, 2)]);
                    }
                    other => panic!("expected a lint failure, got {other}"),
                }
                let text = err.to_string();
                assert!(text.contains("/expand.") && text.contains(":2: expand-drop"), "{text}");
                assert!(text.contains("move the drop to contract.sql"), "says what to fix: {text}");
                // Opted out with a reason that is wrong, the bindings still catch it.
                let allow = "-- tandem:allow(expand-drop) (wrongly) thought unused\n";
                let (_dir, broken) = catalog_with_expand_2(
                    &sqlite.replace("ALTER TABLE", &format!("{allow}ALTER TABLE")),
                    &postgres.replace("ALTER TABLE", &format!("{allow}ALTER TABLE")),
                );
                let Some(kit) = kit("an_expand_that_breaks_the_old_binding", broken) else { return };
                let kit = kit.configure(|b| b); // the backfill reads the dropped column: none here
                let repos = B::repos(1..=2).unwrap();
                let err = kit
                    .transition(2)
                    .unwrap()
                    .check(&repos.accounts, |r, s| {
                        let id = r.create(s.conn(), "Ada", "Lovelace", "ada@example.com")?;
                        r.profile(s.conn(), id).map(drop)
                    })
                    .unwrap_err();
                match &err {
                    Failure::Binding { binding, at, source } => {
                        assert_eq!((binding.get(), at.stage, at.to.get()), (1, Stage::Expanded, 2));
                        assert!(source.to_string().contains("email"), "the database error: {source}");
                    }
                    other => panic!("expected a binding failure, got {other}"),
                }
                let text = err.to_string();
                assert!(text.contains("the version 1 binding failed on a database at version 2 expanded"), "{text}");
                assert!(text.contains("additive"), "says what to fix: {text}");
            }

            #[test]
            fn a_binding_left_behind_fails_at_contract_and_is_named() {
                let Some(kit) = kit("a_binding_left_behind", app_catalog()) else { return };
                // Version 2's slot given version 1's code (a forgotten port): it
                // works while the sync triggers keep accounts.email, not after.
                let accounts = B::repos(1..=2).unwrap().accounts;
                let emails = Repository::<dyn app::repos::Emails<C>>::builder("emails")
                    .binding(1, Arc::new(V1))
                    .binding(2, Arc::new(V1))
                    .build()
                    .unwrap();
                let err = kit
                    .transition(2)
                    .unwrap()
                    .check(&emails, |r, s| {
                        let id = s.repo(&accounts).unwrap().create(s.conn(), "Test", "User", "t@example.com")?;
                        r.primary(s.conn(), id).map(drop)
                    })
                    .unwrap_err();
                assert!(
                    matches!(&err, Failure::Binding { binding, at, .. } if binding.get() == 2 && at.stage == Stage::Contracted),
                    "{err}"
                );
                assert!(err.to_string().contains("version 2 binding failed on a database at version 2 contracted"), "{err}");
            }

            #[test]
            fn new_columns_are_filled_for_old_writers_and_not_null_after_contract() {
                let Some(kit) = kit("new_columns_are_filled", app_catalog()) else { return };
                let change = kit.transition(3).unwrap();
                let expanded = change.fresh_at(Stage::Expanded).unwrap();
                let repos = B::repos(2..=3).unwrap();
                let v2 = tandem::Version::new(2).unwrap();
                // Version 2 code writes name only: the trigger and the default fill the rest.
                let id = expanded.run(&repos.accounts, v2, |r, s| r.create(s.conn(), "Ken", "Thompson", "k@x")).unwrap();
                let mut conn = expanded.handle().connection().unwrap();
                let filled = count(
                    &mut conn,
                    &format!("SELECT COUNT(*) AS n FROM accounts WHERE id = {id} AND first_name = 'Ken' AND last_name = 'Thompson' AND plan = 'free'"),
                );
                assert_eq!(filled, 1);
                drop(conn);
                let contracted = change.fresh_at(Stage::Contracted).unwrap();
                let mut conn = contracted.handle().connection().unwrap();
                for bad in [
                    "INSERT INTO accounts (first_name, last_name) VALUES (NULL, 'x')",
                    "INSERT INTO accounts (first_name, last_name, plan) VALUES ('x', 'y', NULL)",
                ] {
                    let err = diesel::sql_query(bad).execute(&mut conn).unwrap_err();
                    assert!(err.to_string().contains("null") || err.to_string().contains("NULL"), "{bad}: {err}");
                }
                diesel::sql_query("INSERT INTO accounts (first_name, last_name) VALUES ('x', 'y')").execute(&mut conn).unwrap();
                assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM accounts WHERE plan = 'free'"), 1, "the default fills plan");
            }
        }
    };
}

fn sqlite_kit(_test: &str, catalog: Catalog) -> Option<Kit<tandem::Sqlite>> {
    Some(Kit::sqlite(catalog))
}

two_versions_suite!(
    sqlite,
    tandem::Sqlite,
    sqlite_kit,
    app::catalog,
    |b| b,
    "",
    Stage::SwitchedBack
);
two_versions_suite!(
    sqlite_sql,
    tandem::Sqlite,
    sqlite_kit,
    app::catalog_sql,
    <tandem::Sqlite as AppBackend>::configure,
    "sql_",
    Stage::Switched
);

#[cfg(feature = "postgres")]
fn pg_kit(test: &str, catalog: Catalog) -> Option<Kit<tandem::Postgres>> {
    Some(Kit::postgres(&common::pg::server(test)?, catalog))
}

#[cfg(feature = "postgres")]
two_versions_suite!(
    postgres,
    tandem::Postgres,
    pg_kit,
    app::catalog,
    |b| b,
    "",
    Stage::SwitchedBack
);
#[cfg(feature = "postgres")]
two_versions_suite!(
    postgres_sql,
    tandem::Postgres,
    pg_kit,
    app::catalog_sql,
    <tandem::Postgres as AppBackend>::configure,
    "sql_",
    Stage::Switched
);
