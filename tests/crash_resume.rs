//! Crash at every step boundary of expand (with a batched backfill), switch
//! and contract, then run the same command again from a fresh handle (as a
//! restarted process would): the job completes, each phase is applied once,
//! nothing is lost, and no state in between is torn.

mod common;

use std::time::Duration;
use tandem::testing::faults::UpgraderFaults as _;

use common::{accounts, columns, db_version, open_demo, raw, temp_db};
use tandem::{Error, StatePhase};

const SEEDED: i64 = 2500;

fn seeded_db() -> (tempfile::TempDir, String) {
    let (dir, url) = temp_db();
    let db = open_demo(&url);
    let repo = accounts();
    db.unit_of_work(|s| -> tandem::Result<()> {
        let r = s.repo(&repo)?;
        for i in 0..SEEDED {
            r.create(s.conn(), &format!("n{i}"), &format!("e{i}@x"))?;
        }
        Ok(())
    })
    .unwrap();
    (dir, url)
}

#[test]
fn crash_at_every_step_then_rerun_finishes_the_job() {
    let mut k = 1;
    let mut crashed_at = Vec::new();
    loop {
        let (_dir, url) = seeded_db();
        // First run: "crashes" at step k, leaving its lease held.
        let first = open_demo(&url);
        let up = first
            .upgrader()
            .lease(Duration::from_millis(150))
            .crash_at(k);
        let result = up.upgrade_to(2);
        let steps = up.steps_taken();
        drop(up);
        drop(first);
        let crashed = match result {
            Err(Error::InjectedCrash { step, at }) => {
                assert_eq!(step, k);
                crashed_at.push(at);
                true
            }
            Ok(_) => false,
            Err(other) => panic!("step {k}: unexpected {other:?}"),
        };

        // A restarted process: the state it finds is whole, and calls work with
        // the binding of the version the database is at.
        let second = open_demo(&url);
        let state = second.state().unwrap();
        assert!(
            matches!(
                (state.version.get(), state.phase),
                (1, StatePhase::Stable | StatePhase::Expanded)
                    | (2, StatePhase::Switched | StatePhase::Stable)
            ),
            "step {k}: torn state {state:?}"
        );
        let (binding, live) = second
            .call(&accounts(), |r, s| {
                Ok::<_, Error>((r.version(), db_version(s.conn())))
            })
            .unwrap();
        assert_eq!(i64::from(binding), live, "step {k}");

        // The same command again finishes the job (waiting out the dead lease).
        second
            .upgrader()
            .wait_for_lease(Duration::from_secs(5))
            .upgrade_to(2)
            .unwrap();
        let state = second.state().unwrap();
        assert_eq!(
            (state.version.get(), state.phase, state.upgrader),
            (2, StatePhase::Stable, None),
            "step {k}"
        );
        let history: Vec<(u32, tandem::HistoryPhase, tandem::Outcome)> = second
            .history()
            .unwrap()
            .into_iter()
            .map(|h| (h.version.get(), h.phase, h.outcome))
            .collect();
        for phase in ["expand", "switch", "contract"] {
            let applied = history
                .iter()
                .filter(|(v, p, o)| *v == 2 && *p == phase && *o == "applied")
                .count();
            assert_eq!(
                applied, 1,
                "step {k}: {phase} applied {applied} times: {history:?}"
            );
        }
        assert!(
            !history.iter().any(|(_, _, o)| *o == "running"),
            "step {k}: {history:?}"
        );

        // Nothing lost: every seeded email through v2; the old column is gone.
        let repo = accounts();
        for id in [1, SEEDED / 2, SEEDED] {
            let email = second.call(&repo, |r, s| r.email(s.conn(), id)).unwrap();
            assert_eq!(email, Some(format!("e{}@x", id - 1)), "step {k}");
        }
        let copied: i64 = second
            .call(&repo, |_, s| {
                use diesel::prelude::*;
                Ok::<_, Error>(
                    common::v2::account_emails::table
                        .count()
                        .get_result(s.conn())?,
                )
            })
            .unwrap();
        assert_eq!(copied, SEEDED, "step {k}");
        assert!(!columns(&mut raw(&url), "accounts").contains(&"email".to_owned()));

        if !crashed {
            assert_eq!(
                steps,
                k - 1,
                "the full run passes {} step boundaries",
                k - 1
            );
            break;
        }
        k += 1;
    }
    // Every boundary of every phase was exercised.
    for phase in ["expand", "switch", "contract"] {
        assert!(
            crashed_at.iter().any(|at| at.starts_with(phase)),
            "no crash in {phase}: {crashed_at:?}"
        );
    }
    assert!(crashed_at.len() >= 12, "{crashed_at:?}");
}
