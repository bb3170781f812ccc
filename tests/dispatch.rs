//! Dispatch: each call runs the binding of the live version; units of work
//! span repositories with one version; bad versions fail before any query.

mod common;

use std::sync::Arc;

use common::{per_backend, AccountsOn, AccountsV1, Kit};
use diesel::prelude::*;
use tandem::{Backend, Catalog, Error, Repository, Session, Sqlite, Tandem, Version};

/// The connection type of kit `K`'s backend.
type Conn<K> = <<K as Kit>::B as Backend>::Connection;

/// A second repository whose table did not change between versions 1 and 2:
/// one binding serves both.
trait Names<C>: Send + Sync {
    fn rename(&self, conn: &mut C, id: i64, name: &str) -> tandem::Result<()>;
    fn name(&self, conn: &mut C, id: i64) -> tandem::Result<Option<String>>;
    fn count(&self, conn: &mut C) -> tandem::Result<i64>;
}
struct NamesAnyVersion;
diesel::table! { accounts (id) { id -> BigInt, name -> Text, } }

/// The binding, once per connection type (diesel checks each).
macro_rules! names_on {
    ($conn:ty) => {
        impl Names<$conn> for NamesAnyVersion {
            fn rename(&self, conn: &mut $conn, id: i64, name: &str) -> tandem::Result<()> {
                diesel::update(accounts::table.find(id))
                    .set(accounts::name.eq(name))
                    .execute(conn)?;
                Ok(())
            }
            fn name(&self, conn: &mut $conn, id: i64) -> tandem::Result<Option<String>> {
                Ok(accounts::table
                    .find(id)
                    .select(accounts::name)
                    .first(conn)
                    .optional()?)
            }
            fn count(&self, conn: &mut $conn) -> tandem::Result<i64> {
                Ok(accounts::table.count().get_result(conn)?)
            }
        }
    };
}
names_on!(SqliteConnection);
#[cfg(feature = "postgres")]
names_on!(PgConnection);

fn names<C: 'static>() -> Repository<dyn Names<C>>
where
    NamesAnyVersion: Names<C>,
{
    Repository::<dyn Names<C>>::builder("names")
        .bindings(1..=2, Arc::new(NamesAnyVersion))
        .build()
        .unwrap()
}

fn each_call_runs_the_live_versions_binding<K: Kit>()
where
    NamesAnyVersion: Names<Conn<K>>,
    AccountsV1: AccountsOn<Conn<K>>,
{
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    let repo = K::repo();
    let which = |db: &Tandem<K::B>| {
        db.call(&repo, |r, s| {
            Ok::<_, Error>((r.version(), s.version().get(), K::live(s.conn())))
        })
        .unwrap()
    };
    assert_eq!(which(&db), (1, 1, 1));
    let id = db
        .call(&repo, |r, s| r.create(s.conn(), "ada", "ada@x"))
        .unwrap();
    db.upgrader().expand().unwrap();
    assert_eq!(
        which(&db),
        (1, 1, 1),
        "expand does not change the live version"
    );
    db.upgrader().switch().unwrap();
    assert_eq!(which(&db), (2, 2, 2));
    // Data written through v1 before the switch reads the same through v2.
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), id))
            .unwrap()
            .as_deref(),
        Some("ada@x")
    );
}

fn a_unit_of_work_spans_repositories_with_one_version_and_rolls_back_as_one<K: Kit>()
where
    NamesAnyVersion: Names<Conn<K>>,
    AccountsV1: AccountsOn<Conn<K>>,
{
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    let (acc, nam) = (K::repo(), names::<Conn<K>>());
    let id = db
        .unit_of_work(|s| -> tandem::Result<i64> {
            let id = s.repo(&acc)?.create(s.conn(), "grace", "grace@x")?;
            s.repo(&nam)?.rename(s.conn(), id, "Grace Hopper")?;
            Ok(id)
        })
        .unwrap();
    assert_eq!(
        db.call(&nam, |r, s| r.name(s.conn(), id))
            .unwrap()
            .as_deref(),
        Some("Grace Hopper")
    );

    // A failing unit of work leaves nothing behind.
    let err = db
        .unit_of_work(|s| -> tandem::Result<()> {
            let id = s.repo(&acc)?.create(s.conn(), "ghost", "ghost@x")?;
            s.repo(&nam)?.rename(s.conn(), id, "still a ghost")?;
            Err(Error::InvalidVersion {
                value: 0,
                context: "deliberate failure",
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidVersion { .. }));
    let count: i64 = db.call(&nam, |r, s| r.count(s.conn())).unwrap();
    assert_eq!(count, 1, "the failed unit of work was rolled back");
}

fn version_gate_follows_the_calls_version<K: Kit>()
where
    NamesAnyVersion: Names<Conn<K>>,
    AccountsV1: AccountsOn<Conn<K>>,
{
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    let gate = |s: &mut Session<'_, K::B>| (s.at_least(2), s.version());
    let (on, v) = db.unit_of_work(|s| Ok::<_, Error>(gate(s))).unwrap();
    assert!(!on);
    assert_eq!(v.get(), 1);
    db.upgrader().upgrade_to(2).unwrap();
    let (on, v) = db.unit_of_work(|s| Ok::<_, Error>(gate(s))).unwrap();
    assert!(on);
    assert_eq!(v.get(), 2);
}

fn missing_bindings_fail_before_any_query<K: Kit>()
where
    NamesAnyVersion: Names<Conn<K>>,
    AccountsV1: AccountsOn<Conn<K>>,
{
    let Some((_d, url)) = K::fresh() else { return };
    let db = K::open(&url);
    db.upgrader().upgrade_to(2).unwrap();
    let only_v1 = Repository::<dyn AccountsOn<Conn<K>>>::builder("old accounts")
        .binding(1, Arc::new(AccountsV1))
        .build()
        .unwrap();
    let mut ran = false;
    let err = db
        .call(&only_v1, |_, _| {
            ran = true;
            Ok::<_, Error>(())
        })
        .unwrap_err();
    assert!(!ran);
    match &err {
        Error::NoBinding {
            repository,
            live,
            first,
            last,
        } => {
            assert_eq!(
                (repository.as_str(), live.get(), first.get(), last.get()),
                ("old accounts", 2, 1, 1)
            );
        }
        other => panic!("expected NoBinding, got {other:?}"),
    }
    assert!(
        err.to_string().contains("register a binding for version 2"),
        "{err}"
    );
}

fn a_binary_that_does_not_serve_the_live_version_gets_typed_errors<K: Kit>()
where
    NamesAnyVersion: Names<Conn<K>>,
    AccountsV1: AccountsOn<Conn<K>>,
{
    let Some((_d, url)) = K::fresh() else { return };
    drop(K::open(&url)); // database at version 1
    let newer_only = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(2..=2)
        .open()
        .unwrap();
    let mut ran = false;
    let err = newer_only
        .unit_of_work(|_| {
            ran = true;
            Ok::<_, Error>(())
        })
        .unwrap_err();
    assert!(!ran);
    assert!(
        matches!(err, Error::Upgrading { live, first, last } if (live.get(), first.get(), last.get()) == (1, 2, 2)),
        "{err:?}"
    );
    // Upgrading makes it servable, at once.
    newer_only.upgrader().upgrade_to(2).unwrap();
    newer_only
        .unit_of_work(|s| {
            assert_eq!(s.version().get(), 2);
            Ok::<_, Error>(())
        })
        .unwrap();
}

fn serving_beyond_the_catalog_is_refused<K: Kit>()
where
    NamesAnyVersion: Names<Conn<K>>,
    AccountsV1: AccountsOn<Conn<K>>,
{
    let Some((_d, url)) = K::fresh() else { return };
    let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=3)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::ServedBeyondCatalog { .. }), "{err:?}");
    let err = Tandem::<K::B>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .serves(0..=1)
        .open()
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidVersion { value: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tandem<Sqlite>>();
    check::<Repository<common::Accounts>>();
    check::<Error>();
    check::<Catalog>();
    check::<Version>();
    check::<tandem::State>();
    check::<tandem::HistoryEntry>();
    check::<tandem::PhaseReport>();
    check::<tandem::WriterPolicy>();
}

per_backend!(
    each_call_runs_the_live_versions_binding,
    a_unit_of_work_spans_repositories_with_one_version_and_rolls_back_as_one,
    version_gate_follows_the_calls_version,
    missing_bindings_fail_before_any_query,
    a_binary_that_does_not_serve_the_live_version_gets_typed_errors,
    serving_beyond_the_catalog_is_refused,
);
