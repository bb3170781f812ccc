//! The service's repository traits and their bindings, one per schema
//! version, for SQLite and PostgreSQL connections.

use diesel::prelude::*;
use diesel::QueryResult;

use super::schema::{v1, v2, v3};

/// An account as the service shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub id: i64,
    pub first_name: String,
    pub last_name: String,
}

impl Profile {
    /// An account of versions 1 and 2, which keep one name.
    pub fn from_name(id: i64, name: &str) -> Profile {
        let (first_name, last_name) = split_name(name);
        Profile {
            id,
            first_name,
            last_name,
        }
    }

    /// The name as one string: the parts joined by a space (none when the
    /// last name is empty). Version 3's sync trigger joins them the same way.
    pub fn display_name(&self) -> String {
        join_name(&self.first_name, &self.last_name)
    }
}

/// Joins name parts as the version 3 triggers do.
pub fn join_name(first: &str, last: &str) -> String {
    if last.is_empty() {
        first.to_owned()
    } else {
        format!("{first} {last}")
    }
}

/// Splits a name at its first space, as the version 3 triggers do.
pub fn split_name(name: &str) -> (String, String) {
    match name.split_once(' ') {
        Some((first, last)) => (first.to_owned(), last.to_owned()),
        None => (name.to_owned(), String::new()),
    }
}

/// Accounts: every version.
pub trait Accounts<C>: Send + Sync {
    /// Creates an account with its primary email; returns its id.
    fn create(&self, c: &mut C, first: &str, last: &str, email: &str) -> QueryResult<i64>;
    fn profile(&self, c: &mut C, id: i64) -> QueryResult<Option<Profile>>;
    fn rename(&self, c: &mut C, id: i64, first: &str, last: &str) -> QueryResult<()>;
}

/// The primary email: every version.
pub trait Emails<C>: Send + Sync {
    fn primary(&self, c: &mut C, id: i64) -> QueryResult<Option<String>>;
    fn set_primary(&self, c: &mut C, id: i64, email: &str) -> QueryResult<()>;
    /// Every address, primary first.
    fn all(&self, c: &mut C, id: i64) -> QueryResult<Vec<String>>;
}

/// More addresses per account: version 2 and later.
pub trait Addresses<C>: Send + Sync {
    fn add(&self, c: &mut C, id: i64, email: &str) -> QueryResult<()>;
}

/// Plans: version 3 and later.
pub trait Plans<C>: Send + Sync {
    fn plan(&self, c: &mut C, id: i64) -> QueryResult<Option<String>>;
    fn set_plan(&self, c: &mut C, id: i64, plan: &str) -> QueryResult<()>;
}

/// What the bindings need from a connection beyond diesel's DSL.
pub trait WriteConn: Connection {
    /// A write transaction (SQLite: `BEGIN IMMEDIATE`, so it never has to
    /// upgrade a read lock; inside a unit of work it is a savepoint).
    fn write<T>(&mut self, f: impl FnOnce(&mut Self) -> QueryResult<T>) -> QueryResult<T>;
    /// Locks the account row before any `account_emails` row. PostgreSQL
    /// writers of every version must lock the two tables in one order, or a
    /// version 1 writer (accounts, then the trigger's account_emails) and a
    /// version 2 writer (account_emails, then the trigger's accounts) can
    /// deadlock. SQLite has one writer at a time: nothing to do.
    fn lock_account(&mut self, id: i64) -> QueryResult<()>;
}

impl WriteConn for SqliteConnection {
    fn write<T>(&mut self, f: impl FnOnce(&mut Self) -> QueryResult<T>) -> QueryResult<T> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        // `immediate_transaction` does not nest: inside a unit of work (already
        // `BEGIN IMMEDIATE`) a savepoint does.
        let depth =
            AnsiTransactionManager::transaction_manager_status_mut(self).transaction_depth()?;
        if depth.is_some() {
            self.transaction(f)
        } else {
            self.immediate_transaction(f)
        }
    }
    fn lock_account(&mut self, _id: i64) -> QueryResult<()> {
        Ok(())
    }
}

#[cfg(feature = "postgres")]
impl WriteConn for PgConnection {
    fn write<T>(&mut self, f: impl FnOnce(&mut Self) -> QueryResult<T>) -> QueryResult<T> {
        self.transaction(f)
    }
    fn lock_account(&mut self, id: i64) -> QueryResult<()> {
        use v2::accounts::dsl;
        dsl::accounts
            .find(id)
            .select(dsl::id)
            .for_update()
            .first::<i64>(self)
            .optional()?;
        Ok(())
    }
}

pub struct V1;
pub struct V2;
pub struct V3;

/// The bindings for one connection type (diesel's DSL is the same for both
/// backends here; the queries are checked against each version's tables).
macro_rules! bindings {
    ($conn:ty) => {
        impl Accounts<$conn> for V1 {
            fn create(
                &self,
                c: &mut $conn,
                first: &str,
                last: &str,
                email: &str,
            ) -> QueryResult<i64> {
                use v1::accounts::dsl;
                diesel::insert_into(dsl::accounts)
                    .values((dsl::name.eq(join_name(first, last)), dsl::email.eq(email)))
                    .returning(dsl::id)
                    .get_result(c)
            }
            fn profile(&self, c: &mut $conn, id: i64) -> QueryResult<Option<Profile>> {
                use v1::accounts::dsl;
                let name: Option<String> = dsl::accounts
                    .find(id)
                    .select(dsl::name)
                    .first(c)
                    .optional()?;
                Ok(name.map(|n| Profile::from_name(id, &n)))
            }
            fn rename(&self, c: &mut $conn, id: i64, first: &str, last: &str) -> QueryResult<()> {
                use v1::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set(dsl::name.eq(join_name(first, last)))
                    .execute(c)?;
                Ok(())
            }
        }

        impl Emails<$conn> for V1 {
            fn primary(&self, c: &mut $conn, id: i64) -> QueryResult<Option<String>> {
                use v1::accounts::dsl;
                let email: Option<String> = dsl::accounts
                    .find(id)
                    .select(dsl::email)
                    .first(c)
                    .optional()?;
                Ok(email.filter(|e| !e.is_empty()))
            }
            fn set_primary(&self, c: &mut $conn, id: i64, email: &str) -> QueryResult<()> {
                use v1::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set(dsl::email.eq(email))
                    .execute(c)?;
                Ok(())
            }
            fn all(&self, c: &mut $conn, id: i64) -> QueryResult<Vec<String>> {
                Ok(self.primary(c, id)?.into_iter().collect())
            }
        }

        impl Accounts<$conn> for V2 {
            fn create(
                &self,
                c: &mut $conn,
                first: &str,
                last: &str,
                email: &str,
            ) -> QueryResult<i64> {
                use v2::{account_emails as e, accounts as a};
                c.write(|c| {
                    let id = diesel::insert_into(a::table)
                        .values(a::name.eq(join_name(first, last)))
                        .returning(a::id)
                        .get_result(c)?;
                    diesel::insert_into(e::table)
                        .values((
                            e::account_id.eq(id),
                            e::email.eq(email),
                            e::is_primary.eq(true),
                        ))
                        .execute(c)?;
                    Ok(id)
                })
            }
            fn profile(&self, c: &mut $conn, id: i64) -> QueryResult<Option<Profile>> {
                use v2::accounts::dsl;
                let name: Option<String> = dsl::accounts
                    .find(id)
                    .select(dsl::name)
                    .first(c)
                    .optional()?;
                Ok(name.map(|n| Profile::from_name(id, &n)))
            }
            fn rename(&self, c: &mut $conn, id: i64, first: &str, last: &str) -> QueryResult<()> {
                use v2::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set(dsl::name.eq(join_name(first, last)))
                    .execute(c)?;
                Ok(())
            }
        }

        impl Emails<$conn> for V2 {
            fn primary(&self, c: &mut $conn, id: i64) -> QueryResult<Option<String>> {
                use v2::account_emails::dsl;
                dsl::account_emails
                    .filter(dsl::account_id.eq(id).and(dsl::is_primary.eq(true)))
                    .select(dsl::email)
                    .first(c)
                    .optional()
            }
            fn set_primary(&self, c: &mut $conn, id: i64, email: &str) -> QueryResult<()> {
                use v2::account_emails::dsl;
                c.write(|c| {
                    c.lock_account(id)?;
                    let mine = dsl::account_emails
                        .filter(dsl::account_id.eq(id).and(dsl::is_primary.eq(true)));
                    if diesel::update(mine).set(dsl::email.eq(email)).execute(c)? == 0 {
                        diesel::insert_into(dsl::account_emails)
                            .values((
                                dsl::account_id.eq(id),
                                dsl::email.eq(email),
                                dsl::is_primary.eq(true),
                            ))
                            .execute(c)?;
                    }
                    Ok(())
                })
            }
            fn all(&self, c: &mut $conn, id: i64) -> QueryResult<Vec<String>> {
                use v2::account_emails::dsl;
                dsl::account_emails
                    .filter(dsl::account_id.eq(id))
                    .order((dsl::is_primary.desc(), dsl::id))
                    .select(dsl::email)
                    .load(c)
            }
        }

        impl Addresses<$conn> for V2 {
            fn add(&self, c: &mut $conn, id: i64, email: &str) -> QueryResult<()> {
                use v2::account_emails::dsl;
                c.write(|c| {
                    c.lock_account(id)?;
                    diesel::insert_into(dsl::account_emails)
                        .values((
                            dsl::account_id.eq(id),
                            dsl::email.eq(email),
                            dsl::is_primary.eq(false),
                        ))
                        .execute(c)?;
                    Ok(())
                })
            }
        }

        impl Accounts<$conn> for V3 {
            fn create(
                &self,
                c: &mut $conn,
                first: &str,
                last: &str,
                email: &str,
            ) -> QueryResult<i64> {
                use v3::{account_emails as e, accounts as a};
                c.write(|c| {
                    let id = diesel::insert_into(a::table)
                        .values((a::first_name.eq(first), a::last_name.eq(last)))
                        .returning(a::id)
                        .get_result(c)?;
                    diesel::insert_into(e::table)
                        .values((
                            e::account_id.eq(id),
                            e::email.eq(email),
                            e::is_primary.eq(true),
                        ))
                        .execute(c)?;
                    Ok(id)
                })
            }
            fn profile(&self, c: &mut $conn, id: i64) -> QueryResult<Option<Profile>> {
                use v3::accounts::dsl;
                let parts: Option<(String, String)> = dsl::accounts
                    .find(id)
                    .select((dsl::first_name, dsl::last_name))
                    .first(c)
                    .optional()?;
                Ok(parts.map(|(first_name, last_name)| Profile {
                    id,
                    first_name,
                    last_name,
                }))
            }
            fn rename(&self, c: &mut $conn, id: i64, first: &str, last: &str) -> QueryResult<()> {
                use v3::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set((dsl::first_name.eq(first), dsl::last_name.eq(last)))
                    .execute(c)?;
                Ok(())
            }
        }

        impl Plans<$conn> for V3 {
            fn plan(&self, c: &mut $conn, id: i64) -> QueryResult<Option<String>> {
                use v3::accounts::dsl;
                dsl::accounts.find(id).select(dsl::plan).first(c).optional()
            }
            fn set_plan(&self, c: &mut $conn, id: i64, plan: &str) -> QueryResult<()> {
                use v3::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set(dsl::plan.eq(plan))
                    .execute(c)?;
                Ok(())
            }
        }
    };
}

bindings!(SqliteConnection);
#[cfg(feature = "postgres")]
bindings!(PgConnection);
