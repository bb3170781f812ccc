//! Calls: the steady path and the locking path of `call` and `unit_of_work`,
//! and the write transactions under the in-process gate.

use super::*;

impl<B: Backend> Tandem<B> {
    /// Runs one repository call: picks `repository`'s binding for the live
    /// version and runs `f` with it, holding the schema read lock from
    /// reading the version until `f` returns, so the version cannot change
    /// during the call.
    ///
    /// ## Atomicity
    ///
    /// `call` does not make a binding's statements one atomic write. On the
    /// steady path they run as the binding issues them (each in its own
    /// autocommit transaction, unless the binding opens one); on the locking
    /// path (deploying mode, a stale lease) they run inside the call's own
    /// transaction, which rolls back if `f` returns an error. So a binding
    /// that writes and then fails may leave its writes (steady) or not
    /// (locking). Writes that must be all or nothing go through
    /// [`unit_of_work`](Tandem::unit_of_work), one transaction on both
    /// paths, or inside a transaction the binding opens itself
    /// (`conn.transaction(..)`, a savepoint on the locking path).
    /// `tests/bad_input.rs` (c35) shows each case on both backends.
    ///
    /// # Errors
    ///
    /// [`Error::Upgrading`] (database behind the binary),
    /// [`Error::VersionNotServed`] (ahead) or [`Error::NoBinding`] before any
    /// query runs, [`Error::Pool`] when no connection is free in time, and
    /// whatever `f` returns.
    #[inline]
    pub fn call<R, T, E, F>(&self, repository: &Repository<R>, f: F) -> Result<T, E>
    where
        R: ?Sized,
        F: FnOnce(&R, &mut Session<'_, B>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut conn = self.connection()?;
        let read = self.inner.lock.read();
        let result =
            if self.inner.path.load(Ordering::Acquire) == fleet::STEADY && self.lease_fresh() {
                let version = self.served_live()?;
                let binding = repository.get(version)?;
                let result = f(binding, &mut Session::new(&mut *conn, version));
                drop(read);
                result
            } else {
                drop(read);
                self.check_lease();
                self.call_locking(&mut *conn, repository, f)
            };
        if result.is_err() {
            self.after_failure(conn);
        }
        result
    }

    /// After a failed call: if its connection is broken (the server
    /// restarted, the backend was terminated), the pool discards it, and
    /// the idle connections are checked so that no other broken one is
    /// handed out again.
    #[cold]
    #[inline(never)]
    fn after_failure(&self, mut conn: Conn<B>) {
        if diesel::r2d2::R2D2Connection::is_broken(&mut *conn) {
            drop(conn);
            self.sweep_pool();
        }
    }

    /// Pings every idle pooled connection once (none is handed out
    /// meanwhile) and lets the pool discard those that fail.
    #[cold]
    pub(crate) fn sweep_pool(&self) {
        let pool = &self.inner.pool;
        let mut good = Vec::new();
        let mut broken = 0u32;
        for _ in 0..pool.max_size() {
            let Some(mut c) = pool.try_get() else { break };
            if diesel::r2d2::R2D2Connection::ping(&mut *c).is_ok() {
                good.push(c);
            } else {
                broken += 1; // dropped broken: the pool discards it
            }
        }
        drop(good);
        if broken > 0 {
            tracing::warn!(
                broken,
                "discarded pooled connections the database had closed (a restart, a terminated backend)"
            );
        }
    }

    /// The locking path of [`call`](Tandem::call): the call runs in its own
    /// transaction, which takes the database's shared schema lock and reads
    /// the live version first.
    #[cold]
    fn call_locking<R, T, E, F>(
        &self,
        conn: &mut B::Connection,
        repository: &Repository<R>,
        f: F,
    ) -> Result<T, E>
    where
        R: ?Sized,
        F: FnOnce(&R, &mut Session<'_, B>) -> Result<T, E>,
        E: From<Error>,
    {
        let result: Result<T, Locked<E>> = self.write_transaction(conn, |c| {
            let version = self.enter_shared(c).map_err(Locked::Tandem)?;
            let binding = repository.get(version).map_err(Locked::Tandem)?;
            f(binding, &mut Session::new(c, version)).map_err(Locked::App)
        });
        result.map_err(|e| match e {
            Locked::App(e) => e,
            Locked::Tandem(e) => E::from(e),
            Locked::Db(e) => E::from(Error::Query(e)),
        })
    }

    /// Runs a unit of work: several repository calls in one write
    /// transaction, all with one version. Pick bindings with
    /// [`Session::repo`].
    ///
    /// On SQLite this is the way to write: the transaction starts with
    /// `BEGIN IMMEDIATE`, and this process's units of work queue for
    /// SQLite's single write lock in-process, fairly and without sleeping
    /// (writes made by [`call`](Tandem::call) in autocommit mode wait in
    /// SQLite's busy handler instead, which sleeps 1 to 100 ms).
    ///
    /// All of `f`'s statements commit together or not at all, on the
    /// steady and the locking path alike.
    ///
    /// # Errors
    ///
    /// As [`call`](Tandem::call); the transaction rolls back if `f` fails.
    pub fn unit_of_work<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Session<'_, B>) -> Result<T, E>,
        E: From<Error> + From<diesel::result::Error>,
    {
        let mut conn = self.connection()?;
        let read = self.inner.lock.read();
        let result = if self.inner.path.load(Ordering::Acquire) == fleet::STEADY
            && self.lease_fresh()
        {
            let version = self.served_live()?;
            let result = self.write_transaction(&mut conn, |c| f(&mut Session::new(c, version)));
            drop(read);
            result
        } else {
            drop(read);
            self.check_lease();
            self.write_transaction(&mut conn, |c| {
                let version = self.enter_shared(c)?;
                f(&mut Session::new(c, version))
            })
        };
        if result.is_err() {
            self.after_failure(conn);
        }
        result
    }

    /// A write transaction behind this process's write gate (where the
    /// backend queues writers). Callers holding the schema lock take it first.
    pub(crate) fn write_transaction<T, E, F>(&self, conn: &mut B::Connection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut B::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let _gate =
            (B::QUEUE_WRITERS && self.inner.queue_writers).then(|| self.inner.write_gate.lock());
        B::write_transaction(conn, f)
    }

    /// Sets the phase lock timeout inside the current transaction.
    pub(crate) fn ddl_preamble(&self, conn: &mut B::Connection) -> Result<()> {
        if let Some(sql) = B::lock_timeout_sql(self.inner.lock_timeout) {
            B::execute(conn, &sql, &[])?;
        }
        Ok(())
    }

    /// Locking path: the database's shared schema lock and the live version,
    /// inside the current transaction. Its duration counts as lock wait.
    fn enter_shared(&self, conn: &mut B::Connection) -> Result<Version> {
        let inner = &self.inner;
        let start = Instant::now();
        let raw = B::enter_shared(
            conn,
            inner.store.prefix(),
            inner.store.state_table(),
            inner.lock_key,
        )
        .map_err(|e| match e {
            diesel::result::Error::NotFound => inner.store.state_row_missing(),
            e => Error::Query(e),
        })?;
        inner.lock.record_wait(start.elapsed());
        let live = u32::try_from(raw).unwrap_or(0);
        match Version::new(live) {
            Some(v) if v >= inner.first && v <= inner.last => Ok(v),
            _ => Err(self.not_served(live)),
        }
    }

    #[inline]
    fn served_live(&self) -> Result<Version> {
        let live = self.inner.live.load(Ordering::Acquire);
        match Version::new(live) {
            Some(v) if v >= self.inner.first && v <= self.inner.last => Ok(v),
            _ => Err(self.not_served(live)),
        }
    }

    #[cold]
    fn not_served(&self, live: u32) -> Error {
        let (first, last) = (self.inner.first, self.inner.last);
        match Version::new(live) {
            Some(live) if live < first => Error::Upgrading { live, first, last },
            Some(live) => Error::VersionNotServed { live, first, last },
            None => Error::MetadataCorrupt {
                table: self.inner.store.state_table().to_owned(),
                detail: "live version 0".to_owned(),
            },
        }
    }
}

/// The error of a locking-path call: the application's, tandem's, or the
/// transaction's own.
enum Locked<E> {
    App(E),
    Tandem(Error),
    Db(diesel::result::Error),
}

impl<E> From<diesel::result::Error> for Locked<E> {
    fn from(e: diesel::result::Error) -> Self {
        Locked::Db(e)
    }
}
