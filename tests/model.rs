//! Property test on SQLite: random interleavings of instances starting and
//! stopping (binaries serving 1..=2, 2..=3 or 1..=3), calls in the
//! foreground and long units of work in the background, upgrader steps
//! (expand, switch, switch back, contract) and upgrader crashes at random
//! step boundaries, checked against a model of invariants 1–4 of the
//! crate's protocol (`tandem::protocol`, `src/protocol.rs`):
//!
//! 1. every call ran one binding, whose version was the live version at the
//!    call's first and last statement;
//! 2. calls running at the same time used at most two adjacent versions;
//! 3. a switch to N succeeds only if every live instance serves N, and is
//!    refused (typed) if one does not; after a contract every live instance
//!    has observed the switched epoch;
//! 4. every acknowledged write reads back through the newest binding.
//!
//! `PROPTEST_CASES` raises the number of cases (default 12 here).

mod common;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tandem::testing::faults::UpgraderFaults as _;

use diesel::prelude::*;
use proptest::prelude::*;
use tandem::{Error, Repository, Sqlite, StatePhase, Tandem};

diesel::table! { items (id) { id -> BigInt, name -> Text, } }
mod v2 {
    diesel::table! { items (id) { id -> BigInt, name -> Text, label -> Nullable<Text>, } }
}
diesel::table! { tandem_state (id) { id -> BigInt, version -> BigInt, } }

trait Items: Send + Sync {
    fn version(&self) -> u32;
    fn add(&self, conn: &mut SqliteConnection, name: &str) -> tandem::Result<i64>;
    fn name(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>>;
}

fn live(conn: &mut SqliteConnection) -> tandem::Result<i64> {
    Ok(tandem_state::table
        .select(tandem_state::version)
        .first(conn)?)
}

struct V1;
struct V2(u32);

impl Items for V1 {
    fn version(&self) -> u32 {
        1
    }
    fn add(&self, conn: &mut SqliteConnection, name: &str) -> tandem::Result<i64> {
        Ok(diesel::insert_into(items::table)
            .values(items::name.eq(name))
            .returning(items::id)
            .get_result(conn)?)
    }
    fn name(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>> {
        Ok(items::table
            .find(id)
            .select(items::name)
            .first(conn)
            .optional()?)
    }
}

/// Versions 2 and 3 write the label column that version 2's expand added.
impl Items for V2 {
    fn version(&self) -> u32 {
        self.0
    }
    fn add(&self, conn: &mut SqliteConnection, name: &str) -> tandem::Result<i64> {
        use v2::items::dsl;
        Ok(diesel::insert_into(dsl::items)
            .values((dsl::name.eq(name), dsl::label.eq(format!("v{}", self.0))))
            .returning(dsl::id)
            .get_result(conn)?)
    }
    fn name(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>> {
        use v2::items::dsl;
        Ok(dsl::items
            .find(id)
            .select(dsl::name)
            .first(conn)
            .optional()?)
    }
}

fn repo(serves: &RangeInclusive<u32>) -> Repository<dyn Items> {
    let mut b = Repository::<dyn Items>::builder("items");
    for v in serves.clone() {
        b = match v {
            1 => b.binding(1, Arc::new(V1)),
            v => b.binding(v, Arc::new(V2(v))),
        };
    }
    b.build().unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// Start an instance of binary `kind` (0: 1..=2, 1: 2..=3, 2: 1..=3).
    Start(usize),
    /// Stop the instance at this index (modulo the live ones).
    Stop(usize),
    /// A call on an instance: write one item, or read a known one.
    Call { instance: usize, write: bool },
    /// A unit of work of `writes` writes with pauses, in the background.
    Background { instance: usize, writes: u8 },
    /// Wait for the background work.
    Join,
    /// The next upgrader phase; `back` prefers a switch back when switched;
    /// `crash` aborts it at that step boundary; `via` runs it through an
    /// application instance (whose own calls may be in flight) instead of
    /// the operator's handle.
    Upgrade {
        back: bool,
        crash: Option<usize>,
        via: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3usize).prop_map(Op::Start),
        1 => (0..4usize).prop_map(Op::Stop),
        4 => (0..4usize, any::<bool>()).prop_map(|(instance, write)| Op::Call { instance, write }),
        2 => (0..4usize, 1..4u8).prop_map(|(instance, writes)| Op::Background { instance, writes }),
        1 => Just(Op::Join),
        4 => (
            any::<bool>(),
            prop::option::weighted(0.3, 1..6usize),
            prop::option::weighted(0.5, 0..4usize)
        )
            .prop_map(|(back, crash, via)| Op::Upgrade { back, crash, via }),
    ]
}

const KINDS: [RangeInclusive<u32>; 3] = [1..=2, 2..=3, 1..=3];

struct Instance {
    db: Tandem<Sqlite>,
    serves: RangeInclusive<u32>,
}

/// One call as seen from inside: binding version, live version at the first
/// and last statement, and when it ran.
#[derive(Debug, Clone)]
struct CallRecord {
    binding: u32,
    first: i64,
    last: i64,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Log {
    calls: Vec<CallRecord>,
    acked: BTreeMap<i64, String>,
    errors: Vec<String>,
}

fn run_call(
    db: &Tandem<Sqlite>,
    repo: &Repository<dyn Items>,
    writes: &[String],
    pause: Duration,
    log: &Mutex<Log>,
) {
    let start = Instant::now();
    let out = db.unit_of_work(|s| {
        let r = s.repo(repo)?;
        let first = live(s.conn())?;
        let mut ids = Vec::new();
        for w in writes {
            ids.push((r.add(s.conn(), w)?, w.clone()));
            thread::sleep(pause);
        }
        let last = live(s.conn())?;
        Ok::<_, Error>((r.version(), first, last, ids))
    });
    let mut log = log.lock().unwrap();
    match out {
        Ok((binding, first, last, ids)) => {
            log.calls.push(CallRecord {
                binding,
                first,
                last,
                start,
                end: Instant::now(),
            });
            log.acked.extend(ids);
        }
        Err(e) => log.errors.push(e.to_string()),
    }
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Version 2 adds `items.label`; version 3 adds a table.
    let (_c, catalog) = common::catalog(common::THREE_VERSIONS);
    let (_d, url) = common::temp_db();
    let open = |serves: RangeInclusive<u32>, label: &str| {
        Tandem::<Sqlite>::builder(&url, catalog.clone())
            .serves(serves)
            .label(label)
            .poll_interval(Duration::from_millis(10))
            .lease(Duration::from_millis(150))
            .open()
    };
    // The operator's handle serves every version and runs the upgrader.
    let operator = open(1..=3, "operator").unwrap();
    let mut instances = vec![Instance {
        db: open(1..=3, "first").unwrap(),
        serves: 1..=3,
    }];
    let log = Arc::new(Mutex::new(Log::default()));
    let mut background: Vec<(String, thread::JoinHandle<()>)> = Vec::new();
    let mut seq = 0;
    // What this case exercised: steps done, refusals, crashes.
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for op in ops {
        let state = operator.state().unwrap();
        match op {
            Op::Start(kind) => {
                let serves = KINDS[kind].clone();
                match open(serves.clone(), &format!("kind{kind}")) {
                    Ok(db) => instances.push(Instance { db, serves }),
                    Err(e) => prop_assert!(false, "open {serves:?} at {state:?}: {e}"),
                }
            }
            Op::Stop(i) if !instances.is_empty() => {
                // A stopping process finishes its work in flight first (its
                // handle lives, and stays in the fleet, until then).
                let inst = instances.remove(i % instances.len());
                let (mine, others) = background
                    .drain(..)
                    .partition::<Vec<_>, _>(|(id, _)| id == inst.db.instance_id());
                background = others;
                for (_, b) in mine {
                    b.join().unwrap();
                }
                drop(inst);
            }
            Op::Call { instance, write } if !instances.is_empty() => {
                let inst = &instances[instance % instances.len()];
                let repo = repo(&inst.serves);
                if inst.serves.contains(&state.version.get()) {
                    if write {
                        seq += 1;
                        run_call(&inst.db, &repo, &[format!("w{seq}")], Duration::ZERO, &log);
                    } else {
                        let known = log
                            .lock()
                            .unwrap()
                            .acked
                            .iter()
                            .next_back()
                            .map(|(k, v)| (*k, v.clone()));
                        if let Some((id, name)) = known {
                            let got = inst.db.call(&repo, |r, s| r.name(s.conn(), id));
                            prop_assert_eq!(
                                got.ok().flatten(),
                                Some(name),
                                "read back on {:?}",
                                inst.serves
                            );
                        }
                    }
                } else {
                    // Invariant: a binary that cannot serve the live version is
                    // told so, typed, before any statement.
                    let got = inst.db.call(&repo, |r, s| r.name(s.conn(), 1));
                    prop_assert!(
                        matches!(
                            (&got, state.version.get() < *inst.serves.start()),
                            (Err(Error::Upgrading { .. }), true)
                                | (Err(Error::VersionNotServed { .. }), false)
                        ),
                        "{got:?}"
                    );
                }
            }
            Op::Background { instance, writes } if !instances.is_empty() => {
                let inst = &instances[instance % instances.len()];
                if inst.serves.contains(&state.version.get()) {
                    let (db, repo, log) = (inst.db.clone(), repo(&inst.serves), log.clone());
                    let names: Vec<String> = (0..writes)
                        .map(|_| {
                            seq += 1;
                            format!("b{seq}")
                        })
                        .collect();
                    let id = db.instance_id().to_owned();
                    background.push((
                        id,
                        thread::spawn(move || {
                            run_call(&db, &repo, &names, Duration::from_millis(5), &log)
                        }),
                    ));
                }
            }
            Op::Join => {
                for (_, b) in background.drain(..) {
                    b.join().unwrap();
                }
            }
            Op::Upgrade { back, crash, via } => {
                let upgrading = match via {
                    Some(i) if !instances.is_empty() => &instances[i % instances.len()].db,
                    _ => &operator,
                };
                if upgrading.instance_id() != operator.instance_id() {
                    *tally.entry("via an app instance").or_default() += 1;
                }
                let up = upgrading
                    .upgrader()
                    .lease(Duration::from_millis(100))
                    .wait_for_lease(Duration::from_secs(5));
                let up = match crash {
                    Some(k) => up.crash_at(k),
                    None => up,
                };
                let v = state.version.get();
                let contracting = state.phase == StatePhase::Switched && !(back && v == 2);
                let (result, target) = match state.phase {
                    StatePhase::Stable if v < 3 => (up.expand(), None),
                    StatePhase::Stable => continue,
                    StatePhase::Expanded => (up.switch(), Some(v + 1)),
                    StatePhase::Switched if !contracting => (up.switch_back(), Some(v - 1)),
                    StatePhase::Switched => (up.contract(), None),
                    other => panic!("unknown phase {other:?}"),
                };
                // Who can run the version the step makes live?
                let lacking: Vec<_> = target
                    .map(|t| {
                        instances
                            .iter()
                            .filter(|i| !i.serves.contains(&t))
                            .map(|i| i.serves.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let step = match (state.phase, contracting) {
                    (StatePhase::Stable, _) => "expand",
                    (StatePhase::Expanded, _) => "switch",
                    (_, true) => "contract",
                    _ => "switch_back",
                };
                match &result {
                    Ok(_) => *tally.entry(step).or_default() += 1,
                    Err(Error::SwitchRefused { .. }) => *tally.entry("refused").or_default() += 1,
                    Err(Error::InjectedCrash { .. }) => *tally.entry("crashed").or_default() += 1,
                    Err(_) => {}
                }
                match result {
                    Ok(_) => {
                        // Invariant 3: no switch while a live instance lacks N.
                        prop_assert!(
                            lacking.is_empty(),
                            "switched to {target:?} with {lacking:?} live"
                        );
                        let after = operator.state().unwrap();
                        if contracting {
                            // Contract: every live instance has observed the switch.
                            // (The upgrader's own instance adopted it in-process.)
                            for inst in operator
                                .instances()
                                .unwrap()
                                .iter()
                                .filter(|i| i.id != upgrading.instance_id())
                            {
                                prop_assert!(
                                    inst.observed_epoch >= state.epoch,
                                    "{inst:?} has not seen epoch {}",
                                    state.epoch
                                );
                            }
                        }
                        prop_assert_ne!(
                            (after.version, after.phase),
                            (state.version, state.phase),
                            "a step that did nothing"
                        );
                    }
                    Err(Error::SwitchRefused { .. }) => {
                        prop_assert!(!lacking.is_empty(), "refused with every instance able");
                        prop_assert_eq!(operator.state().unwrap().version, state.version);
                    }
                    Err(Error::InjectedCrash { .. }) => {
                        // Whole: either before or after the step, never between.
                        let after = operator.state().unwrap();
                        prop_assert!(
                            matches!(
                                (after.version.get().cmp(&v), after.phase),
                                (std::cmp::Ordering::Equal, _)
                                    | (_, StatePhase::Switched | StatePhase::Expanded)
                            ),
                            "torn state after a crash: {after:?} from {state:?}"
                        );
                    }
                    Err(e) => prop_assert!(false, "step from {state:?}: {e}"),
                }
            }
            _ => {}
        }
    }
    for (_, b) in background.drain(..) {
        b.join().unwrap();
    }
    // Finish the job (invariant 5's rerun) and read every write back.
    drop(instances);
    operator
        .upgrader()
        .wait_for_lease(Duration::from_secs(5))
        .upgrade_to(3)
        .unwrap();
    let log = log.lock().unwrap();
    prop_assert!(log.errors.is_empty(), "calls failed: {:?}", log.errors);
    eprintln!(
        "case: {} calls, {} writes, steps {tally:?}",
        log.calls.len(),
        log.acked.len()
    );
    // Invariant 1.
    for c in &log.calls {
        prop_assert_eq!(
            (i64::from(c.binding), i64::from(c.binding)),
            (c.first, c.last),
            "{:?}",
            c
        );
    }
    // Invariant 2: overlapping calls used at most two adjacent versions.
    for a in &log.calls {
        let overlapping = log
            .calls
            .iter()
            .filter(|b| b.start < a.end && a.start < b.end);
        let (lo, hi) = overlapping.fold((a.binding, a.binding), |(lo, hi), b| {
            (lo.min(b.binding), hi.max(b.binding))
        });
        prop_assert!(hi - lo <= 1, "versions {lo} and {hi} in use at once");
    }
    // Invariant 4.
    let newest = repo(&(3..=3));
    for (id, name) in &log.acked {
        let got = operator
            .call(&newest, |r, s| r.name(s.conn(), *id))
            .unwrap();
        prop_assert_eq!(got.as_ref(), Some(name), "lost write {}", id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_keep_invariants_1_to_4(ops in prop::collection::vec(op(), 10..40)) {
        check(ops)?;
    }
}
