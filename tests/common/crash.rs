//! An upgrade crashed at each of its steps, and resumed: shared by the
//! suites of declarative changes.

use std::time::Duration;

use tandem::testing::faults::UpgraderFaults as _;
use tandem::testing::Stage;

/// Crashes an upgrade to `to` at each of its steps, as a killed process
/// would (its lease held), and shows that a new upgrader finishes it:
/// `seed` writes rows on a fresh database first, `check` reads them back
/// after. `upgrader` sets the upgraders up (the same for every run).
pub fn crash_at_each_step<B: tandem::Backend, S>(
    change: &tandem::testing::Transition<'_, B>,
    upgrader: impl Fn(tandem::Upgrader<B>) -> tandem::Upgrader<B>,
    seed: impl Fn(&tandem::testing::Staged<B>, usize) -> S,
    check: impl Fn(&tandem::testing::Staged<B>, S, usize),
    at_least: usize,
) {
    let to = change.to().get();
    let counted = change.fresh_at(Stage::PreviousStable).unwrap();
    seed(&counted, 0);
    let up = upgrader(counted.handle().upgrader());
    up.upgrade_to(to).unwrap();
    let steps = up.steps_taken();
    assert!(steps >= at_least, "{steps} steps");
    for crash in 1..=steps {
        let staged = change.fresh_at(Stage::PreviousStable).unwrap();
        let seeded = seed(&staged, crash);
        let up = upgrader(staged.handle().upgrader())
            .lease(Duration::from_millis(150))
            .crash_at(crash);
        let crashed = up.upgrade_to(to);
        assert!(
            matches!(crashed, Err(tandem::Error::InjectedCrash { step, .. }) if step == crash),
            "step {crash} of {steps}: {crashed:?}"
        );
        drop(up);
        upgrader(staged.handle().upgrader())
            .wait_for_lease(Duration::from_secs(10))
            .upgrade_to(to)
            .unwrap_or_else(|e| panic!("step {crash}: {e}"));
        let state = staged.handle().state().unwrap();
        assert_eq!(
            (state.version.get(), state.phase),
            (to, tandem::StatePhase::Stable),
            "step {crash}"
        );
        check(&staged, seeded, crash);
    }
}
