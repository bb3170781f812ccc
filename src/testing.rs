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
//! | N switched             | yes (rollback)        | yes                 |
//! | N contracted           |                       | yes                 |
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
//! let kit = Kit::sqlite_in_memory(tandem::demo::catalog()?)
//!     .configure(|b| b.backfill(2, "copy emails", tandem::demo::backfill_emails));
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
            Stage::PreviousStable | Stage::Expanded => vec![previous],
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

enum Cleanup {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    None,
    #[cfg(feature = "sqlite")]
    Dir(
        // Removed on drop.
        #[allow(dead_code)] tempfile::TempDir,
    ),
    #[cfg(feature = "postgres")]
    Postgres { server: String, name: String },
}

/// A fresh, empty database, removed when dropped.
pub struct FreshDatabase {
    url: String,
    cleanup: Cleanup,
}

impl fmt::Debug for FreshDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshDatabase")
            .field("url", &crate::redact(&self.url))
            .finish()
    }
}

impl FreshDatabase {
    /// Its URL (SQLite: a file path or `:memory:`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An in-memory SQLite database: each handle opened on `:memory:` gets
    /// its own.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_in_memory() -> FreshDatabase {
        FreshDatabase {
            url: ":memory:".to_owned(),
            cleanup: Cleanup::None,
        }
    }

    /// A SQLite database file in a new temporary directory.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the directory cannot be created.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_file() -> Result<FreshDatabase, Error> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-kit")
            .tempdir()
            .map_err(|e| Error::Connect {
                target: "a temporary directory".to_owned(),
                message: format!("cannot create a temporary directory for a test database: {e}"),
            })?;
        let url = dir.path().join("test.db").to_string_lossy().into_owned();
        Ok(FreshDatabase {
            url,
            cleanup: Cleanup::Dir(dir),
        })
    }

    /// A new database on the PostgreSQL server of `server_url` (any database
    /// on it: the new one is created beside it, and dropped with
    /// `WITH (FORCE)` when this value is dropped).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the server cannot be reached or refuses
    /// `CREATE DATABASE` (the role needs `CREATEDB`).
    #[cfg(feature = "postgres")]
    pub fn postgres(server_url: &str) -> Result<FreshDatabase, Error> {
        use diesel::connection::SimpleConnection as _;
        use diesel::Connection as _;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tandem_kit_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let target = crate::redact(server_url);
        let mut admin =
            diesel::PgConnection::establish(server_url).map_err(|e| Error::Connect {
                target: target.clone(),
                message: crate::redact(&e.to_string()),
            })?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| Error::Connect {
                target,
                message: format!(
                    "cannot create a test database: {e}; the role needs the CREATEDB privilege"
                ),
            })?;
        Ok(FreshDatabase {
            url: with_database(server_url, &name),
            cleanup: Cleanup::Postgres {
                server: server_url.to_owned(),
                name,
            },
        })
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::None => {}
            #[cfg(feature = "sqlite")]
            Cleanup::Dir(_) => {}
            #[cfg(feature = "postgres")]
            Cleanup::Postgres { server, name } => {
                use diesel::connection::SimpleConnection as _;
                use diesel::Connection as _;
                let dropped = diesel::PgConnection::establish(server)
                    .map_err(|e| e.to_string())
                    .and_then(|mut admin| {
                        admin
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = dropped {
                    tracing::warn!(database = %name, error = %crate::redact(&e), "could not drop a test database");
                }
            }
        }
    }
}

/// The URL of database `name` on the server of the PostgreSQL URL `url`
/// (query parameters kept).
///
/// ```
/// assert_eq!(
///     tandem::testing::with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
///     "postgres://u@h:5432/t1?sslmode=disable"
/// );
/// ```
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

type Fresh = dyn Fn() -> Result<FreshDatabase, Error> + Send + Sync;
type Configure<B> = dyn Fn(Builder<B>) -> Builder<B> + Send + Sync;

/// The kit: a catalog, a source of fresh databases and the handle settings
/// (backfills) the application uses.
pub struct Kit<B: Backend> {
    catalog: Catalog,
    fresh: Arc<Fresh>,
    configure: Arc<Configure<B>>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: Backend> fmt::Debug for Kit<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kit")
            .field("backend", &B::NAME)
            .field("latest", &self.catalog.latest())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "sqlite")]
impl Kit<crate::Sqlite> {
    /// SQLite: a fresh database file in a temporary directory per state (the
    /// same pragmas and connection pool as production).
    pub fn sqlite(catalog: Catalog) -> Self {
        Kit::withfresh(catalog, FreshDatabase::sqlite_file)
    }

    /// SQLite in memory: fastest; one connection per database.
    pub fn sqlite_in_memory(catalog: Catalog) -> Self {
        Kit::withfresh(catalog, || Ok(FreshDatabase::sqlite_in_memory()))
    }
}

#[cfg(feature = "postgres")]
impl Kit<crate::Postgres> {
    /// PostgreSQL: a fresh database per state on the server of `server_url`
    /// (see [`FreshDatabase::postgres`]).
    pub fn postgres(server_url: &str, catalog: Catalog) -> Self {
        let server = server_url.to_owned();
        Kit::withfresh(catalog, move || FreshDatabase::postgres(&server))
    }
}

impl<B: Backend> Kit<B> {
    /// A kit whose fresh databases come from `fresh`.
    pub fn withfresh(
        catalog: Catalog,
        fresh: impl Fn() -> Result<FreshDatabase, Error> + Send + Sync + 'static,
    ) -> Self {
        Kit {
            catalog,
            fresh: Arc::new(fresh),
            configure: Arc::new(|b| b),
            _backend: PhantomData,
        }
    }

    /// Configures every handle the kit opens, as the application configures
    /// its own: register the catalog's backfills here
    /// ([`Builder::backfill`]). The kit sets `serves` to every version of
    /// the catalog; leave it.
    pub fn configure(
        mut self,
        configure: impl Fn(Builder<B>) -> Builder<B> + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// The change from `to - 1` to `to`.
    ///
    /// # Errors
    ///
    /// [`Failure::BadTransition`] for version 1 (nothing before it) or a
    /// version beyond the catalog.
    pub fn transition(&self, to: u32) -> Result<Transition<'_, B>, Failure> {
        let bad = |reason: String| Failure::BadTransition { to, reason };
        let version = Version::new(to).ok_or_else(|| bad("versions start at 1".to_owned()))?;
        let previous = version.previous().ok_or_else(|| {
            bad("version 1 is the initial schema; test changes from 2 on".to_owned())
        })?;
        let latest = self.catalog.latest();
        if version > latest {
            return Err(bad(format!("the catalog ends at version {latest}")));
        }
        Ok(Transition {
            kit: self,
            previous,
            to: version,
        })
    }

    /// Opens a handle serving every version on a fresh database.
    fn open(&self, at: At) -> Result<Staged<B>, Failure> {
        let setup = |step: &'static str| move |source: Error| Failure::Setup { at, step, source };
        let fresh = (self.fresh)().map_err(setup("creating a fresh database"))?;
        let builder = Tandem::<B>::builder(fresh.url(), self.catalog.clone())
            .serves(1..=self.catalog.latest().get())
            .label("tandem-kit");
        let db = (self.configure)(builder).open().map_err(setup("open"))?;
        Ok(Staged { db, fresh, at })
    }
}

/// A fresh database brought to a stage, with the kit's handle on it.
pub struct Staged<B: Backend> {
    // Fields drop in order: the handle before the database it points at.
    db: Tandem<B>,
    fresh: FreshDatabase,
    at: At,
}

impl<B: Backend> fmt::Debug for Staged<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Staged<B> {
    /// The stage the database is at.
    pub fn at(&self) -> At {
        self.at
    }

    /// The database's URL, to open the application's own handles on it.
    pub fn url(&self) -> &str {
        self.fresh.url()
    }

    /// The kit's handle (serves every version; runs the upgrader).
    pub fn handle(&self) -> &Tandem<B> {
        &self.db
    }

    /// Runs `f` with `repository`'s binding for `binding`, on a pooled
    /// connection, as an instance serving that version would.
    ///
    /// # Errors
    ///
    /// [`Failure::MissingBinding`], [`Failure::Setup`] when no connection
    /// is free, or [`Failure::Binding`] with `f`'s error.
    pub fn run<R, T, E, F>(
        &self,
        repository: &Repository<R>,
        binding: Version,
        f: F,
    ) -> Result<T, Failure>
    where
        R: ?Sized,
        F: FnOnce(&R, &mut Session<'_, B>) -> Result<T, E>,
        E: Into<BoxError>,
    {
        let at = self.at;
        let repo = repository
            .get(binding)
            .map_err(|_| Failure::MissingBinding {
                repository: repository.name().to_owned(),
                binding,
                at,
            })?;
        let mut conn = self
            .handle()
            .connection()
            .map_err(|source| Failure::Setup {
                at,
                step: "getting a connection",
                source,
            })?;
        f(repo, &mut Session::new(&mut *conn, binding)).map_err(|e| Failure::Binding {
            binding,
            at,
            source: e.into(),
        })
    }

    /// Moves the database to the next stage.
    fn advance(&mut self, stage: Stage) -> Result<(), Failure> {
        let at = At {
            stage,
            to: self.at.to,
        };
        let up = self.handle().upgrader();
        let (step, result) = match stage {
            Stage::PreviousStable => ("upgrade_to", Ok(())), // where every database starts
            Stage::Expanded => ("expand", up.expand().map(drop)),
            Stage::Switched => ("switch", up.switch().map(drop)),
            Stage::Contracted => ("contract", up.contract().map(drop)),
        };
        result.map_err(|source| Failure::Setup { at, step, source })?;
        self.at = at;
        Ok(())
    }

    /// Switches back to N-1 (binaries rolled back before contract) and
    /// forward again.
    fn switch_back(&mut self) -> Result<(), Failure> {
        let at = self.at;
        self.handle()
            .upgrader()
            .switch_back()
            .map_err(|source| Failure::Setup {
                at,
                step: "switch_back",
                source,
            })?;
        self.at = At {
            stage: Stage::Expanded,
            to: at.to,
        };
        Ok(())
    }
}

/// The change from N-1 to N under test (see the [module](self) docs).
#[derive(Debug)]
pub struct Transition<'k, B: Backend> {
    kit: &'k Kit<B>,
    previous: Version,
    to: Version,
}

impl<B: Backend> Transition<'_, B> {
    /// N-1.
    pub fn previous(&self) -> Version {
        self.previous
    }

    /// N.
    pub fn to(&self) -> Version {
        self.to
    }

    /// A fresh database brought to `stage`: version 1 installed, every
    /// earlier version upgraded in full, then N's phases up to `stage`.
    ///
    /// # Errors
    ///
    /// [`Failure::Setup`] naming the step that failed.
    pub fn fresh_at(&self, stage: Stage) -> Result<Staged<B>, Failure> {
        let start = At {
            stage: Stage::PreviousStable,
            to: self.to,
        };
        let staged = self.kit.open(start)?;
        if self.previous > Version::FIRST {
            staged
                .handle()
                .upgrader()
                .upgrade_to(self.previous.get())
                .map_err(|source| Failure::Setup {
                    at: start,
                    step: "upgrade_to",
                    source,
                })?;
        }
        let mut staged = staged;
        for next in Stage::ALL.into_iter().skip(1) {
            if staged.at.stage == stage {
                break;
            }
            staged.advance(next)?;
        }
        Ok(staged)
    }

    /// Runs `test` with each binding of `repository` in each stage where it
    /// must work (see the table in the [module](self) docs), on a fresh
    /// database per stage. Returns what ran, in order.
    ///
    /// # Errors
    ///
    /// The first [`Failure`]: a binding that failed (its version, the stage
    /// and `test`'s error), a stage that could not be reached, or a missing
    /// binding.
    pub fn check<R, E, F>(
        &self,
        repository: &Repository<R>,
        test: F,
    ) -> Result<Vec<(At, Version)>, Failure>
    where
        R: ?Sized,
        F: Fn(&R, &mut Session<'_, B>) -> Result<(), E>,
        E: Into<BoxError>,
    {
        let mut ran = Vec::new();
        for stage in Stage::ALL {
            let staged = self.fresh_at(stage)?;
            for binding in stage.bindings(self.to) {
                staged.run(repository, binding, &test)?;
                ran.push((staged.at, binding));
            }
        }
        Ok(ran)
    }

    /// Continuity forward: data written through N-1 in stable and expanded
    /// states reads the same through N after the switch and after contract,
    /// and through N-1 after expand. "The same" is what `read` through the
    /// writing binding returned right after `write`.
    ///
    /// # Errors
    ///
    /// [`Failure::Mismatch`] naming who wrote where and who read where, or
    /// any failure of [`check`](Transition::check).
    pub fn forward<R, K, V, E, W, Rd>(
        &self,
        repository: &Repository<R>,
        write: W,
        read: Rd,
    ) -> Result<(), Failure>
    where
        R: ?Sized,
        V: PartialEq + fmt::Debug,
        E: Into<BoxError>,
        W: Fn(&R, &mut Session<'_, B>) -> Result<K, E>,
        Rd: Fn(&R, &mut Session<'_, B>, &K) -> Result<V, E>,
    {
        let (old, new) = (self.previous, self.to);
        let mut db = self.fresh_at(Stage::PreviousStable)?;
        let mut written: Vec<Written<K, V>> = Vec::new();
        for stage in [Stage::PreviousStable, Stage::Expanded] {
            if stage != db.at.stage {
                db.advance(stage)?;
            }
            let key = db.run(repository, old, &write)?;
            let value = db.run(repository, old, |r, s| read(r, s, &key))?;
            written.push(Written {
                key,
                value,
                by: old,
                at: db.at,
            });
        }
        verify(&db, repository, old, &written, &read)?;
        db.advance(Stage::Switched)?;
        verify(&db, repository, new, &written, &read)?;
        db.advance(Stage::Contracted)?;
        verify(&db, repository, new, &written, &read)
    }

    /// Continuity backward: data written through N after the switch reads
    /// the same through N-1 before contract, also after a
    /// [`switch_back`](crate::Upgrader::switch_back) (binaries rolled back),
    /// and through N again after switching forward and contracting.
    ///
    /// # Errors
    ///
    /// As [`forward`](Transition::forward).
    pub fn backward<R, K, V, E, W, Rd>(
        &self,
        repository: &Repository<R>,
        write: W,
        read: Rd,
    ) -> Result<(), Failure>
    where
        R: ?Sized,
        V: PartialEq + fmt::Debug,
        E: Into<BoxError>,
        W: Fn(&R, &mut Session<'_, B>) -> Result<K, E>,
        Rd: Fn(&R, &mut Session<'_, B>, &K) -> Result<V, E>,
    {
        let (old, new) = (self.previous, self.to);
        let mut db = self.fresh_at(Stage::Switched)?;
        let key = db.run(repository, new, &write)?;
        let value = db.run(repository, new, |r, s| read(r, s, &key))?;
        let written = [Written {
            key,
            value,
            by: new,
            at: db.at,
        }];
        verify(&db, repository, old, &written, &read)?;
        db.switch_back()?;
        verify(&db, repository, old, &written, &read)?;
        db.advance(Stage::Switched)?;
        db.advance(Stage::Contracted)?;
        verify(&db, repository, new, &written, &read)
    }
}

struct Written<K, V> {
    key: K,
    value: V,
    by: Version,
    at: At,
}

fn verify<B, R, K, V, E, Rd>(
    db: &Staged<B>,
    repository: &Repository<R>,
    binding: Version,
    written: &[Written<K, V>],
    read: &Rd,
) -> Result<(), Failure>
where
    B: Backend,
    R: ?Sized,
    V: PartialEq + fmt::Debug,
    E: Into<BoxError>,
    Rd: Fn(&R, &mut Session<'_, B>, &K) -> Result<V, E>,
{
    for w in written {
        let got = db.run(repository, binding, |r, s| read(r, s, &w.key))?;
        if got != w.value {
            return Err(Failure::Mismatch {
                written_by: w.by,
                written_at: w.at,
                read_by: binding,
                read_at: db.at,
                expected: format!("{:?}", w.value),
                got: format!("{got:?}"),
            });
        }
    }
    Ok(())
}
