//! The demo application's repository, shared by the examples and the tests:
//! accounts whose email moves from `accounts.email` (version 1) to its own
//! `account_emails` table keyed by account (version 2), one binding per
//! version.

use std::sync::Arc;

use diesel::prelude::*;
use tandem::{Backend, Repository};

/// Version 1: the email lives in `accounts`.
pub mod v1 {
    diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }
}

/// Version 2: the email lives in `account_emails`.
pub mod v2 {
    diesel::table! { accounts (id) { id -> BigInt, name -> Text, } }
    diesel::table! { account_emails (account_id) { account_id -> BigInt, email -> Text, } }
}

mod meta {
    diesel::table! { tandem_state (id) { id -> BigInt, version -> BigInt, } }
}
use meta::tandem_state;

/// The application's repository, over the connection type `C` of a backend:
/// one implementation per schema version.
pub trait Accounts<C>: Send + Sync {
    /// The schema version this binding was written for.
    fn version(&self) -> u32;
    fn create(&self, conn: &mut C, name: &str, email: &str) -> tandem::Result<i64>;
    fn email(&self, conn: &mut C, id: i64) -> tandem::Result<Option<String>>;
    fn set_email(&self, conn: &mut C, id: i64, email: &str) -> tandem::Result<()>;
    /// The live version as the state row says (for the demo's own check).
    fn live(&self, conn: &mut C) -> tandem::Result<i64>;
}

pub struct AccountsV1;
pub struct AccountsV2;

/// The bindings, written once: the diesel DSL used here works on SQLite and
/// PostgreSQL alike.
macro_rules! bindings {
    ($conn:ty) => {
        impl Accounts<$conn> for AccountsV1 {
            fn version(&self) -> u32 {
                1
            }
            fn create(&self, conn: &mut $conn, name: &str, email: &str) -> tandem::Result<i64> {
                use v1::accounts::dsl;
                Ok(diesel::insert_into(dsl::accounts)
                    .values((dsl::name.eq(name), dsl::email.eq(email)))
                    .returning(dsl::id)
                    .get_result(conn)?)
            }
            fn email(&self, conn: &mut $conn, id: i64) -> tandem::Result<Option<String>> {
                use v1::accounts::dsl;
                Ok(dsl::accounts
                    .find(id)
                    .select(dsl::email)
                    .first(conn)
                    .optional()?)
            }
            fn set_email(&self, conn: &mut $conn, id: i64, email: &str) -> tandem::Result<()> {
                use v1::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set(dsl::email.eq(email))
                    .execute(conn)?;
                Ok(())
            }
            fn live(&self, conn: &mut $conn) -> tandem::Result<i64> {
                Ok(tandem_state::table
                    .select(tandem_state::version)
                    .first(conn)?)
            }
        }

        impl Accounts<$conn> for AccountsV2 {
            fn version(&self) -> u32 {
                2
            }
            fn create(&self, conn: &mut $conn, name: &str, email: &str) -> tandem::Result<i64> {
                use v2::{account_emails as e, accounts as a};
                // Two inserts, atomic: a savepoint inside the caller's unit of work.
                Ok(conn.transaction(|conn| {
                    let id: i64 = diesel::insert_into(a::table)
                        .values(a::name.eq(name))
                        .returning(a::id)
                        .get_result(conn)?;
                    diesel::insert_into(e::table)
                        .values((e::account_id.eq(id), e::email.eq(email)))
                        .execute(conn)?;
                    QueryResult::Ok(id)
                })?)
            }
            fn email(&self, conn: &mut $conn, id: i64) -> tandem::Result<Option<String>> {
                use v2::account_emails::dsl;
                Ok(dsl::account_emails
                    .find(id)
                    .select(dsl::email)
                    .first(conn)
                    .optional()?)
            }
            fn set_email(&self, conn: &mut $conn, id: i64, email: &str) -> tandem::Result<()> {
                use v2::{account_emails as e, accounts as a};
                // Touch the parent row first: every writer then locks accounts
                // before account_emails (the reverse-sync trigger updates
                // accounts), so the contract's DDL can take both tables
                // without a lock-order cycle.
                diesel::update(a::table.find(id))
                    .set(a::id.eq(id))
                    .execute(conn)?;
                diesel::insert_into(e::table)
                    .values((e::account_id.eq(id), e::email.eq(email)))
                    .on_conflict(e::account_id)
                    .do_update()
                    .set(e::email.eq(email))
                    .execute(conn)?;
                Ok(())
            }
            fn live(&self, conn: &mut $conn) -> tandem::Result<i64> {
                Ok(tandem_state::table
                    .select(tandem_state::version)
                    .first(conn)?)
            }
        }
    };
}

bindings!(diesel::SqliteConnection);
#[cfg(feature = "postgres")]
bindings!(diesel::PgConnection);

/// The repository with both bindings, for backend `B`.
pub fn repository<B: Backend>(
) -> Result<Arc<Repository<dyn Accounts<B::Connection>>>, tandem::Error>
where
    AccountsV1: Accounts<B::Connection>,
    AccountsV2: Accounts<B::Connection>,
{
    Ok(Arc::new(
        Repository::<dyn Accounts<B::Connection>>::builder("accounts")
            .binding(1, Arc::new(AccountsV1))
            .binding(2, Arc::new(AccountsV2))
            .build()?,
    ))
}
