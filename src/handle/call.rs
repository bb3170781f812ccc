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
        let read = self.shared.lock.read();
        let result = if self.shared.steady() {
            let version = self.served_live()?;
            let binding = repository.get(version)?;
            let result = f(binding, &mut Session::new(&mut *conn, version));
            drop(read);
            result
        } else {
            drop(read);
            fleet::check_lease(&self.shared);
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
            self.shared.sweep_pool();
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
        let result: Result<T, CallError<E>> = self.shared.write_transaction(conn, |c| {
            let version = self.enter_shared(c).map_err(CallError::Tandem)?;
            let binding = repository.get(version).map_err(CallError::Tandem)?;
            f(binding, &mut Session::new(c, version)).map_err(CallError::App)
        });
        result.map_err(|e| match e {
            CallError::App(e) => e,
            CallError::Tandem(e) => E::from(e),
            CallError::Db(e) => E::from(Error::Query(e)),
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
        let read = self.shared.lock.read();
        let result = if self.shared.steady() {
            let cached = self.served_live()?;
            let result = self.shared.write_transaction(&mut conn, |c| {
                // The wait for the write turn (SQLite: its write lock, for
                // up to the busy timeout) can outlast the lease, and a
                // switch commit meanwhile without this instance. With the
                // turn held, the cached version stands only while the
                // steady path is still open; otherwise the transaction
                // reads the live version as the locking path does.
                let version = if self.shared.steady() {
                    cached
                } else {
                    self.enter_shared(c)?
                };
                f(&mut Session::new(c, version))
            });
            drop(read);
            result
        } else {
            drop(read);
            fleet::check_lease(&self.shared);
            self.shared.write_transaction(&mut conn, |c| {
                let version = self.enter_shared(c)?;
                f(&mut Session::new(c, version))
            })
        };
        if result.is_err() {
            self.after_failure(conn);
        }
        result
    }

    /// Locking path: the database's shared schema lock and the live version,
    /// inside the current transaction. Its duration counts as lock wait.
    fn enter_shared(&self, conn: &mut B::Connection) -> Result<Version> {
        let shared = &self.shared;
        let start = Instant::now();
        let raw = shared.enter_shared(conn)?;
        shared.lock.record_wait(start.elapsed());
        dispatch::serve(raw, &shared.served(), shared.store.state_table())
    }

    #[inline]
    fn served_live(&self) -> Result<Version> {
        let live = self.shared.live.load(Ordering::Acquire);
        dispatch::serve(
            i64::from(live),
            &self.shared.served(),
            self.shared.store.state_table(),
        )
    }
}

/// The error of a locking-path call: the application's, tandem's, or the
/// transaction's own.
enum CallError<E> {
    App(E),
    Tandem(Error),
    Db(diesel::result::Error),
}

impl<E> From<diesel::result::Error> for CallError<E> {
    fn from(e: diesel::result::Error) -> Self {
        CallError::Db(e)
    }
}
