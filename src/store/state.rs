//! The state row: reading it, moving it between phases and modes, and the
//! upgrade lease on it.

use super::*;

impl Store {
    /// Reads the state row. The database's clock decides whether the
    /// upgrader lease has expired.
    pub(crate) fn read_state<B: Backend>(&self, conn: &mut B::Connection) -> Result<State> {
        self.read_state_as::<B>(conn, "")
    }

    /// Reads the state row inside a write transaction and holds it until
    /// the transaction ends: nobody takes the upgrade lease or moves the
    /// state meanwhile (see [`Dialect::HOLD_ROWS`](crate::Dialect::HOLD_ROWS)).
    pub(crate) fn read_state_held<B: Backend>(&self, conn: &mut B::Connection) -> Result<State> {
        self.read_state_as::<B>(conn, B::HOLD_ROWS)
    }

    fn read_state_as<B: Backend>(&self, conn: &mut B::Connection, hold: &str) -> Result<State> {
        let rows: Vec<StateRow> = B::load(
            conn,
            &format!(
                "SELECT version, phase, mode, epoch, owner, owner_until - {} AS owner_left FROM {} WHERE id = 1{hold}",
                B::now_ms_sql(),
                self.state
            ),
            &[],
        )?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| self.state_row_missing())?;
        self.parse_state(row)
    }

    /// The state row as read, checked.
    pub(crate) fn parse_state(&self, row: StateRow) -> Result<State> {
        let version = Version::from_i64(row.version).ok_or_else(|| {
            self.corrupt(
                &self.state,
                format!("version {} is not a positive version number", row.version),
            )
        })?;
        let phase = StatePhase::parse(&row.phase).ok_or_else(|| {
            self.corrupt(
                &self.state,
                format!("phase {:?} is not stable, expanded or switched", row.phase),
            )
        })?;
        let mode = Mode::parse(&row.mode).ok_or_else(|| {
            self.corrupt(
                &self.state,
                format!("mode {:?} is not steady or deploying", row.mode),
            )
        })?;
        // Epochs start at 1 and grow by a few per upgrade: one beyond half
        // the range was written by hand, and its next increment could
        // overflow (SQLite would turn it into a REAL).
        if row.epoch < 1 || row.epoch > i64::MAX / 2 {
            return Err(self.corrupt(
                &self.state,
                format!(
                    "epoch {} is outside any tandem writes (1 to 2^62); set it back to the \
                     epoch of a backup of this row, or to 1 with every instance stopped",
                    row.epoch
                ),
            ));
        }
        let upgrader = match (row.owner, row.owner_left) {
            (Some(owner), Some(left)) if left > 0 => Some(owner),
            _ => None,
        };
        Ok(State {
            version,
            phase,
            mode,
            epoch: row.epoch,
            upgrader,
        })
    }

    /// Compare-and-set of the state row's version and phase; requires that
    /// `owner` holds the upgrade lease. Returns the row's new epoch, or
    /// `None` if it was not at `from` under `owner`'s lease.
    pub(crate) fn transition<B: Backend>(
        &self,
        conn: &mut B::Connection,
        from: (Version, StatePhase),
        to: (Version, StatePhase),
        owner: &str,
    ) -> Result<Option<i64>> {
        let changed = B::execute(
            conn,
            &format!(
                "UPDATE {} SET version = ?, phase = ?, epoch = {} + 1, updated_at = {} \
                 WHERE id = 1 AND version = ? AND phase = ? AND owner = ?",
                self.state,
                self.next_epoch_base::<B>(),
                B::now_ms_sql()
            ),
            &[
                Bind::I64(to.0.as_i64()),
                Bind::Text(to.1.as_str()),
                Bind::I64(from.0.as_i64()),
                Bind::Text(from.1.as_str()),
                Bind::Text(owner),
            ],
        )?;
        if changed != 1 {
            return Ok(None);
        }
        // No `RETURNING` (not every dialect has it): the caller's write
        // transaction holds the row, so the epoch read now is the one just set.
        let epoch = self.read_state::<B>(conn)?.epoch;
        self.announce::<B>(conn, epoch)?;
        Ok(Some(epoch))
    }

    /// Tells listening instances (see `fleet::push`), at this transaction's
    /// commit, that the state row is now at `epoch`: a hint to poll at
    /// once, never relied on (a lost notice leaves the poll).
    fn announce<B: Backend>(&self, conn: &mut B::Connection, epoch: i64) -> Result<()> {
        if let Some(sql) = B::notify_sql() {
            B::execute(
                conn,
                sql,
                &[Bind::Text(self.channel()), Bind::Text(&epoch.to_string())],
            )?;
        }
        Ok(())
    }

    /// Takes or renews the upgrade lease for `owner`, for `lease_ms` of the
    /// database's clock, unless another holder's lease is still valid by
    /// that clock. Returns the other holder and the milliseconds its lease
    /// has left otherwise.
    pub(crate) fn try_lease<B: Backend>(
        &self,
        conn: &mut B::Connection,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<(String, i64)>> {
        let now = B::now_ms_sql();
        // (PostgreSQL, read committed: the holder seen by the update may have
        // released the lease before the select looks; then try again.)
        for _ in 0..3 {
            let changed = B::execute(
                conn,
                &format!(
                    "UPDATE {} SET owner = ?, owner_until = {now} + ? \
                     WHERE id = 1 AND (owner IS NULL OR owner = ? OR owner_until IS NULL \
                     OR owner_until <= {now})",
                    self.state
                ),
                &[Bind::Text(owner), Bind::I64(lease_ms), Bind::Text(owner)],
            )?;
            if changed == 1 {
                return Ok(None);
            }
            let rows: Vec<OwnerRow> = B::load(
                conn,
                &format!(
                    "SELECT owner, owner_until - {now} AS owner_left FROM {} WHERE id = 1",
                    self.state
                ),
                &[],
            )?;
            match rows.into_iter().next() {
                Some(OwnerRow {
                    owner: Some(holder),
                    owner_left: Some(left),
                }) if left > 0 => return Ok(Some((holder, left))),
                Some(_) => continue,
                None => {
                    return Err(self.corrupt(
                        &self.state,
                        "the row vanished while taking the upgrade lease",
                    ))
                }
            }
        }
        Ok(Some((
            "another upgrader (the lease changed hands while we asked)".to_owned(),
            0,
        )))
    }

    /// Gives the upgrade lease up if `owner` still holds it.
    pub(crate) fn release_lease<B: Backend>(
        &self,
        conn: &mut B::Connection,
        owner: &str,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET owner = NULL, owner_until = NULL WHERE id = 1 AND owner = ?",
                self.state
            ),
            &[Bind::Text(owner)],
        )?;
        Ok(())
    }

    /// Takes the upgrade lease over from `orphan`, an upgrader of this
    /// process whose command has returned without releasing it; whether it
    /// did (`orphan` may have lost it meanwhile).
    pub(crate) fn take_over_lease<B: Backend>(
        &self,
        conn: &mut B::Connection,
        owner: &str,
        orphan: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        let now = B::now_ms_sql();
        let changed = B::execute(
            conn,
            &format!(
                "UPDATE {} SET owner = ?, owner_until = {now} + ? WHERE id = 1 AND owner = ?",
                self.state
            ),
            &[Bind::Text(owner), Bind::I64(lease_ms), Bind::Text(orphan)],
        )?;
        Ok(changed == 1)
    }

    /// Sets the mode (bumping the epoch); requires the upgrade lease.
    /// Returns the new epoch.
    pub(crate) fn set_mode<B: Backend>(
        &self,
        conn: &mut B::Connection,
        mode: Mode,
        owner: &str,
    ) -> Result<i64> {
        let n = B::execute(
            conn,
            &format!(
                "UPDATE {} SET mode = ?, epoch = {} + 1, updated_at = {} WHERE id = 1 AND owner = ?",
                self.state,
                self.next_epoch_base::<B>(),
                B::now_ms_sql()
            ),
            &[Bind::Text(mode.as_str()), Bind::Text(owner)],
        )?;
        if n != 1 {
            return Err(Error::UpgraderBusy {
                holder: "another upgrader (our lease expired)".to_owned(),
                expires_in_ms: 0,
            });
        }
        let epoch = self.read_state::<B>(conn)?.epoch;
        self.announce::<B>(conn, epoch)?;
        Ok(epoch)
    }
}
