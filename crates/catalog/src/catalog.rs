//! The catalog: the ordered schema versions in `schema_versions/`, each phase
//! with its SQL text and SHA-256 checksum.
//!
//! ```text
//! schema_versions/
//!   0001_accounts/expand.sql            initial schema (version 1: expand only)
//!   0002_account_emails/expand.sql      additive: new table, sync triggers
//!   0002_account_emails/switch.sql      optional: few, fast statements
//!   0002_account_emails/switch_back.sql optional: undoes switch.sql
//!   0002_account_emails/contract.sql    optional: drop the old structures
//!   0002_account_emails/expand.postgres.sql  optional: wins over expand.sql on PostgreSQL
//! ```
//!
//! Applications embed it at compile time with `tandem::embed_catalog!`
//! (which validates it as it expands); tools load it from a folder with
//! [`Catalog::from_dir`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::CatalogError;
use crate::version::{Phase, Version};

/// The backends a catalog file may be specific to (`expand.sqlite.sql`):
/// each of tandem's backends' `Backend::NAME` (a unit test in tandem checks
/// that every backend's name is here). A file naming another one
/// (`expand.mysql.sql`) is refused as [`CatalogError::UnknownFile`], and a
/// version without a generic `expand.sql` needs one for each name here.
pub const BACKEND_NAMES: [&str; 2] = ["sqlite", "postgres"];

/// One file of a catalog embedded in the binary. Produced by
/// `tandem::embed_catalog!`; not usually written by hand.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedFile {
    /// Path relative to the catalog folder, with `/` separators.
    pub path: &'static str,
    /// The file's bytes.
    pub contents: &'static [u8],
}

/// A catalog embedded in the binary: the folder it came from and its files.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedCatalog {
    /// The folder the files were read from, for error messages.
    pub root: &'static str,
    /// Every file of the folder.
    pub files: &'static [EmbeddedFile],
}

/// The SQL of one phase of one version, for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseSql<'a> {
    /// The SQL text.
    pub text: &'a str,
    /// Lowercase hex SHA-256 of `text`.
    pub checksum: &'a str,
    /// The file it came from, relative to the catalog folder.
    pub file: &'a str,
}

#[derive(Debug, Clone)]
struct PhaseFile {
    phase: Phase,
    backend: Option<&'static str>,
    /// The file's text with line endings normalized (see [`normalize`]).
    text: String,
    /// SHA-256 of `text`.
    checksum: String,
    /// Checksums an earlier release may have recorded for the same text:
    /// it hashed the bytes as checked out (CRLF or LF, with or without a
    /// UTF-8 byte order mark). Read where a backend verifies history.
    legacy: Vec<String>,
    file: String,
}

/// One version of the catalog.
#[derive(Debug, Clone)]
pub struct CatalogVersion {
    version: Version,
    name: String,
    files: Vec<PhaseFile>,
    /// The backends a change file limits the version to (`None`: all).
    backends: Option<Vec<&'static str>>,
    /// What its change file runs after expand's transaction, per backend.
    after_expand: generated::AfterExpand,
}

impl CatalogVersion {
    /// Whether the version is written for `backend`: always, unless its
    /// `change.toml` names the backends it is for
    /// ([`Change::backends`](crate::change::Change::backends)).
    pub fn supports(&self, backend: &str) -> bool {
        self.backends
            .as_ref()
            .is_none_or(|list| list.contains(&backend))
    }

    /// The backfills its `change.toml` generates for `backend`, in order:
    /// they run after expand's SQL (see [`Backfill`](crate::change::Backfill)).
    pub fn backfills<'a>(
        &'a self,
        backend: &'a str,
    ) -> impl Iterator<Item = &'a crate::change::Backfill> + 'a {
        generated::for_backend(&self.after_expand.backfills, backend)
    }

    /// The indexes its `change.toml` builds for `backend` after expand's
    /// transaction, before its backfills, in order (PostgreSQL's `CREATE INDEX
    /// CONCURRENTLY`: see [`ConcurrentIndex`](crate::change::ConcurrentIndex)).
    pub fn indexes<'a>(
        &'a self,
        backend: &'a str,
    ) -> impl Iterator<Item = &'a crate::change::ConcurrentIndex> + 'a {
        generated::for_backend(&self.after_expand.indexes, backend)
    }

    /// The version number.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The name after the number in the folder name (`account_emails`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SQL of `phase` for `backend` (`"sqlite"` or `"postgres"`): the
    /// backend's own file if present, else the generic one, else `None`.
    pub fn phase(&self, phase: Phase, backend: &str) -> Option<PhaseSql<'_>> {
        self.pick(phase, backend).map(|f| PhaseSql {
            text: &f.text,
            checksum: &f.checksum,
            file: &f.file,
        })
    }

    fn pick(&self, phase: Phase, backend: &str) -> Option<&PhaseFile> {
        let pick = |specific: bool| {
            self.files.iter().find(|f| {
                f.phase == phase
                    && (if specific {
                        f.backend == Some(backend)
                    } else {
                        f.backend.is_none()
                    })
            })
        };
        pick(true).or_else(|| pick(false))
    }
}

/// The ordered versions of a schema, validated: numbered 1, 2, 3, … without
/// gaps, each with an `expand.sql`, every file known, non-empty UTF-8.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// std::fs::create_dir(dir.path().join("0001_init"))?;
/// std::fs::write(dir.path().join("0001_init/expand.sql"), "CREATE TABLE t (id INTEGER PRIMARY KEY);")?;
/// let catalog = tandem_catalog::Catalog::from_dir(dir.path())?;
/// assert_eq!(catalog.latest().get(), 1);
/// let expand = catalog.phase(catalog.latest(), tandem_catalog::Phase::Expand, "sqlite").unwrap();
/// assert_eq!(expand.checksum.len(), 64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Catalog {
    versions: Vec<CatalogVersion>,
}

impl Catalog {
    /// Loads and validates a catalog folder at run time (for tools and tests).
    ///
    /// # Errors
    ///
    /// [`CatalogError`] naming the file or folder at fault: unreadable,
    /// badly named, unknown, empty or non-UTF-8 files, a missing
    /// `expand.sql`, gaps or duplicates in the numbering.
    pub fn from_dir(path: impl AsRef<Path>) -> Result<Catalog, CatalogError> {
        let root = path.as_ref();
        Catalog::parse(root, read_tree(root)?)
    }

    /// Validates a catalog embedded with `tandem::embed_catalog!`.
    ///
    /// # Errors
    ///
    /// As [`Catalog::from_dir`]; `embed_catalog!` already refused a
    /// malformed folder at compile time, so this fails only for an
    /// `EmbeddedCatalog` written by hand.
    pub fn from_embedded(embedded: &EmbeddedCatalog) -> Result<Catalog, CatalogError> {
        let tree = embedded
            .files
            .iter()
            .map(|f| (PathBuf::from(f.path), Some(f.contents.to_vec())))
            .collect();
        Catalog::parse(Path::new(embedded.root), tree)
    }

    /// The newest version.
    pub fn latest(&self) -> Version {
        self.versions.last().map_or(Version::FIRST, |v| v.version)
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = &CatalogVersion> {
        self.versions.iter()
    }

    /// One version, if the catalog has it.
    pub fn get(&self, version: Version) -> Option<&CatalogVersion> {
        let index = usize::try_from(version.get() - 1).ok()?;
        self.versions.get(index)
    }

    /// Shorthand for `get(version)?.phase(phase, backend)`.
    pub fn phase(&self, version: Version, phase: Phase, backend: &str) -> Option<PhaseSql<'_>> {
        self.get(version)?.phase(phase, backend)
    }

    /// A digest of `version`'s SQL for `backend`: SHA-256 over the checksums
    /// of its four phases (of the empty text for a phase without a file).
    /// Two binaries agree on a version exactly when their digests match.
    pub fn digest(&self, version: Version, backend: &str) -> String {
        let mut all = String::new();
        for phase in Phase::ALL {
            let checksum = self
                .phase(version, phase, backend)
                .map_or_else(|| sha256_hex(""), |p| p.checksum.to_owned());
            all.push_str(phase.as_str());
            all.push(':');
            all.push_str(&checksum);
            all.push(';');
        }
        sha256_hex(&all)
    }

    /// Whether `recorded` (a checksum from the history table) is the
    /// checksum of this catalog's `phase` of `version` for `backend`: of its
    /// normalized text, or one an earlier release recorded for the same text
    /// checked out with other line endings or a byte order mark. A phase
    /// without a file has the checksum of the empty text.
    pub fn accepts(&self, version: Version, phase: Phase, backend: &str, recorded: &str) -> bool {
        match self.get(version).and_then(|v| v.pick(phase, backend)) {
            Some(f) => f.checksum == recorded || f.legacy.iter().any(|l| l == recorded),
            None => sha256_hex("") == recorded,
        }
    }

    fn parse(root: &Path, tree: Tree) -> Result<Catalog, CatalogError> {
        // Group files by version folder; files at the top may only be notes.
        let mut folders: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (rel, bytes) in tree {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match (parts.as_slice(), bytes) {
                ([file], Some(_)) if file.ends_with(".md") => {}
                ([folder, file], Some(bytes)) => folders
                    .entry(folder.clone())
                    .or_default()
                    .push((file.clone(), bytes)),
                ([folder], None) => {
                    folders.entry(folder.clone()).or_default();
                }
                _ => {
                    return Err(CatalogError::UnknownFile {
                        path: root.join(rel),
                    })
                }
            }
        }

        let mut numbered = Vec::new();
        for (folder, files) in folders {
            let (number, name) =
                parse_folder_name(&folder).ok_or_else(|| CatalogError::BadFolderName {
                    path: root.join(&folder),
                })?;
            let name = name.to_owned();
            numbered.push((number, folder, name, files));
        }
        numbered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        if numbered.is_empty() {
            return Err(CatalogError::NoVersions {
                path: root.to_owned(),
            });
        }

        let mut versions: Vec<CatalogVersion> = Vec::with_capacity(numbered.len());
        let mut previous_folder = String::new();
        for (number, folder, name, files) in numbered {
            if versions.last().is_some_and(|v| v.version.get() == number) {
                return Err(CatalogError::Duplicate {
                    version: number,
                    first: root.join(&previous_folder),
                    second: root.join(&folder),
                });
            }
            let expected = versions.last().map_or(1, |v| v.version.get() + 1);
            let version = match Version::new(number) {
                Some(v) if number == expected => v,
                _ => {
                    return Err(CatalogError::Gap {
                        expected,
                        found: number,
                        path: root.join(&folder),
                    })
                }
            };
            versions.push(parse_version(root, &folder, version, &name, files)?);
            previous_folder = folder;
        }
        Ok(Catalog { versions })
    }
}

/// `0002_account_emails` → `(2, "account_emails")`.
fn parse_folder_name(folder: &str) -> Option<(u32, &str)> {
    let (digits, name) = folder.split_once('_')?;
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || !valid_name {
        return None;
    }
    Some((digits.parse().ok()?, name))
}

/// `expand.sql` → `(Expand, None)`; `switch.postgres.sql` → `(Switch, Some("postgres"))`.
fn parse_file_name(file: &str) -> Option<(Phase, Option<&'static str>)> {
    let stem = file.strip_suffix(".sql")?;
    let (phase, backend) = match stem.split_once('.') {
        Some((phase, backend)) => (
            phase,
            Some(BACKEND_NAMES.into_iter().find(|b| *b == backend)?),
        ),
        None => (stem, None),
    };
    Some((Phase::parse(phase)?, backend))
}

fn parse_version(
    root: &Path,
    folder: &str,
    version: Version,
    name: &str,
    files: Vec<(String, Vec<u8>)>,
) -> Result<CatalogVersion, CatalogError> {
    let mut parsed = Vec::new();
    let mut change = None;
    for (file, bytes) in files {
        let path = root.join(folder).join(&file);
        if file.ends_with(".md") {
            continue;
        }
        if file == CHANGE_FILE {
            let text = String::from_utf8(bytes)
                .map_err(|_| CatalogError::NotUtf8 { path: path.clone() })?;
            change = Some((
                crate::change::Change::parse(&normalize(&text), &path)?,
                path,
            ));
            continue;
        }
        parsed.push(parse_phase_file(folder, &file, path, version, bytes)?);
    }
    let mut backends = None;
    let mut after_expand = generated::AfterExpand::default();
    if let Some((change, path)) = &change {
        let supported = change.for_backends(path)?;
        let (mut generated, after) =
            generated_files(folder, version, change, path, &parsed, &supported)?;
        after_expand = after;
        if supported.len() < BACKEND_NAMES.len() {
            backends = Some(supported);
        }
        // First: `pick` takes the first file that matches.
        generated.append(&mut parsed);
        parsed = generated;
    }
    let has = |backend: Option<&str>| {
        parsed
            .iter()
            .any(|f| f.phase == Phase::Expand && f.backend == backend)
    };
    if change.is_none() && !has(None) && !BACKEND_NAMES.iter().all(|b| has(Some(b))) {
        return Err(CatalogError::MissingExpand {
            path: root.join(folder),
        });
    }
    Ok(CatalogVersion {
        version,
        name: name.to_owned(),
        files: parsed,
        backends,
        after_expand,
    })
}

/// A hand-written phase file (`expand.sql`, `switch.postgres.sql`, …), read
/// and checked.
fn parse_phase_file(
    folder: &str,
    file: &str,
    path: PathBuf,
    version: Version,
    bytes: Vec<u8>,
) -> Result<PhaseFile, CatalogError> {
    let (phase, backend) =
        parse_file_name(file).ok_or_else(|| CatalogError::UnknownFile { path: path.clone() })?;
    if version == Version::FIRST && phase != Phase::Expand {
        return Err(CatalogError::FirstVersionPhase { path });
    }
    let text =
        String::from_utf8(bytes).map_err(|_| CatalogError::NotUtf8 { path: path.clone() })?;
    if text.trim().is_empty() {
        return Err(CatalogError::Empty { path });
    }
    let text = normalize(&text);
    match crate::sql_check::transaction_control(&text, backend) {
        crate::sql_check::Check::Clean => {}
        crate::sql_check::Check::TransactionControl(found) => {
            return Err(CatalogError::TransactionControl {
                path,
                line: found.line,
                statement: found.statement,
            })
        }
        crate::sql_check::Check::Unreadable { message } => {
            return Err(CatalogError::Unreadable { path, message })
        }
    }
    Ok(PhaseFile {
        phase,
        backend,
        checksum: sha256_hex(&text),
        legacy: legacy_checksums(&text),
        text,
        file: format!("{folder}/{file}"),
    })
}

/// A phase file's text as tandem runs and hashes it: a leading UTF-8 byte
/// order mark removed and every CRLF turned into LF, so that a checkout
/// with Windows line endings (`core.autocrlf`) is the same SQL as one
/// without. Lone CRs and every other byte are kept.
pub(crate) fn normalize(text: &str) -> String {
    text.strip_prefix('\u{feff}')
        .unwrap_or(text)
        .replace("\r\n", "\n")
}

/// The checksums releases before normalization recorded for files whose
/// normalized text is `text`: the bytes as they were checked out, with CRLF
/// or LF line endings, with or without a byte order mark.
fn legacy_checksums(text: &str) -> Vec<String> {
    let crlf = text.replace('\n', "\r\n");
    let mut sums = vec![
        sha256_hex(&crlf),
        sha256_hex(&format!("\u{feff}{text}")),
        sha256_hex(&format!("\u{feff}{crlf}")),
    ];
    sums.dedup();
    sums.retain(|s| *s != sha256_hex(text));
    sums
}

/// Lowercase hex SHA-256 of a phase's text, as stored in the history table.
///
/// ```
/// assert_eq!(
///     tandem_catalog::sha256_hex(""),
///     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/// );
/// ```
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

mod tree;
pub use tree::embeddable_files;
pub(crate) use tree::{read_tree, Tree};
mod generated;
use generated::{generated_files, CHANGE_FILE};

#[cfg(test)]
mod tests;
