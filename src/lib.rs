//! # tandem
//!
//! Keep serving while the database schema moves from version N-1 to N.
//!
//! A service runs several instances on one database; a release changes the
//! schema. tandem lets old and new code run side by side: the application
//! writes one implementation of each repository trait per schema version
//! (each against its own diesel `table!` module, checked at compile time),
//! tandem reads the live version from a metadata table and sends each call to
//! the binding for that version, and an upgrader moves the live version
//! atomically under a reader/writer schema lock. No call fails, no write is
//! lost; the data tier rolls forward only, and binaries can roll back until
//! the old structures are contracted away.
//!
//! ## Recipe
//!
//! 1. Put each version's SQL in `schema_versions/NNNN_name/`: `expand.sql`
//!    (additive; version 1's is the initial schema), optionally
//!    `switch.sql`, `switch_back.sql`, `contract.sql`, and per-backend
//!    overrides such as `expand.postgres.sql`. Embed the folder with
//!    [`embed_catalog!`] (validated as it expands).
//! 2. Define a repository trait and one binding per version.
//! 3. Open a [`Tandem`] handle and build a [`Repository`] of the bindings.
//! 4. Serve through [`Tandem::call`] and [`Tandem::unit_of_work`].
//! 5. Upgrade with [`Tandem::upgrader`]: [`expand`](Upgrader::expand),
//!    [`switch`](Upgrader::switch), [`contract`](Upgrader::contract), or
//!    [`upgrade_to`](Upgrader::upgrade_to) for every hop at once.
//!
//! ```
//! use std::sync::Arc;
//! use diesel::prelude::*;
//! use tandem::{Repository, Sqlite, Tandem};
//!
//! // One diesel schema module per version.
//! mod v1 {
//!     diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }
//! }
//! mod v2 {
//!     diesel::table! { accounts (id) { id -> BigInt, name -> Text, } }
//!     diesel::table! { account_emails (account_id) { account_id -> BigInt, email -> Text, } }
//! }
//!
//! // The application's repository trait, one binding per version.
//! trait Accounts: Send + Sync {
//!     fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> tandem::Result<i64>;
//!     fn email(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>>;
//! }
//!
//! struct AccountsV1;
//! impl Accounts for AccountsV1 {
//!     fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> tandem::Result<i64> {
//!         use v1::accounts::dsl;
//!         Ok(diesel::insert_into(dsl::accounts)
//!             .values((dsl::name.eq(name), dsl::email.eq(email)))
//!             .returning(dsl::id)
//!             .get_result(conn)?)
//!     }
//!     fn email(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>> {
//!         use v1::accounts::dsl;
//!         Ok(dsl::accounts.find(id).select(dsl::email).first(conn).optional()?)
//!     }
//! }
//!
//! struct AccountsV2;
//! impl Accounts for AccountsV2 {
//!     fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> tandem::Result<i64> {
//!         use v2::{account_emails as e, accounts as a};
//!         Ok(conn.immediate_transaction(|conn| {
//!             let id = diesel::insert_into(a::table).values(a::name.eq(name)).returning(a::id).get_result(conn)?;
//!             diesel::insert_into(e::table).values((e::account_id.eq(id), e::email.eq(email))).execute(conn)?;
//!             diesel::QueryResult::Ok(id)
//!         })?)
//!     }
//!     fn email(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>> {
//!         use v2::account_emails::dsl;
//!         Ok(dsl::account_emails.find(id).select(dsl::email).first(conn).optional()?)
//!     }
//! }
//!
//! # fn main() -> Result<(), tandem::Error> {
//! // Open the database (here in memory) with the catalog, serving versions 1 and 2.
//! let db = Tandem::<Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?)
//!     .serves(1..=2)
//!     .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
//!     .open()?;
//! let accounts = Repository::<dyn Accounts>::builder("accounts")
//!     .binding(1, Arc::new(AccountsV1))
//!     .binding(2, Arc::new(AccountsV2))
//!     .build()?;
//!
//! // Serve: the binding for the live version (1) runs.
//! let id = db.call(&accounts, |repo, s| repo.create(s.conn(), "ada", "ada@example.com"))?;
//!
//! // Upgrade: expand (additive), switch (atomic), contract (drop the old column).
//! db.upgrader().expand()?;
//! db.upgrader().switch()?;
//! assert_eq!(db.live_version().get(), 2);
//! let email = db.call(&accounts, |repo, s| repo.email(s.conn(), id))?;
//! assert_eq!(email.as_deref(), Some("ada@example.com"));
//! db.upgrader().contract()?;
//! # Ok(()) }
//! ```
//!
//! ## Phases
//!
//! * **Expand** is additive: new tables, nullable or defaulted columns, sync
//!   triggers that keep old and new structures equal, and batched backfills
//!   registered with [`Builder::backfill`]. Code for the previous version
//!   keeps working.
//! * **Switch** runs `switch.sql` (a few fast statements) and bumps the
//!   version in one transaction under the schema writer lock.
//! * **Contract** drops the old structures once nothing uses the previous
//!   version. Before it, [`Upgrader::switch_back`] can undo the switch.
//!
//! The state row allows at most two versions in use: the next version can be
//! expanded only once the live one is contracted. Each phase is journaled in
//! the history table with the SHA-256 of its SQL; a changed file is refused
//! ([`Error::ChecksumDrift`]). A phase's SQL, history row and state change
//! commit together, so a crash leaves it applied or not; the same command run
//! again finishes the job.
//!
//! ## Locking
//!
//! Every call holds the read side of the schema lock from reading the live
//! version until it returns, so a call runs entirely with one binding. The
//! switch holds the write side. Readers have priority: the upgrader polls in
//! the background and never makes a call queue behind it, except during a
//! bounded escalation ([`WriterPolicy`]) that lets it land under saturated
//! load while bounding any call's wait. In steady state a call costs an atomic
//! load and an uncontended read lock on top of the pooled connection.
//!
//! ## Fleets
//!
//! Every handle is an instance with a row and a lease in the fleet table,
//! kept by a background poller ([`Builder::poll_interval`],
//! [`Builder::lease`]). A call takes the steady path above only while its
//! instance holds a fresh lease of a steady state; otherwise (deploying mode,
//! stale lease) it takes the locking path: its own transaction takes the
//! database's shared schema lock (PostgreSQL: a transaction-scoped advisory
//! lock; SQLite: `BEGIN IMMEDIATE`) and reads the live version. With other
//! live instances, the switch first moves the fleet to deploying mode and
//! waits for every instance to acknowledge it (after draining its steady
//! calls) or to drop out; it is refused while a live instance cannot serve
//! the new version ([`Error::SwitchRefused`]), and contract waits for every
//! instance to have seen the switch ([`Error::FleetNotAcknowledged`]).
//! While a long write holds an instance's lease renewals back (SQLite's
//! write lock during a phase), a read that writes nothing keeps it on the
//! steady path as long as it shows that nothing changed, and a switch gives
//! such instances notice first. Everything the switch waits for is bounded
//! by [`Builder::switch_timeout`].
//!
//! Upgraders exclude each other through a lease on the state row
//! (compare-and-set inside a write transaction; no session state, so it
//! holds behind a transaction-mode pooler); the loser gets
//! [`Error::UpgraderBusy`] naming the holder, or waits
//! ([`Upgrader::wait_for_lease`]). A crashed upgrader's lease expires
//! (`Upgrader::lease`, renewed while it works).
//!
//! ## Backends
//!
//! SQLite (feature `sqlite`, default, bundled) and PostgreSQL (feature
//! `postgres`), each a [`Backend`]: a [`Dialect`] (SQL text), [`Locks`] (the
//! database's side of the schema lock) and the I/O, all sealed. The
//! `testing` feature adds [`testing`]: the two-version test kit, fault
//! injection and the demo schema the examples here use.
//!
//! ## Errors
//!
//! One [`Error`] enum whose variants name the versions, tables and
//! instances involved and the next step; [`Error::area`] groups them
//! ([`Area`]) and [`Error::is_retryable`] says which may simply run again.
//!
//! ## Embedding the catalog
//!
//! [`embed_catalog!`] reads `schema_versions/` (relative to the package
//! root) as it expands and validates it with the code that
//! [`Catalog::from_dir`] runs: a missing or malformed folder fails the
//! build, naming the file at fault.
//!
//! ```compile_fail
//! // error: embed_catalog!("no_such_folder"): cannot read …/no_such_folder: No such file or directory
//! let catalog = tandem::embed_catalog!("no_such_folder");
//! ```
//!
//! ## Layers
//!
//! Inside, the modules import one way (the README's "Architecture" has the
//! table): the backends' primitives (a dialect, database locks and I/O per
//! backend, in one file each; nothing above them names a backend), then the
//! store (the only code that
//! runs SQL on tandem's own tables), then the state one opened database
//! shares, then the fleet and the upgrader, then serving ([`Tandem`],
//! [`Builder`]), and this page's re-exports on top. The invariants the
//! layers keep between them are stated once, in [`protocol`].

#![deny(missing_docs)]
// Library code reports errors; it never panics on a reachable path.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

// `embed_catalog!` names `::tandem`, which must resolve inside this crate too
// (the demo catalog of `testing::demo`).
#[cfg(all(feature = "testing", any(feature = "sqlite", feature = "postgres")))]
extern crate self as tandem;

mod error;
pub mod guide;
pub mod protocol;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod redact;

/// The catalog layer, a crate of its own (`tandem-catalog`) so that
/// `embed_catalog!` can validate a folder as it expands.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod catalog {
    pub(crate) use tandem_catalog::{sha256_hex, Catalog, BACKEND_NAMES};
}
mod version {
    pub(crate) use tandem_catalog::{Phase, Version};
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod backend;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod backoff;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod dispatch;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod fleet;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod handle;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod limits;
#[cfg(any(feature = "sqlite", feature = "postgres", all(test, tandem_loom)))]
mod lock;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod retry;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod shared;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod store;
#[cfg(all(feature = "testing", any(feature = "sqlite", feature = "postgres")))]
pub mod testing;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod upgrade;

pub use error::{Area, Error, Result};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use redact::redact;
pub use tandem_catalog::{change, lint};
pub use tandem_catalog::{
    Catalog, CatalogError, CatalogVersion, EmbeddedCatalog, EmbeddedFile, Phase, PhaseSql, Version,
};
pub use tandem_macros::embed_catalog;

#[cfg(feature = "postgres")]
pub use backend::Postgres;
#[cfg(feature = "sqlite")]
pub use backend::Sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use backend::{Backend, Dialect, Locks};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use diesel;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use dispatch::{Repository, RepositoryBuilder, Session};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use handle::{Builder, Conn, Tandem};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use lock::WriterPolicy;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use shared::MissedSwitch;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use store::{HistoryEntry, HistoryPhase, Instance, Mode, Outcome, Prefix, State, StatePhase};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use upgrade::{PhaseReport, PlannedPhase, Upgrader};

// The README's examples compile and run as doctests.
#[cfg(all(doctest, feature = "sqlite"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
