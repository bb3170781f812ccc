//! Bindings per repository trait, and the session a call runs in.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::version::Version;

/// The bindings of one application repository trait `R`, one per schema
/// version, contiguous. Cheap to share: build it once, keep it beside the
/// [`Tandem`](crate::Tandem) handle.
///
/// ```
/// use std::sync::Arc;
/// use tandem::Repository;
///
/// trait Greeter: Send + Sync { fn hello(&self) -> &'static str; }
/// struct V1; impl Greeter for V1 { fn hello(&self) -> &'static str { "v1" } }
/// struct V2; impl Greeter for V2 { fn hello(&self) -> &'static str { "v2" } }
///
/// let greeters = Repository::<dyn Greeter>::builder("greeters")
///     .binding(1, Arc::new(V1))
///     .binding(2, Arc::new(V2))
///     .build()?;
/// assert_eq!(greeters.versions(), tandem::Version::new(1).unwrap()..=tandem::Version::new(2).unwrap());
///
/// // A gap is refused.
/// let gap = Repository::<dyn Greeter>::builder("gap").binding(1, Arc::new(V1)).binding(3, Arc::new(V2)).build();
/// assert!(matches!(gap, Err(tandem::Error::BindingGap { .. })));
/// # Ok::<(), tandem::Error>(())
/// ```
pub struct Repository<R: ?Sized> {
    name: Arc<str>,
    first: Version,
    bindings: Arc<[Arc<R>]>,
}

/// Cheap: two reference counts, no allocation (hold one per thread or task).
impl<R: ?Sized> Clone for Repository<R> {
    fn clone(&self) -> Self {
        Repository {
            name: Arc::clone(&self.name),
            first: self.first,
            bindings: Arc::clone(&self.bindings),
        }
    }
}

impl<R: ?Sized> fmt::Debug for Repository<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("name", &self.name)
            .field("versions", &self.versions())
            .finish()
    }
}

impl<R: ?Sized> Repository<R> {
    /// Starts a repository named `name` (the name appears in errors).
    pub fn builder(name: impl Into<String>) -> RepositoryBuilder<R> {
        RepositoryBuilder {
            name: name.into(),
            entries: Vec::new(),
            invalid: None,
        }
    }

    /// The repository's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The versions it has bindings for.
    pub fn versions(&self) -> RangeInclusive<Version> {
        let last = u32::try_from(self.bindings.len())
            .ok()
            .and_then(|n| Version::new(self.first.get() + n.saturating_sub(1)))
            .unwrap_or(self.first);
        self.first..=last
    }

    /// The binding for `version`.
    ///
    /// # Errors
    ///
    /// [`Error::NoBinding`] if the repository has none for it.
    #[inline]
    pub fn get(&self, version: Version) -> Result<&R> {
        let index = version.get().wrapping_sub(self.first.get()) as usize;
        match self.bindings.get(index) {
            Some(binding) => Ok(binding),
            None => Err(self.no_binding(version)),
        }
    }

    #[cold]
    fn no_binding(&self, live: Version) -> Error {
        let versions = self.versions();
        Error::NoBinding {
            repository: self.name.to_string(),
            live,
            first: *versions.start(),
            last: *versions.end(),
        }
    }
}

/// Collects a repository's bindings; [`build`](RepositoryBuilder::build)
/// checks them.
pub struct RepositoryBuilder<R: ?Sized> {
    name: String,
    entries: Vec<(Version, Arc<R>)>,
    invalid: Option<u32>,
}

impl<R: ?Sized> fmt::Debug for RepositoryBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<R: ?Sized> RepositoryBuilder<R> {
    /// Registers `binding` for schema `version`.
    pub fn binding(mut self, version: u32, binding: Arc<R>) -> Self {
        match Version::new(version) {
            Some(v) => self.entries.push((v, binding)),
            None => self.invalid = Some(version),
        }
        self
    }

    /// Registers one binding for several versions (a repository whose tables
    /// did not change between them).
    pub fn bindings(mut self, versions: RangeInclusive<u32>, binding: Arc<R>) -> Self {
        for v in versions {
            self = self.binding(v, Arc::clone(&binding));
        }
        self
    }

    /// Checks the bindings and builds the repository.
    ///
    /// # Errors
    ///
    /// [`Error::NoBindings`], [`Error::DuplicateBinding`], [`Error::BindingGap`],
    /// or [`Error::InvalidVersion`] for version 0.
    pub fn build(self) -> Result<Repository<R>> {
        if let Some(value) = self.invalid {
            return Err(Error::InvalidVersion {
                value: i64::from(value),
                context: "Repository binding",
            });
        }
        let mut entries = self.entries;
        entries.sort_by_key(|(v, _)| *v);
        let Some(first) = entries.first().map(|(v, _)| *v) else {
            return Err(Error::NoBindings {
                repository: self.name,
            });
        };
        for pair in entries.windows(2) {
            let (a, b) = (pair[0].0, pair[1].0);
            if a == b {
                return Err(Error::DuplicateBinding {
                    repository: self.name,
                    version: a,
                });
            }
            if a.next() != Some(b) {
                return Err(Error::BindingGap {
                    repository: self.name,
                    before: a,
                    after: b,
                });
            }
        }
        Ok(Repository {
            name: self.name.into(),
            first,
            bindings: entries.into_iter().map(|(_, b)| b).collect(),
        })
    }
}

/// What a call runs in: one connection and one schema version, fixed for
/// the whole call. Bindings chosen through it all belong to that version.
pub struct Session<'c, B: Backend> {
    conn: &'c mut B::Connection,
    version: Version,
}

impl<B: Backend> fmt::Debug for Session<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<'c, B: Backend> Session<'c, B> {
    pub(crate) fn new(conn: &'c mut B::Connection, version: Version) -> Self {
        Session { conn, version }
    }

    /// The connection, for the binding's diesel queries.
    #[inline]
    pub fn conn(&mut self) -> &mut B::Connection {
        self.conn
    }

    /// The schema version this call runs against.
    #[inline]
    pub fn version(&self) -> Version {
        self.version
    }

    /// Version gate for features that need schema `version` or later; the
    /// answer cannot change during the call.
    #[inline]
    pub fn at_least(&self, version: u32) -> bool {
        self.version.get() >= version
    }

    /// The binding of `repository` for this call's version.
    ///
    /// # Errors
    ///
    /// [`Error::NoBinding`] if the repository has none for it.
    #[inline]
    pub fn repo<'r, R: ?Sized>(&self, repository: &'r Repository<R>) -> Result<&'r R> {
        repository.get(self.version)
    }
}

/// The version a call runs with, from the live version as read (the
/// process's cache on the steady path, the state row under the shared lock
/// on the locking path): one the binary serves, or the typed error before
/// any of the call's statements run. `state_table` names the table a
/// version no row can hold came from.
#[inline]
pub(crate) fn serve(
    live: i64,
    served: &RangeInclusive<Version>,
    state_table: &str,
) -> Result<Version> {
    match u32::try_from(live).ok().and_then(Version::new) {
        Some(v) if served.contains(&v) => Ok(v),
        Some(live) => Err(not_served(live, served)),
        None => Err(Error::MetadataCorrupt {
            table: state_table.to_owned(),
            detail: format!("live version {live}"),
        }),
    }
}

#[cold]
fn not_served(live: Version, served: &RangeInclusive<Version>) -> Error {
    let (first, last) = (*served.start(), *served.end());
    if live < first {
        Error::Upgrading { live, first, last }
    } else {
        Error::VersionNotServed { live, first, last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Named: Send + Sync {
        fn version(&self) -> u32;
    }
    struct Fake(u32);
    impl Named for Fake {
        fn version(&self) -> u32 {
            self.0
        }
    }

    fn v(n: u32) -> Version {
        Version::new(n).unwrap()
    }

    #[test]
    fn picks_the_binding_of_each_version() {
        let repo = Repository::<dyn Named>::builder("r")
            .binding(3, Arc::new(Fake(3)))
            .binding(2, Arc::new(Fake(2)))
            .build()
            .unwrap();
        assert_eq!(repo.get(v(2)).unwrap().version(), 2);
        assert_eq!(repo.get(v(3)).unwrap().version(), 3);
        assert_eq!(repo.versions(), v(2)..=v(3));
        for missing in [1, 4, 100] {
            match repo.get(v(missing)) {
                Err(Error::NoBinding {
                    live,
                    first,
                    last,
                    repository,
                }) => {
                    assert_eq!(
                        (live, first, last, repository.as_str()),
                        (v(missing), v(2), v(3), "r")
                    );
                }
                other => panic!("expected NoBinding, got {:?}", other.map(|b| b.version())),
            }
        }
    }

    #[test]
    fn a_clone_shares_the_bindings() {
        let repo = Repository::<dyn Named>::builder("r")
            .binding(1, Arc::new(Fake(1)))
            .binding(2, Arc::new(Fake(2)))
            .build()
            .unwrap();
        let copy = repo.clone();
        assert!(Arc::ptr_eq(&repo.bindings, &copy.bindings));
        assert!(Arc::ptr_eq(&repo.name, &copy.name));
        let moved = std::thread::spawn(move || copy.get(v(2)).map(|b| b.version()))
            .join()
            .unwrap();
        assert_eq!(moved.unwrap(), 2);
    }

    #[test]
    fn one_binding_may_serve_a_range() {
        let repo = Repository::<dyn Named>::builder("r")
            .bindings(1..=3, Arc::new(Fake(0)))
            .build()
            .unwrap();
        assert_eq!(repo.versions(), v(1)..=v(3));
    }

    #[test]
    fn registration_errors() {
        let dup = Repository::<dyn Named>::builder("r")
            .binding(1, Arc::new(Fake(1)))
            .binding(1, Arc::new(Fake(1)))
            .build();
        assert!(matches!(dup, Err(Error::DuplicateBinding { .. })));
        let empty = Repository::<dyn Named>::builder("r").build();
        assert!(matches!(empty, Err(Error::NoBindings { .. })));
        let zero = Repository::<dyn Named>::builder("r")
            .binding(0, Arc::new(Fake(0)))
            .build();
        assert!(matches!(zero, Err(Error::InvalidVersion { value: 0, .. })));
        let gap = Repository::<dyn Named>::builder("accounts")
            .binding(1, Arc::new(Fake(1)))
            .binding(3, Arc::new(Fake(3)))
            .build()
            .unwrap_err();
        assert!(gap.to_string().contains("accounts"));
        assert!(
            matches!(gap, Error::BindingGap { before, after, .. } if before == v(1) && after == v(3))
        );
    }

    /// The locking path's dispatch on the fake backend: the version read
    /// under the database's shared lock picks the binding, and a version
    /// the binary does not serve fails before any statement of the call.
    #[test]
    fn the_version_read_under_the_shared_lock_picks_the_binding() {
        use crate::backend::fake::{Fake as FakeBackend, FakeDb};
        use crate::backend::Locks;
        let repo = Repository::<dyn Named>::builder("r")
            .bindings(1..=2, Arc::new(Fake(1)))
            .binding(3, Arc::new(Fake(3)))
            .build()
            .unwrap();
        let served = v(2)..=v(3);
        let call = |db: &std::sync::Arc<FakeDb>| -> Result<u32> {
            let mut conn = db.connect();
            let live = FakeBackend::enter_shared(&mut conn, "t_", "t_state", 1)?;
            let version = serve(live, &served, "t_state")?;
            Ok(repo.get(version)?.version())
        };
        assert_eq!(call(&FakeDb::new(2)).unwrap(), 1);
        assert_eq!(call(&FakeDb::new(3)).unwrap(), 3);
        assert!(matches!(
            call(&FakeDb::new(1)),
            Err(Error::Upgrading { live, first, last }) if live == v(1) && first == v(2) && last == v(3)
        ));
        assert!(matches!(
            call(&FakeDb::new(4)),
            Err(Error::VersionNotServed { live, .. }) if live == v(4)
        ));
        for corrupt in [0, -1, i64::from(u32::MAX) + 1] {
            let e = call(&FakeDb::new(corrupt)).unwrap_err();
            assert!(
                matches!(&e, Error::MetadataCorrupt { table, detail } if table == "t_state" && detail == &format!("live version {corrupt}")),
                "{e}"
            );
        }
    }
}
