//! Unit tests of the fleet table's SQL (SQLite).

use super::*;

/// A handle on a fresh SQLite file whose poller stays quiet (an hour's
/// poll), so the rows a test inserts are the only change.
#[cfg(feature = "sqlite")]
fn quiet_handle() -> (tempfile::TempDir, crate::Tandem<crate::Sqlite>) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("t.db").display().to_string();
    let db =
        crate::Tandem::<crate::Sqlite>::builder(&url, crate::testing::demo::catalog().unwrap())
            .poll_interval(std::time::Duration::from_secs(3600))
            .open()
            .unwrap();
    (dir, db)
}

/// The upgrader's wait counts laggards in one read: the count agrees
/// with the rows the full check fetches (live, or in the renewal grace
/// while noticing; an acknowledgement below the epoch waited for or
/// beyond the state row's counts as none; this instance never counts).
#[cfg(feature = "sqlite")]
#[test]
fn laggards_counted_in_sql_match_the_rows_fetched() {
    use crate::{Backend as _, Sqlite};
    let (_dir, db) = quiet_handle();
    let shared = &db.shared;
    let store = &shared.store;
    let mut conn = shared.connection().unwrap();
    let c = &mut *conn;
    let epoch = store.read_state::<Sqlite>(c).unwrap().epoch;
    let grace = 2_000;
    let renewal_grace = crate::limits::millis(crate::limits::RENEWAL_GRACE);
    // (id, acknowledged epoch, lease_until relative to now in ms)
    let rows = [
        ("acked", epoch, 1_000),
        ("behind", epoch - 1, 1_000),
        ("ghost_ack", epoch + 5, 1_000),
        ("in_grace_acked", epoch, -grace - 10),
        ("expired_live", epoch - 1, -grace + 500),
        ("noticed", epoch - 1, -grace - 1_000),
        ("gone", epoch - 1, -grace - renewal_grace - 1_000),
    ];
    for (id, observed, lease) in rows {
        Sqlite::execute(
            c,
            &format!(
                "INSERT INTO {} (id, host, pid, label, min_version, max_version, observed_epoch, \
                 lease_until, started_at, catalog) VALUES (?, 'h', 1, 'l', 1, 2, ?, {now} + ?, {now}, NULL)",
                store.fleet,
                now = Sqlite::now_ms_sql()
            ),
            &[Bind::Text(id), Bind::I64(observed), Bind::I64(lease)],
        )
        .unwrap();
    }
    let me = shared.me.id.as_str();
    let counted = |c: &mut _, noticing| {
        store
            .count_behind::<Sqlite>(c, me, epoch, grace, noticing)
            .unwrap()
    };
    let (plain, noticing) = (counted(c, false), counted(c, true));
    let mut live = store.live_instances::<Sqlite>(c, grace).unwrap();
    let behind = |rows: &[Instance]| {
        let mut ids: Vec<_> = rows
            .iter()
            .filter(|i| i.id != me && !(epoch..=epoch).contains(&i.observed_epoch))
            .map(|i| i.id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(behind(&live), ["behind", "expired_live", "ghost_ack"]);
    assert_eq!(plain, 3);
    live.extend(store.noticed_instances::<Sqlite>(c, grace).unwrap());
    assert_eq!(
        behind(&live),
        ["behind", "expired_live", "ghost_ack", "noticed"]
    );
    assert_eq!(noticing, 4);
}

/// The switch's grouped check sees what the rows say: the live
/// instances other than this one (expired and in-grace rows left out),
/// one group per release and epoch, with the catalog digests as stored.
#[cfg(feature = "sqlite")]
#[test]
fn live_groups_sum_up_the_live_rows_other_than_this_instance() {
    use crate::{Backend as _, Sqlite};
    let (_dir, db) = quiet_handle();
    let shared = &db.shared;
    let store = &shared.store;
    let mut conn = shared.connection().unwrap();
    let c = &mut *conn;
    let epoch = store.read_state::<Sqlite>(c).unwrap().epoch;
    let grace = 2_000;
    // (id, serves up to, acknowledged epoch, lease_until from now, catalog)
    let rows = [
        ("new_a", 2, epoch, 1_000, Some("1=aa,2=bb")),
        ("new_b", 2, epoch, 1_000, Some("1=aa,2=bb")),
        ("new_behind", 2, epoch - 1, 1_000, Some("1=aa,2=bb")),
        ("old", 1, epoch, 1_000, Some("1=aa")),
        ("unrecorded", 2, epoch, 1_000, None),
        ("in_grace", 1, epoch, -grace - 10, Some("1=zz")),
    ];
    for (id, max, observed, lease, catalog) in rows {
        Sqlite::execute(
            c,
            &format!(
                "INSERT INTO {} (id, host, pid, label, min_version, max_version, observed_epoch, \
                 lease_until, started_at, catalog) VALUES (?, 'h', 1, 'l', 1, ?, ?, {now} + ?, {now}, ?)",
                store.fleet,
                now = Sqlite::now_ms_sql()
            ),
            &[
                Bind::Text(id),
                Bind::I64(max),
                Bind::I64(observed),
                Bind::I64(lease),
                Bind::OptText(catalog),
            ],
        )
        .unwrap();
    }
    let mut groups = store
        .live_groups::<Sqlite>(c, &shared.me.id, grace)
        .unwrap();
    groups.sort_by_key(|g| (g.last, g.observed_epoch, g.catalog.clone()));
    let v = |n| Version::new(n).unwrap();
    let seen: Vec<_> = groups
        .iter()
        .map(|g| {
            (
                g.last.get(),
                g.observed_epoch - epoch,
                g.digest(v(1)),
                g.digest(v(2)),
                g.instances,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, 0, Some("aa"), None, 1),
            (2, -1, Some("aa"), Some("bb"), 1),
            (2, 0, None, None, 1),
            (2, 0, Some("aa"), Some("bb"), 2),
        ]
    );
    assert!(groups.iter().all(|g| g.serves(v(1))));
    assert_eq!(groups.iter().filter(|g| g.serves(v(2))).count(), 3);
}
