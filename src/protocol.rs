//! The protocol's invariants, stated once. Tests, comments and docs refer to
//! them by number ("invariant 3"); each names the tests that show it.
//!
//! 1. **One binding per call, and it is the live version's.** A call (or a
//!    unit of work, several statements in one transaction) runs entirely
//!    with one binding, and that binding's version is the live version for
//!    the whole call: at its first and at its last statement. (During
//!    expand the live version is still N-1; the new objects are additive.)
//!    Shown by `tests/concurrency.rs`, `tests/fleet.rs`, `tests/model.rs`,
//!    `tests/crash_recovery.rs`, and `examples/rolling_upgrade.rs`, which
//!    reads the state row at the start and the end of every call; a unit of
//!    work that waits for its write turn through a switch, by
//!    `tests/fleet.rs` (`a_unit_of_work_waiting_for_its_write_turn_…`, both
//!    backends) and a renewal held between its read and its write by
//!    `tests/postgres.rs` (`held_renewal`).
//! 2. **At most two versions in use.** No instance serves N-2 while another
//!    serves N: version N+1 can be expanded only once N is contracted.
//!    Shown by `tests/model.rs` and `tests/upgrade.rs`. Checked at run time
//!    too: an instance that reads a state row more than one version away
//!    from the one it has been serving (it missed a whole switch) leaves
//!    the steady path at once and reports both versions
//!    ([`MissedSwitch`](crate::MissedSwitch),
//!    `Tandem::missed_switch`), before it waits for its steady calls to
//!    drain, so no call arriving meanwhile runs the cached version; shown
//!    by `tests/fleet.rs` (`an_instance_that_missed_a_whole_switch_…`,
//!    `a_state_row_two_versions_ahead_closes_the_steady_path_…`, both
//!    backends).
//! 3. **The fleet is ready.** The switch to N never starts while a live
//!    instance's binary lacks N (`SwitchRefused`), and contract never starts
//!    while a live instance may still use N-1 (`FleetNotAcknowledged`).
//!    Shown by `tests/fleet.rs`, `tests/bad_input.rs` (c16) and
//!    `tests/model.rs`.
//! 4. **No lost writes.** Every write acknowledged before, during or after
//!    an upgrade reads back through the N binding afterwards, on every
//!    backend. Shown by `tests/concurrency.rs`, `tests/crash_recovery.rs`,
//!    `tests/postgres.rs`, `tests/model.rs`, the load harness and the demo.
//! 5. **Crash safety.** A crash at any point of any phase leaves a state
//!    from which the same command, run again, finishes the job; no call sees
//!    a torn version. Shown by `tests/crash_recovery.rs` (SIGKILL at every
//!    step boundary, both backends) and `tests/crash_resume.rs`.
//! 6. **One upgrader at a time.** Two upgraders at once: one works, the
//!    other waits or is told who holds the lease (`UpgraderBusy`). Shown by
//!    `tests/exclusion.rs` (SQLite: threads, handles, processes),
//!    `tests/concurrent_upgraders.rs` (four processes, both backends) and
//!    `tests/postgres.rs`.
//! 7. **Bad input gets a typed error and loses nothing.** An unknown or
//!    future version, missing or corrupted metadata, checksum drift, a
//!    malformed catalog, an invalid prefix, an SQL error mid-phase, a lost
//!    connection mid-switch: a typed error that says what to do, and the
//!    database unchanged. Shown by `tests/bad_input.rs` (both backends) and
//!    `tests/catalog.rs`.
//! 8. **No decision depends on two hosts' clocks agreeing.** Leases,
//!    expiries and cutoffs that cross processes come from the database's
//!    clock; an instance's own deadlines come from its monotonic clock.
//!    Shown by `tests/clock_skew.rs` (instance processes under libfaketime,
//!    ±10 s and ±60 s, on PostgreSQL).
//! 9. **A restarted binary serves what it can.** A binary restarted in the
//!    middle of a deploy serves whenever the live version is one it serves,
//!    and refuses clearly otherwise. Shown by `tests/fleet.rs`
//!    (`an_old_binary_restarted_mid_deploy_serves_what_it_can`).
//! 10. **The fleet agrees on the catalog.** No switch while a live
//!     instance's SQL for N-1 or N differs from what the database applied.
//!     Shown by `tests/fleet.rs`
//!     (`a_live_instance_with_other_sql_for_the_version_stops_the_switch`).
//! 11. **No session state on pooled connections.** Everything holds behind
//!     PgBouncer in transaction mode: transaction-scoped advisory locks only.
//!     Shown by `tests/pgbouncer.rs` and the fleet demo through a real
//!     PgBouncer (`scripts/test`).
//! 12. **A long write stalls no read and gives nothing away.** An instance
//!     whose lease renewals a write holds back stays on the steady path only
//!     while a read that writes nothing confirms steady mode, its adopted
//!     epoch and its fleet row; a switch gives rows in the renewal grace
//!     notice before it goes on without them. Shown by `tests/long_phases.rs`
//!     (reads during a long SQLite expand; notice for held renewals) and the
//!     load harness's long-phase run.
//! 13. **A bounded switch.** Everything a switch waits for before it commits
//!     fits in `Builder::switch_timeout`; then it gives up, database
//!     unchanged. Shown by `tests/frozen_instance.rs` (a `SIGSTOP`ped
//!     instance process, both backends).
//! 14. **Server restarts lose nothing and leave nothing behind.** A command
//!     cut off by a restart or a terminated backend leaves steady mode and
//!     no lease (its cleanup retries until the server answers), the rerun
//!     finishes, and no broken connection is handed out twice. Shown by
//!     `tests/server_restart.rs` and `tests/long_phases.rs` (a phase longer
//!     than the upgrade lease keeps it).
//!
//! What does not hold (a call frozen mid-flight on the steady path; SQLite
//! phases much longer than the renewal grace) is in the README's "Known
//! limits" paragraph.
