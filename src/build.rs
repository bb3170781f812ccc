//! Build-script helper: embeds a catalog folder in the application binary.
//!
//! In the application's `Cargo.toml` (the build dependency needs no backend,
//! so it compiles in a second or two):
//!
//! ```toml
//! [dependencies]
//! tandem = "0.1"
//!
//! [build-dependencies]
//! tandem = { version = "0.1", default-features = false }
//! ```
//!
//! In `build.rs`:
//!
//! ```no_run
//! fn main() -> Result<(), tandem::CatalogError> {
//!     tandem::build::embed_catalog("schema_versions")
//! }
//! ```
//!
//! And where the application opens its database:
//!
//! ```ignore
//! let catalog = tandem::Catalog::from_embedded(tandem::include_catalog!())?;
//! ```
//!
//! A malformed folder fails the build with the same [`CatalogError`] that
//! [`Catalog::from_dir`](crate::Catalog::from_dir) gives at run time.

use std::path::Path;

use crate::catalog::Catalog;
use crate::embed;
use crate::error::CatalogError;

/// Validates the catalog folder `dir` (relative to the package root) and
/// writes it to `$OUT_DIR` for [`include_catalog!`](crate::include_catalog).
/// Cargo reruns the build script when a file in the folder changes.
///
/// # Errors
///
/// [`CatalogError`] if the folder is malformed (the build fails with the
/// message), or [`CatalogError::Io`] if it cannot be read or `OUT_DIR` is not
/// set (called outside a build script).
pub fn embed_catalog(dir: impl AsRef<Path>) -> Result<(), CatalogError> {
    let dir = dir.as_ref();
    Catalog::from_dir(dir)?;
    let label = dir.to_string_lossy();
    embed::write_to_out_dir(&label, dir).map_err(|source| CatalogError::Io {
        path: dir.to_owned(),
        source,
    })?;
    Ok(())
}
