//! The plan over every state and command, without a database.

use super::*;

fn v(n: u32) -> Version {
    Version::new(n).unwrap()
}

fn at(version: u32, phase: StatePhase) -> At {
    At {
        version: v(version),
        phase,
    }
}

const PHASES: [StatePhase; 3] = [
    StatePhase::Stable,
    StatePhase::Expanded,
    StatePhase::Switched,
];
const COMMANDS: [Phase; 4] = [
    Phase::Expand,
    Phase::Switch,
    Phase::SwitchBack,
    Phase::Contract,
];

/// Every state a catalog of `latest` versions allows: switched only from
/// version 2, expanded only below `latest` (the next version must exist).
fn states(latest: u32) -> impl Iterator<Item = At> {
    (1..=latest).flat_map(move |n| {
        PHASES
            .into_iter()
            .filter(move |p| !(n == 1 && *p == StatePhase::Switched))
            .filter(move |p| !(n == latest && *p == StatePhase::Expanded))
            .map(move |p| at(n, p))
    })
}

/// A state's place on the one road forward: (v, stable) < (v, expanded) <
/// (v + 1, switched) < (v + 1, stable).
fn rank(a: At) -> u32 {
    match a.phase {
        StatePhase::Stable => a.version.get() * 3,
        StatePhase::Expanded => a.version.get() * 3 + 1,
        StatePhase::Switched => a.version.get() * 3 - 1,
    }
}

fn moved(to: (Version, StatePhase)) -> At {
    At {
        version: to.0,
        phase: to.1,
    }
}

#[test]
fn upgrade_to_walks_every_phase_of_every_version_in_order() {
    let latest = v(4);
    let mut now = at(1, StatePhase::Stable);
    let mut walked = Vec::new();
    while let Some(phase) = toward(now, latest).unwrap() {
        match next(now, phase, latest).unwrap() {
            Next::Run { files, to } => {
                walked.push(format!("{phase} {files}"));
                now = moved(to);
            }
            other => panic!("{phase} from {now:?}: {other:?}"),
        }
    }
    assert_eq!(now, at(4, StatePhase::Stable));
    assert_eq!(
        walked,
        [
            "expand 2",
            "switch 2",
            "contract 2",
            "expand 3",
            "switch 3",
            "contract 3",
            "expand 4",
            "switch 4",
            "contract 4"
        ]
    );
    // Stopping at an expanded target leaves it expanded; behind the live
    // version is refused.
    assert_eq!(toward(at(3, StatePhase::Expanded), v(3)), Ok(None));
    assert_eq!(toward(at(3, StatePhase::Stable), v(2)), Err(v(3)));
}

#[test]
fn every_run_moves_one_step_and_only_switch_back_moves_back() {
    let latest = v(4);
    for state in states(4) {
        for command in COMMANDS {
            let Ok(Next::Run { to, files }) = next(state, command, latest) else {
                continue;
            };
            let after = moved(to);
            let step = i64::from(rank(after)) - i64::from(rank(state));
            if command == Phase::SwitchBack {
                assert_eq!(step, -1, "{command} from {state:?} to {after:?}");
            } else {
                assert_eq!(step, 1, "{command} from {state:?} to {after:?}");
            }
            // The files run are the version being moved into (or out of,
            // for contract and switch back): never one the state is not at
            // or next to.
            assert!(
                files == state.version || Some(files) == state.version.next(),
                "{command} from {state:?} runs version {files}"
            );
            assert!(files <= latest);
        }
    }
}

#[test]
fn a_command_run_again_is_done_and_a_switch_back_undoes_the_switch() {
    let latest = v(4);
    for state in states(4) {
        for command in [Phase::Expand, Phase::Switch, Phase::Contract] {
            let Ok(Next::Run { to, .. }) = next(state, command, latest) else {
                continue;
            };
            let after = moved(to);
            assert!(
                matches!(next(after, command, latest), Ok(Next::Done(_))),
                "{command} again from {after:?}: {:?}",
                next(after, command, latest)
            );
        }
        if let Ok(Next::Run { to, .. }) = next(state, Phase::Switch, latest) {
            let switched = moved(to);
            let Ok(Next::Run { to: back, .. }) = next(switched, Phase::SwitchBack, latest) else {
                panic!("no switch back from {switched:?}");
            };
            assert_eq!(moved(back), state);
            // Asked again, switch back is done only if the history says so.
            assert!(matches!(
                next(state, Phase::SwitchBack, latest),
                Ok(Next::DoneIfSwitchedBack { .. })
            ));
        }
    }
}

#[test]
fn at_most_two_versions_are_in_use() {
    for n in 2..=4 {
        let refused = next(at(n, StatePhase::Switched), Phase::Expand, v(4));
        assert_eq!(
            refused,
            Err(Refusal::OutOfOrder {
                attempted: Phase::Expand,
                version: v(n + 1),
                hint: CONTRACT_FIRST
            })
        );
    }
}

#[test]
fn refusals_name_what_to_run_instead() {
    let latest = v(3);
    let hint = |state: At, command: Phase| match next(state, command, latest) {
        Err(Refusal::OutOfOrder { hint, .. }) => hint,
        other => panic!("{command} from {state:?}: {other:?}"),
    };
    assert_eq!(hint(at(1, StatePhase::Stable), Phase::Switch), EXPAND_FIRST);
    assert_eq!(
        hint(at(1, StatePhase::Expanded), Phase::Contract),
        SWITCH_FIRST
    );
    assert_eq!(
        hint(at(2, StatePhase::Stable), Phase::SwitchBack),
        SWITCH_BACK_WINDOW
    );
    assert_eq!(
        next(at(3, StatePhase::Stable), Phase::Expand, latest),
        Err(Refusal::NothingToExpand { version: v(4) })
    );
    // Every refusal is an error naming the live version and its state.
    let error = Refusal::OutOfOrder {
        attempted: Phase::Switch,
        version: v(2),
        hint: EXPAND_FIRST,
    }
    .into_error(at(1, StatePhase::Stable), latest, "tandem_state");
    assert!(
        matches!(
            error,
            Error::PhaseOutOfOrder { live, state: "stable", .. } if live == v(1)
        ),
        "{error:?}"
    );
}

#[test]
fn every_state_and_command_has_an_answer() {
    // Total: no state and command panics or falls through, for catalogs of
    // one to four versions.
    for latest in 1..=4 {
        for state in states(latest) {
            for command in COMMANDS {
                let _ = next(state, command, v(latest));
            }
        }
    }
    assert_eq!(
        next(at(1, StatePhase::Expanded), Phase::Expand, v(1)),
        Err(Refusal::NothingToExpand { version: v(2) })
    );
}

/// `plan`: the phases `upgrade_to` runs from each state, with the SQL the
/// catalog has for the backend (a change file's generated text included)
/// and the backfills after expand.
#[test]
fn the_plan_lists_each_remaining_phase_with_its_sql() {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in [
        (
            "0001_a/expand.sql",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);",
        ),
        ("0002_b/expand.sql", "ALTER TABLE t ADD COLUMN b TEXT;"),
        (
            "0002_b/contract.postgres.sql",
            "ALTER TABLE t DROP COLUMN a;",
        ),
        (
            "0003_c/change.toml",
            "[[operations]]\nrename_column = { table = \"t\", from = \"b\", to = \"c\" }",
        ),
    ] {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let catalog = crate::catalog::Catalog::from_dir(dir.path()).unwrap();
    let names = |from: At, to: u32, backend: &str| -> Vec<String> {
        phases(&catalog, from, v(to), backend, &[(2, "fill b")])
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}{}",
                    p.version,
                    p.phase,
                    p.file.as_deref().unwrap_or("-"),
                    if p.backfills.is_empty() {
                        ""
                    } else {
                        " +backfill"
                    }
                )
            })
            .collect()
    };
    assert_eq!(
        names(at(1, StatePhase::Stable), 3, "sqlite"),
        [
            "2 expand 0002_b/expand.sql +backfill",
            "2 switch -",
            "2 contract -",
            "3 expand -",
            "3 switch 0003_c/change.toml",
            "3 contract -",
        ]
    );
    assert_eq!(
        names(at(1, StatePhase::Expanded), 2, "postgres"),
        ["2 switch -", "2 contract 0002_b/contract.postgres.sql"]
    );
    assert_eq!(
        names(at(2, StatePhase::Switched), 2, "sqlite"),
        ["2 contract -"]
    );
    assert_eq!(
        names(at(3, StatePhase::Stable), 3, "sqlite"),
        Vec::<String>::new()
    );
    let planned = phases(&catalog, at(2, StatePhase::Stable), v(3), "sqlite", &[]).unwrap();
    assert!(planned[1]
        .sql
        .as_deref()
        .unwrap()
        .contains(r#"RENAME COLUMN "b" TO "c""#));
    assert!(planned[1]
        .to_string()
        .starts_with("-- version 3 switch (0003_c/change.toml)\n-- change.toml"));
    assert_eq!(
        phases(&catalog, at(3, StatePhase::Stable), v(2), "sqlite", &[]),
        Err(v(3))
    );
}
