//! The catalog layer of [tandem](https://docs.rs/tandem): schema versions,
//! upgrade phases, and the `schema_versions/` folder of SQL files that
//! defines them, validated and checksummed.
//!
//! A crate of its own so that `tandem::embed_catalog!` (a proc macro) can
//! validate a folder as it expands, with the very code that reads it at run
//! time. Applications use it through `tandem`, which re-exports every item
//! here; tools that only read catalogs can depend on it alone (no database
//! driver).
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir(dir.path().join("0001_init"))?;
//! std::fs::write(dir.path().join("0001_init/expand.sql"), "CREATE TABLE t (id INTEGER PRIMARY KEY);")?;
//! let catalog = tandem_catalog::Catalog::from_dir(dir.path())?;
//! assert_eq!(catalog.latest().get(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod catalog;
pub mod change;
mod error;
pub mod lint;
mod sql_check;
mod statements;
mod version;

pub use catalog::{
    embeddable_files, sha256_hex, Catalog, CatalogVersion, EmbeddedCatalog, EmbeddedFile, PhaseSql,
    BACKEND_NAMES,
};
pub use error::CatalogError;
pub use lint::{Finding, LintReport, Rule, Unchecked};
pub use version::{Phase, Version};
