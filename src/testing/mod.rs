//! A test kit for versioned changes (feature `testing`): bring a fresh
//! database to each state of the transition from version N-1 to N and run
//! each repository binding where it must work.
//!
//! A change from N-1 to N passes through four states, and during a rolling
//! deploy (or a rollback of binaries before contract) both bindings meet
//! them:
//!
//! | state                  | N-1 binding must work | N binding must work |
//! |------------------------|:---------------------:|:-------------------:|
//! | N-1 stable             | yes                   |                     |
//! | N expanded             | yes                   |                     |
//! | N switched             | yes (rollback)\*      | yes                 |
//! | N contracted           |                       | yes                 |
//!
//! \* After a [`switch_back`](crate::Upgrader::switch_back) where the
//! version has switch SQL (a rename run at the switch, as a
//! [change file](crate::change) writes it): no N-1 call runs on the switched
//! schema itself, since every N-1 call drains before the switch and every
//! call after it runs N ([`Stage::SwitchedBack`]).
//!
//! [`Transition::check`] runs a test closure with each binding in each state
//! where it must work, on a fresh database per state. The continuity checks
//! walk one database through the states: [`Transition::forward`] (data
//! written through N-1 before the switch reads the same through N after the
//! switch and after contract) and [`Transition::backward`] (data written
//! through N after the switch reads the same through N-1 until contract, and
//! after a [`switch_back`](crate::Upgrader::switch_back)).
//!
//! Bindings run directly on a pooled connection with a [`Session`] of their
//! own version, as an instance of that binary would run them; the kit's
//! handle serves every version and runs the upgrader. A failure is a
//! [`Failure`] naming the binding's version, the state and the database
//! error, with what to fix.
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! use std::sync::Arc;
//! use diesel::prelude::*;
//! use tandem::testing::Kit;
//! use tandem::Repository;
//!
//! trait Emails: Send + Sync {
//!     fn create(&self, c: &mut SqliteConnection, name: &str, email: &str) -> QueryResult<i64>;
//!     fn email(&self, c: &mut SqliteConnection, id: i64) -> QueryResult<String>;
//! }
//! struct V1;
//! impl Emails for V1 {
//!     fn create(&self, c: &mut SqliteConnection, name: &str, email: &str) -> QueryResult<i64> {
//!         diesel::sql_query("INSERT INTO accounts (name, email) VALUES (?, ?)")
//!             .bind::<diesel::sql_types::Text, _>(name)
//!             .bind::<diesel::sql_types::Text, _>(email)
//!             .execute(c)?;
//!         diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("last_insert_rowid()")).get_result(c)
//!     }
//!     fn email(&self, c: &mut SqliteConnection, id: i64) -> QueryResult<String> {
//!         diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(&format!(
//!             "(SELECT email FROM accounts WHERE id = {id})"
//!         )))
//!         .get_result(c)
//!     }
//! }
//! struct V2;
//! impl Emails for V2 {
//!     fn create(&self, c: &mut SqliteConnection, name: &str, email: &str) -> QueryResult<i64> {
//!         // Not `V1.create`: `accounts.email` is gone after contract (the kit says so).
//!         diesel::sql_query("INSERT INTO accounts (name) VALUES (?)")
//!             .bind::<diesel::sql_types::Text, _>(name)
//!             .execute(c)?;
//!         let id = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("last_insert_rowid()")).get_result(c)?;
//!         diesel::sql_query("INSERT INTO account_emails (account_id, email) VALUES (?, ?)")
//!             .bind::<diesel::sql_types::BigInt, _>(id)
//!             .bind::<diesel::sql_types::Text, _>(email)
//!             .execute(c)?;
//!         Ok(id)
//!     }
//!     fn email(&self, c: &mut SqliteConnection, id: i64) -> QueryResult<String> {
//!         diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(&format!(
//!             "(SELECT email FROM account_emails WHERE account_id = {id})"
//!         )))
//!         .get_result(c)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emails = Repository::<dyn Emails>::builder("emails")
//!     .binding(1, Arc::new(V1))
//!     .binding(2, Arc::new(V2))
//!     .build()?;
//! // The demo catalog: version 2 moves `accounts.email` into `account_emails`.
//! let kit = Kit::sqlite_in_memory(tandem::testing::demo::catalog()?)
//!     .configure(|b| b.backfill(2, "copy emails", tandem::testing::demo::backfill_emails));
//! let change = kit.transition(2)?;
//!
//! // Each binding, in each state where it must work.
//! let ran = change.check(&emails, |repo, s| {
//!     let id = repo.create(s.conn(), "ada", "ada@example.com")?;
//!     assert_eq!(repo.email(s.conn(), id)?, "ada@example.com");
//!     Ok::<_, diesel::result::Error>(())
//! })?;
//! assert_eq!(ran.len(), 5);
//!
//! // Continuity across the switch, both ways: what one binding wrote, the
//! // other reads the same.
//! change.forward(
//!     &emails,
//!     |repo, s| repo.create(s.conn(), "grace", "grace@example.com"),
//!     |repo, s, id| repo.email(s.conn(), *id),
//! )?;
//! change.backward(
//!     &emails,
//!     |repo, s| repo.create(s.conn(), "alan", "alan@example.com"),
//!     |repo, s, id| repo.email(s.conn(), *id),
//! )?;
//! # Ok(()) }
//! # main().unwrap();
//! # }
//! ```

pub mod demo;
pub mod faults;

use std::fmt;
use std::marker::PhantomData;
#[cfg(feature = "postgres")]
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::dispatch::{Repository, Session};
use crate::error::Error;
use crate::handle::{Builder, Tandem};
use crate::version::Version;

/// The error a test closure returns, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A state of the transition from version N-1 to N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// N-1 is live and contracted: the state before the change.
    PreviousStable,
    /// N's expand has run (and its backfills); N-1 is still live.
    Expanded,
    /// N is live; N-1's structures are still there (binaries can roll back).
    Switched,
    /// N's contract has run: only N's structures remain.
    Contracted,
    /// N was live and has been switched back: N-1 is live again on N's
    /// expanded schema (binaries rolled back before contract). Where a
    /// version has switch SQL (a rename that runs at the switch), this is
    /// where the N-1 binding's rollback is checked instead of
    /// [`Switched`](Stage::Switched). Not in [`Stage::ALL`], the forward path.
    SwitchedBack,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 4] = [
        Stage::PreviousStable,
        Stage::Expanded,
        Stage::Switched,
        Stage::Contracted,
    ];

    /// Which bindings must work in this stage, for the change to `to`.
    pub fn bindings(self, to: Version) -> Vec<Version> {
        let previous = to.previous().unwrap_or(to);
        match self {
            Stage::PreviousStable | Stage::Expanded | Stage::SwitchedBack => vec![previous],
            Stage::Switched => vec![previous, to],
            Stage::Contracted => vec![to],
        }
    }
}

/// A stage of the change to a version, for messages: "version 2 expanded".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// The stage.
    pub stage: Stage,
    /// The version the change moves to (N).
    pub to: Version,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous = self.to.previous().unwrap_or(self.to);
        match self.stage {
            Stage::PreviousStable => write!(f, "version {previous} stable"),
            Stage::Expanded => write!(f, "version {} expanded", self.to),
            Stage::Switched => write!(f, "version {} switched", self.to),
            Stage::Contracted => write!(f, "version {} contracted", self.to),
            Stage::SwitchedBack => write!(f, "version {} switched back", self.to),
        }
    }
}

/// What went wrong in a kit check. Each names the binding's version, the
/// state of the database and the cause, with what to fix.
///
/// `Debug` prints the same text as `Display`: a test or `main` that returns
/// `Result<(), Box<dyn Error>>` shows the whole explanation, not a struct
/// dump. Match on the variants to inspect the parts.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// A fresh database could not be brought to the state: the catalog's
    /// own SQL (or a backfill) fails, before any binding ran.
    #[error("could not bring a fresh database to {at} while running {step}: {source}; fix that phase of the catalog (it fails without any application code)")]
    Setup {
        /// The state it was being brought to.
        at: At,
        /// The step that failed ("open", "expand", "switch", …).
        step: &'static str,
        /// The error.
        #[source]
        source: Error,
    },

    /// A binding failed in a state where it must work.
    #[error("the version {binding} binding failed on a database at {at}: {source}; {hint}", hint = hint(*binding, *at))]
    Binding {
        /// The binding's version.
        binding: Version,
        /// The state of the database.
        at: At,
        /// The error the test closure returned (often the database error).
        #[source]
        source: BoxError,
    },

    /// Data read back differently than it was written.
    #[error(
        "data written through the version {written_by} binding at {written_at} reads differently through the \
         version {read_by} binding at {read_at}: expected {expected}, got {got}; {hint}",
        hint = continuity_hint(*written_by, *read_by)
    )]
    Mismatch {
        /// The binding that wrote it.
        written_by: Version,
        /// Where it was written.
        written_at: At,
        /// The binding that read it.
        read_by: Version,
        /// Where it was read.
        read_at: At,
        /// What the writing binding read back right after writing (`Debug`).
        expected: String,
        /// What the reading binding saw (`Debug`).
        got: String,
    },

    /// The change cannot be tested: no version N-1, or N beyond the catalog.
    #[error("cannot test the change to version {to}: {reason}")]
    BadTransition {
        /// The requested version.
        to: u32,
        /// Why.
        reason: String,
    },

    /// The version's SQL breaks a rule of the phase-aware lint
    /// ([`Catalog::lint`]) on the kit's backend: found before any
    /// database is opened.
    #[error(
        "version {to}'s SQL breaks {} rule(s) of a zero-downtime change on {backend}:\n{}",
        findings.len(),
        findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    )]
    Lint {
        /// The version under test.
        to: Version,
        /// The backend the SQL was read as (`Backend::NAME`).
        backend: &'static str,
        /// What the lint found, each with the file, line, rule and what to write instead.
        findings: Vec<crate::lint::Finding>,
    },

    /// A repository under test lacks a binding the state needs.
    #[error("repository `{repository}` has no binding for version {binding}, which must work at {at}; register one")]
    MissingBinding {
        /// The repository.
        repository: String,
        /// The version it lacks.
        binding: Version,
        /// Where it was needed.
        at: At,
    },
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hint(binding: Version, at: At) -> String {
    match (at.stage, binding == at.to) {
        (Stage::Expanded, false) => format!(
            "expand of version {} must be additive, because old binaries keep running on an expanded database: \
             add tables and nullable or defaulted columns, keep old columns filled (sync triggers, backfill), \
             and leave drops, renames and NOT NULL constraints to contract",
            at.to
        ),
        (Stage::SwitchedBack, false) => format!(
            "binaries can roll back until contract, so version {binding}'s structures must work again after a \
             switch back: switch_back.sql must undo switch.sql"
        ),
        (Stage::Switched, false) => format!(
            "binaries can roll back until contract, so version {binding}'s structures must still work after the \
             switch: move drops to contract and keep old columns in sync with triggers both ways"
        ),
        (Stage::PreviousStable, _) => format!(
            "this is the version {binding} binding on its own schema: the binding or the catalog up to \
             version {binding} is wrong"
        ),
        _ => format!(
            "the version {binding} binding must match the schema left by {at}: check its `table!` module \
             against the catalog's expand, switch and contract of version {}",
            at.to
        ),
    }
}

fn continuity_hint(written_by: Version, read_by: Version) -> &'static str {
    if written_by < read_by {
        "a backfill or a sync trigger from the old structures to the new ones misses it"
    } else if written_by > read_by {
        "a sync trigger from the new structures back to the old ones misses it"
    } else {
        "a phase of the catalog changed it"
    }
}

mod fresh;
mod kit;

pub use fresh::{with_database, FreshDatabase};
pub use kit::{Kit, Staged, Transition};
