//! The kit: a catalog, fresh databases and the handle settings; the staged
//! transition from N-1 to N and its checks.

use super::*;

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

    /// The change from `to - 1` to `to`, once its SQL passes the
    /// phase-aware lint ([`Catalog::lint`]) on the kit's backend.
    ///
    /// # Errors
    ///
    /// [`Failure::BadTransition`] for version 1 (nothing before it) or a
    /// version beyond the catalog; [`Failure::Lint`] naming each statement
    /// a rule of its phase refuses (a drop in expand, say), with what to
    /// write instead.
    pub fn transition(&self, to: u32) -> Result<Transition<'_, B>, Failure> {
        let bad = |reason: String| Failure::BadTransition { to, reason };
        let version = Version::new(to).ok_or_else(|| bad("versions start at 1".to_owned()))?;
        let previous = version.previous().ok_or_else(|| {
            bad("version 1 is the initial schema; test changes from 2 on".to_owned())
        })?;
        let latest = self.catalog.latest();
        let Some(entry) = self.catalog.get(version) else {
            return Err(bad(format!("the catalog ends at version {latest}")));
        };
        let report = entry.lint(B::NAME).map_err(|e| bad(e.to_string()))?;
        if !report.is_clean() {
            return Err(Failure::Lint {
                to: version,
                backend: B::NAME,
                findings: report.findings,
            });
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

    /// Moves the database to `stage` with the kit's upgrader, and
    /// [`at`](Staged::at) with it: the next stage of [`Stage::ALL`], or from
    /// switched to [`Stage::SwitchedBack`] and back. (Run phases this way,
    /// not with the handle's upgrader, or `at` no longer says where the
    /// database is.)
    ///
    /// # Errors
    ///
    /// [`Failure::BadTransition`] for any other move (a stage skipped, or
    /// backwards), [`Failure::Setup`] if the phase fails.
    pub fn advance(&mut self, stage: Stage) -> Result<(), Failure> {
        let at = At {
            stage,
            to: self.at.to,
        };
        let allowed = matches!(
            (self.at.stage, stage),
            (Stage::PreviousStable, Stage::Expanded)
                | (Stage::Expanded, Stage::Switched)
                | (Stage::Switched, Stage::Contracted | Stage::SwitchedBack)
                | (Stage::SwitchedBack, Stage::Switched)
        );
        if !allowed {
            return Err(Failure::BadTransition {
                to: self.at.to.get(),
                reason: format!(
                    "a database at {} cannot move to {at}: stages go stable, expanded, switched \
                     (and back, and switched again), contracted",
                    self.at
                ),
            });
        }
        let up = self.handle().upgrader();
        let (step, result) = match stage {
            Stage::PreviousStable => ("upgrade_to", Ok(())), // where every database starts
            Stage::Expanded => ("expand", up.expand().map(drop)),
            Stage::Switched => ("switch", up.switch().map(drop)),
            Stage::Contracted => ("contract", up.contract().map(drop)),
            Stage::SwitchedBack => ("switch_back", up.switch_back().map(drop)),
        };
        result.map_err(|source| Failure::Setup { at, step, source })?;
        self.at = at;
        Ok(())
    }
}

/// The change from N-1 to N under test (see the [module](crate::testing) docs).
#[derive(Debug)]
pub struct Transition<'k, B: Backend> {
    kit: &'k Kit<B>,
    previous: Version,
    to: Version,
}

impl<B: Backend> Transition<'_, B> {
    /// Whether N has switch SQL on the kit's backend (then the N-1
    /// binding's rollback is checked after a switch back, not on the
    /// switched schema).
    fn has_switch_sql(&self) -> bool {
        self.kit
            .catalog
            .phase(self.to, crate::Phase::Switch, B::NAME)
            .is_some()
    }

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
        // Switched back: by way of the switch.
        let forward_to = if stage == Stage::SwitchedBack {
            Stage::Switched
        } else {
            stage
        };
        for next in Stage::ALL.into_iter().skip(1) {
            if staged.at.stage == forward_to {
                break;
            }
            staged.advance(next)?;
        }
        if stage == Stage::SwitchedBack {
            staged.advance(Stage::SwitchedBack)?;
        }
        Ok(staged)
    }

    /// Runs `test` with each binding of `repository` in each stage where it
    /// must work (see the table in the [module](crate::testing) docs), on a fresh
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
            let mut staged = self.fresh_at(stage)?;
            let mut bindings = stage.bindings(self.to);
            if stage == Stage::Switched && self.has_switch_sql() {
                bindings.reverse(); // N on the switched schema first
            }
            for binding in bindings {
                if stage == Stage::Switched && binding == self.previous && self.has_switch_sql() {
                    // N-1 never runs on N's switched schema (the switch is
                    // atomic for calls); it runs again after a switch back.
                    staged.advance(Stage::SwitchedBack)?;
                }
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
        if !self.has_switch_sql() {
            verify(&db, repository, old, &written, &read)?;
        }
        db.advance(Stage::SwitchedBack)?;
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
