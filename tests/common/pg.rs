//! PostgreSQL fixtures: a fresh database per test (the kit's
//! [`FreshDatabase`]) on the server named by `PG_DATABASE_URL` (falling back
//! to `DATABASE_URL`), dropped afterwards.
//!
//! Without a URL the tests say loudly that they were skipped; under
//! `scripts/test` (`TANDEM_REQUIRE_PG=1`) a missing URL is a failure.

use diesel::{Connection, PgConnection};
use tandem::testing::FreshDatabase;

pub struct PgDb {
    pub url: String,
    _fresh: FreshDatabase,
}

/// The server's URL, or `None` (after saying so) when none is configured.
pub fn server(test: &str) -> Option<String> {
    let url = std::env::var("PG_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres"));
    if url.is_none() {
        if std::env::var("TANDEM_REQUIRE_PG").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: TANDEM_REQUIRE_PG=1 but neither PG_DATABASE_URL nor DATABASE_URL is set"
            );
        }
        eprintln!("SKIPPED {test}: PostgreSQL test needs PG_DATABASE_URL (scripts/test starts a server and sets it)");
    }
    url
}

impl PgDb {
    /// A fresh, empty database, or `None` (after saying so) when no server is configured.
    pub fn new(test: &str) -> Option<PgDb> {
        let fresh = FreshDatabase::postgres(&server(test)?).expect("create a test database");
        Some(PgDb {
            url: fresh.url().to_owned(),
            _fresh: fresh,
        })
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to the test database")
    }
}
