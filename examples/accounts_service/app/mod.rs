//! The accounts service: its catalog (three versions), repositories and
//! bindings, backfills, and the request layer that maps tandem's errors to
//! HTTP statuses. Shared by `main.rs` and `tests/two_versions.rs`.

#![allow(dead_code)] // each user of the module takes a different part

pub mod repos;
pub mod schema;

use std::ops::RangeInclusive;
use std::sync::Arc;

use diesel::query_dsl::methods::{ExecuteDsl, LoadQuery};
use diesel::RunQueryDsl;
use diesel::{Connection, QueryResult};
use tandem::{Backend, Builder, Catalog, Error, Repository, Session, Tandem};

use repos::{Accounts, Addresses, Emails, Plans, V1, V2, V3};

/// The catalog in `examples/accounts_service/schema_versions`, embedded at
/// compile time (an application's own folder is usually `schema_versions`):
/// each version a `change.toml` of operations, from which tandem generates
/// both backends' SQL, sync triggers and backfills. No Rust backfill needed.
pub fn catalog() -> Result<Catalog, tandem::CatalogError> {
    Catalog::from_embedded(tandem::embed_catalog!(
        "examples/accounts_service/schema_versions"
    ))
}

/// The same three versions written by hand, one SQL file per phase and
/// backend (`examples/accounts_service/schema_versions_sql`): what the
/// operations generate, give or take names, with the backfills in Rust
/// ([`AppBackend::configure`] registers them).
pub fn catalog_sql() -> Result<Catalog, tandem::CatalogError> {
    Catalog::from_embedded(tandem::embed_catalog!(
        "examples/accounts_service/schema_versions_sql"
    ))
}

/// Version 2's backfill: a primary `account_emails` row for up to 500
/// accounts written before the sync triggers existed. `ON CONFLICT DO
/// NOTHING`: a row the trigger inserts concurrently (after this statement's
/// snapshot, on PostgreSQL) is skipped instead of failing the batch. Returns
/// the rows inserted; 0 when none are missing.
pub fn backfill_primary_emails<C>(c: &mut C) -> QueryResult<usize>
where
    C: Connection,
    diesel::query_builder::SqlQuery:
        ExecuteDsl<C> + for<'a> LoadQuery<'a, C, tandem::testing::demo::Missing>,
{
    const MISSING: &str = "FROM accounts a WHERE a.email <> '' AND NOT EXISTS \
         (SELECT 1 FROM account_emails e WHERE e.account_id = a.id AND e.is_primary)";
    let copy = diesel::sql_query(format!(
        "INSERT INTO account_emails (account_id, email, is_primary) SELECT a.id, a.email, TRUE {MISSING} \
         ORDER BY a.id LIMIT 500 ON CONFLICT DO NOTHING"
    ));
    let copied = ExecuteDsl::execute(copy, c)?;
    if copied > 0 {
        return Ok(copied);
    }
    // Nothing copied: every candidate was filled concurrently, or none is left.
    let left: Vec<tandem::testing::demo::Missing> = RunQueryDsl::load(
        diesel::sql_query(format!("SELECT a.id {MISSING} LIMIT 1")),
        c,
    )?;
    Ok(left.len())
}

/// Version 3's backfill: touches up to 500 rows without name parts
/// (`SET name = name`) so that the sync trigger fills them; the split is
/// defined once, in the trigger. Returns the rows touched; 0 when done.
pub fn backfill_name_parts<C>(c: &mut C) -> QueryResult<usize>
where
    C: Connection,
    diesel::query_builder::SqlQuery: ExecuteDsl<C>,
{
    ExecuteDsl::execute(
        diesel::sql_query(
            "UPDATE accounts SET name = name WHERE id IN \
             (SELECT id FROM accounts WHERE first_name IS NULL ORDER BY id LIMIT 500)",
        ),
        c,
    )
}

/// The repositories of one binary. `addresses` and `plans` exist only if
/// the binary has bindings for versions that have them.
pub struct Repos<B: Backend> {
    pub accounts: Repository<dyn Accounts<B::Connection>>,
    pub emails: Repository<dyn Emails<B::Connection>>,
    pub addresses: Option<Repository<dyn Addresses<B::Connection>>>,
    pub plans: Option<Repository<dyn Plans<B::Connection>>>,
}

/// A backend the service has bindings for.
pub trait AppBackend: Backend {
    /// The repositories with bindings for `versions` only (a binary built
    /// without the code for older versions passes, say, `2..=3`).
    fn repos(versions: RangeInclusive<u32>) -> tandem::Result<Repos<Self>>;

    /// Registers the hand-written catalog's ([`catalog_sql`]) backfills, as
    /// every binary that may run an upgrade of it must.
    fn configure(builder: Builder<Self>) -> Builder<Self>;
}

macro_rules! app_backend {
    ($backend:ty) => {
        impl AppBackend for $backend {
            fn configure(builder: Builder<Self>) -> Builder<Self> {
                builder
                    .backfill(
                        2,
                        "primary emails",
                        backfill_primary_emails::<<$backend as Backend>::Connection>,
                    )
                    .backfill(
                        3,
                        "name parts",
                        backfill_name_parts::<<$backend as Backend>::Connection>,
                    )
            }

            fn repos(versions: RangeInclusive<u32>) -> tandem::Result<Repos<Self>> {
                type C = <$backend as Backend>::Connection;
                let mut accounts = Repository::<dyn Accounts<C>>::builder("accounts");
                let mut emails = Repository::<dyn Emails<C>>::builder("emails");
                let mut addresses = Repository::<dyn Addresses<C>>::builder("addresses");
                let mut plans = Repository::<dyn Plans<C>>::builder("plans");
                for v in versions.clone() {
                    accounts = match v {
                        1 => accounts.binding(1, Arc::new(V1)),
                        2 => accounts.binding(2, Arc::new(V2)),
                        _ => accounts.binding(v, Arc::new(V3)),
                    };
                    emails = match v {
                        1 => emails.binding(1, Arc::new(V1)),
                        _ => emails.binding(v, Arc::new(V2)), // unchanged in 3
                    };
                    if v >= 2 {
                        addresses = addresses.binding(v, Arc::new(V2));
                    }
                    if v >= 3 {
                        plans = plans.binding(v, Arc::new(V3));
                    }
                }
                Ok(Repos {
                    accounts: accounts.build()?,
                    emails: emails.build()?,
                    addresses: versions
                        .clone()
                        .any(|v| v >= 2)
                        .then(|| addresses.build())
                        .transpose()?,
                    plans: versions
                        .clone()
                        .any(|v| v >= 3)
                        .then(|| plans.build())
                        .transpose()?,
                })
            }
        }
    };
}

app_backend!(tandem::Sqlite);
#[cfg(feature = "postgres")]
app_backend!(tandem::Postgres);

/// A response, as an HTTP layer would send it.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    pub body: String,
    /// Why a request did not succeed (`None` for 2xx): what a service's
    /// metrics would count, and what the example's gate checks.
    pub cause: Option<Cause>,
}

/// Why a request answered 4xx or 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// 503: the database is behind this release (an upgrade is pending or running).
    Upgrading,
    /// 503: a lock or pool timeout: the service was overloaded.
    Busy,
    /// 503: the database is ahead of this release.
    Ahead,
    /// 404: no such account.
    NotFound,
    /// 404: a feature of a newer schema version than the live one.
    FeatureOff,
    /// 500: anything else.
    Internal,
}

impl Response {
    fn ok(status: u16, body: String) -> Response {
        Response {
            status,
            retry_after: None,
            body,
            cause: None,
        }
    }

    fn failed(status: u16, retry_after: Option<u64>, body: String, cause: Cause) -> Response {
        Response {
            status,
            retry_after,
            body,
            cause: Some(cause),
        }
    }
}

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tandem(#[from] Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("no account {0}")]
    NotFound(i64),
    /// A feature of a newer schema version than the live one.
    #[error("{feature} needs schema version {needs}; the live version is {live}")]
    FeatureOff {
        feature: &'static str,
        needs: u32,
        live: u32,
    },
}

/// Maps an error to a response. The database behind the binary (an upgrade
/// is pending or running) is `503` with `Retry-After`: the request ran no
/// statement and will work once the live version is servable.
pub fn error_response(e: &AppError) -> Response {
    match e {
        AppError::Tandem(Error::Upgrading { live, first, .. }) => Response::failed(
            503,
            Some(1),
            format!("upgrading: the database is at version {live}, this release needs {first}"),
            Cause::Upgrading,
        ),
        AppError::Tandem(Error::LockTimeout { .. } | Error::Pool { .. }) => {
            Response::failed(503, Some(1), format!("busy: {e}"), Cause::Busy)
        }
        // The database is ahead of this binary: a load balancer should take it out.
        AppError::Tandem(Error::VersionNotServed { live, .. }) => Response::failed(
            503,
            None,
            format!("this release cannot serve schema version {live}; deploy a newer one"),
            Cause::Ahead,
        ),
        AppError::NotFound(_) => Response::failed(404, None, e.to_string(), Cause::NotFound),
        AppError::FeatureOff { .. } => {
            Response::failed(404, None, e.to_string(), Cause::FeatureOff)
        }
        other => Response::failed(500, None, other.to_string(), Cause::Internal),
    }
}

/// The service: one binary's handle and repositories.
pub struct Service<B: AppBackend> {
    pub db: Tandem<B>,
    pub repos: Repos<B>,
}

/// A session's binding of an optional repository, gated on the version.
fn gated<'r, B: Backend, R: ?Sized>(
    s: &Session<'_, B>,
    repo: &'r Option<Repository<R>>,
    feature: &'static str,
    needs: u32,
) -> Result<&'r R, AppError> {
    match repo {
        // The gate: decided once per call, from the call's own version.
        Some(repo) if s.at_least(needs) => Ok(s.repo(repo)?),
        _ => Err(AppError::FeatureOff {
            feature,
            needs,
            live: s.version().get(),
        }),
    }
}

impl<B: AppBackend> Service<B> {
    /// A service serving `versions` with bindings for exactly those.
    pub fn open(
        url: &str,
        versions: RangeInclusive<u32>,
        label: &str,
    ) -> Result<Service<B>, AppError> {
        let db = Tandem::<B>::builder(url, catalog().map_err(Error::from)?)
            .serves(versions.clone())
            .label(label)
            .open()?;
        Ok(Service {
            db,
            repos: B::repos(versions)?,
        })
    }

    fn respond<T>(
        &self,
        status: u16,
        result: Result<T, AppError>,
        body: impl FnOnce(T) -> String,
    ) -> Response {
        match result {
            Ok(v) => Response::ok(status, body(v)),
            Err(e) => error_response(&e),
        }
    }

    /// `POST /accounts`
    pub fn create_account(&self, first: &str, last: &str, email: &str) -> Response {
        let r = &self.repos;
        let result = self.db.unit_of_work(|s| {
            let accounts = s.repo(&r.accounts)?;
            Ok::<_, AppError>(accounts.create(s.conn(), first, last, email)?)
        });
        self.respond(201, result, |id| format!("{id}"))
    }

    /// `GET /accounts/{id}`: the plan appears from version 3 on.
    pub fn get_account(&self, id: i64) -> Response {
        let r = &self.repos;
        let result = self.db.unit_of_work(|s| {
            let profile = s
                .repo(&r.accounts)?
                .profile(s.conn(), id)?
                .ok_or(AppError::NotFound(id))?;
            let emails = s.repo(&r.emails)?.all(s.conn(), id)?;
            let plan = match gated(s, &r.plans, "plans", 3) {
                Ok(plans) => plans.plan(s.conn(), id)?,
                Err(_) => None,
            };
            Ok::<_, AppError>((profile, emails, plan, s.version()))
        });
        self.respond(200, result, |(p, emails, plan, v)| {
            let plan = plan.map(|p| format!(" plan={p}")).unwrap_or_default();
            format!(
                "id={} name={:?} emails={emails:?}{plan} (schema v{v})",
                p.id,
                p.display_name()
            )
        })
    }

    /// `POST /accounts/{id}/emails`: version 2 and later.
    pub fn add_email(&self, id: i64, email: &str) -> Response {
        let r = &self.repos;
        let result = self.db.unit_of_work(|s| {
            let addresses = gated(s, &r.addresses, "more than one email", 2)?;
            Ok::<_, AppError>(addresses.add(s.conn(), id, email)?)
        });
        self.respond(201, result, |()| String::new())
    }

    /// `PUT /accounts/{id}/plan`: version 3 and later.
    pub fn set_plan(&self, id: i64, plan: &str) -> Response {
        let r = &self.repos;
        let result = self.db.unit_of_work(|s| {
            let plans = gated(s, &r.plans, "plans", 3)?;
            Ok::<_, AppError>(plans.set_plan(s.conn(), id, plan)?)
        });
        self.respond(204, result, |()| String::new())
    }
}
