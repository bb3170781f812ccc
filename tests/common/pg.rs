//! PostgreSQL fixtures: a fresh database per test on the server named by
//! `PG_DATABASE_URL` (falling back to `DATABASE_URL`), dropped afterwards.
//!
//! Without a URL the tests say loudly that they were skipped; under
//! `scripts/test` (`TANDEM_REQUIRE_PG=1`) a missing URL is a failure.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

pub struct PgDb {
    admin_url: String,
    pub url: String,
    pub name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn server_url() -> Option<String> {
    std::env::var("PG_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres"))
}

/// The URL of database `name` on the same server as `url`.
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

impl PgDb {
    /// A fresh, empty database, or `None` (after saying so) when no server is configured.
    pub fn new(test: &str) -> Option<PgDb> {
        let Some(admin_url) = server_url() else {
            if std::env::var("TANDEM_REQUIRE_PG").is_ok_and(|v| v == "1") {
                panic!("{test}: TANDEM_REQUIRE_PG=1 but neither PG_DATABASE_URL nor DATABASE_URL is set");
            }
            eprintln!("SKIPPED {test}: PostgreSQL test needs PG_DATABASE_URL (scripts/test starts a server and sets it)");
            return None;
        };
        let name = format!(
            "tandem_t_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut admin =
            PgConnection::establish(&admin_url).expect("connect to the PostgreSQL server");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let url = with_database(&admin_url, &name);
        Some(PgDb {
            admin_url,
            url,
            name,
        })
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
