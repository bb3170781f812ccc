//! Fresh, empty databases for tests, removed when dropped.

use super::*;

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
