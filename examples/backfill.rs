//! What a `change_type`'s generated backfill costs: the expand of `qty`
//! widened from int to bigint on a table of N rows (the new column, its
//! sync trigger, and the keyset backfill in batches, one transaction each),
//! against raw diesel on an identical table in the same run: a batched
//! `UPDATE` loop over the same key ranges with the same kind of sync
//! trigger installed (what a careful hand-written backfill beside live
//! writes does), and one `UPDATE` of every row without a trigger (the
//! floor, which holds every row's lock until it ends). Each backfill runs
//! twice: alone (throughput), and beside a thread making calls through
//! tandem (one-row updates, a unit of work each; also before tandem's
//! backfill): their latency, p50, p99 and max, and what serving them costs
//! each backfill (tandem's batches let the calls in between them; the raw
//! loop on SQLite mostly does not). Reports figures; asserts nothing.
//!
//! ```text
//! cargo run --release --all-features --example backfill                    # SQLite, 200,000 rows
//! cargo run --release --all-features --example backfill -- --rows 1000000 --batch 5000
//! cargo run --release --all-features --example backfill -- --database-url postgres://…/postgres
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tandem::testing::{Kit, Stage};
use tandem::{Backend, Catalog};

const V1: &str = r#"
[[operations]]
create_table = { table = "stock", columns = [
    { name = "id", type = "bigint", primary_key = true },
    { name = "qty", type = "integer", nullable = false, default = "0" },
] }
"#;
const V2: &str = r#"
[[operations]]
change_type = { table = "stock", column = "qty", type = "bigint", nullable = false, default = "0", up = "qty", down = "CASE WHEN qty > 2147483647 THEN 2147483647 ELSE qty END" }
"#;

struct Args {
    rows: u32,
    batch: u32,
    url: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args {
        rows: 200_000,
        batch: 1000,
        url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--rows" => args.rows = value("--rows")?.parse()?,
            "--batch" => args.batch = value("--batch")?.parse()?,
            "--database-url" => args.url = Some(value("--database-url")?),
            other => {
                return Err(format!("unknown argument {other}; see the example's header").into())
            }
        }
    }
    let dir = tempfile::tempdir()?;
    for (folder, text) in [("0001_stock", V1), ("0002_wide_qty", V2)] {
        std::fs::create_dir(dir.path().join(folder))?;
        std::fs::write(dir.path().join(folder).join("change.toml"), text)?;
    }
    let catalog = Catalog::from_dir(dir.path())?;
    match &args.url {
        None => run(&Kit::<tandem::Sqlite>::sqlite(catalog), &args),
        #[cfg(feature = "postgres")]
        Some(url) => run(&Kit::<tandem::Postgres>::postgres(url, catalog), &args),
        #[cfg(not(feature = "postgres"))]
        Some(_) => Err("--database-url needs the postgres feature".into()),
    }
}

/// Raw SQL on a backend's connection (diesel's `sql_query` needs the
/// concrete connection type).
trait Raw: Backend {
    fn raw(conn: &mut Self::Connection, sql: &str) -> QueryResult<usize>;
}
impl Raw for tandem::Sqlite {
    fn raw(conn: &mut Self::Connection, sql: &str) -> QueryResult<usize> {
        diesel::sql_query(sql).execute(conn)
    }
}
#[cfg(feature = "postgres")]
impl Raw for tandem::Postgres {
    fn raw(conn: &mut Self::Connection, sql: &str) -> QueryResult<usize> {
        diesel::sql_query(sql).execute(conn)
    }
}

/// A trigger keeping `wide` equal to `qty` on every write, as a hand-written
/// backfill beside live writes needs one (tandem's is generated).
fn sync_trigger(backend: &str) -> &'static [&'static str] {
    if backend == "postgres" {
        &[
            "CREATE FUNCTION raw_sync() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN NEW.wide := NEW.qty; RETURN NEW; END $$",
            "CREATE TRIGGER raw_sync BEFORE INSERT OR UPDATE OF qty ON stock \
             FOR EACH ROW EXECUTE FUNCTION raw_sync()",
        ]
    } else {
        &[
            "CREATE TRIGGER raw_sync_insert AFTER INSERT ON stock BEGIN \
             UPDATE stock SET wide = NEW.qty WHERE rowid = NEW.rowid; END",
            "CREATE TRIGGER raw_sync_update AFTER UPDATE OF qty ON stock BEGIN \
             UPDATE stock SET wide = NEW.qty WHERE rowid = NEW.rowid; END",
        ]
    }
}

/// Latencies of calls, in microseconds.
type Latencies = hdrhistogram::Histogram<u64>;

/// Calls through `db` (a one-row update in a unit of work each, on rows
/// spread over the table) until `stop`; their latencies.
fn calls<B: Raw>(db: &tandem::Tandem<B>, rows: u32, stop: &AtomicBool) -> Latencies {
    let mut latencies = Latencies::new(3).expect("3 significant figures are valid");
    let mut id: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        id = (id * 7919 + 13) % u64::from(rows.max(1)) + 1;
        let sql = format!("UPDATE stock SET qty = qty WHERE id = {id}");
        let started = Instant::now();
        let done = db.unit_of_work(|s| -> Result<(), tandem::Error> {
            B::raw(s.conn(), &sql)?;
            Ok(())
        });
        if done.is_ok() {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = latencies.record(us.max(1));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    latencies
}

fn summary(l: &Latencies) -> String {
    format!(
        "{} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        l.value_at_quantile(0.5) as f64 / 1e3,
        l.value_at_quantile(0.99) as f64 / 1e3,
        l.max() as f64 / 1e3
    )
}

/// What one backfill run took: its duration, its longest batch, its
/// batches and rows, and the latencies of the calls beside it (if any ran).
struct Ran {
    took: Duration,
    longest: Duration,
    batches: u64,
    rows: u64,
    /// Of `took`, tandem's closing check (one read of the whole table for a
    /// row a key change left behind the walk); zero for raw loops.
    checks: Duration,
    calls: Option<Latencies>,
}

/// What a backfill says it did: its longest batch, batches, rows written
/// and (tandem) its closing checks' time.
type Done = (Duration, u64, u64, Duration);

/// Runs `backfill` on `db`, with calls through it meanwhile if `with_calls`.
fn beside_calls<B: Raw>(
    db: &tandem::Tandem<B>,
    rows: u32,
    with_calls: bool,
    backfill: impl FnOnce() -> Result<Done, Box<dyn std::error::Error>>,
) -> Result<Ran, Box<dyn std::error::Error>> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let calls = with_calls.then(|| s.spawn(|| calls(db, rows, &stop)));
        let started = Instant::now();
        let done = backfill();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let calls = calls
            .map(|c| c.join().map_err(|_| "the calls thread panicked"))
            .transpose()?;
        let (longest, batches, rows, checks) = done?;
        Ok(Ran {
            took,
            longest,
            batches,
            rows,
            checks,
            calls,
        })
    })
}

/// Raw diesel: a batched loop over the same key ranges, each batch its own
/// transaction, on an identical table, after the same new column and the
/// sync trigger any backfill that runs beside live writes needs.
fn raw_loop<B: Raw>(
    change: &tandem::testing::Transition<'_, B>,
    seed: &str,
    args: &Args,
    with_calls: bool,
) -> Result<Ran, Box<dyn std::error::Error>> {
    let wide = if B::NAME == "postgres" {
        "BIGINT"
    } else {
        "INTEGER"
    };
    let db = change.fresh_at(Stage::PreviousStable)?;
    let mut conn = db.handle().connection()?;
    B::raw(&mut *conn, seed)?;
    beside_calls(db.handle(), args.rows, with_calls, || {
        B::raw(
            &mut *conn,
            &format!("ALTER TABLE stock ADD COLUMN wide {wide} NOT NULL DEFAULT 0"),
        )?;
        for sql in sync_trigger(B::NAME) {
            B::raw(&mut *conn, sql)?;
        }
        let (mut after, mut longest, mut batches) = (0u64, Duration::ZERO, 0u64);
        while after < u64::from(args.rows) {
            let upto = after + u64::from(args.batch);
            let batch = Instant::now();
            B::raw(
                &mut *conn,
                &format!("UPDATE stock SET wide = qty WHERE id > {after} AND id <= {upto}"),
            )?;
            longest = longest.max(batch.elapsed());
            batches += 1;
            after = upto;
        }
        Ok((longest, batches, u64::from(args.rows), Duration::ZERO))
    })
}

/// tandem: the generated expand, backfill included.
fn tandem_expand<B: Raw>(
    change: &tandem::testing::Transition<'_, B>,
    seed: &str,
    args: &Args,
    with_calls: bool,
) -> Result<(Ran, Option<Latencies>), Box<dyn std::error::Error>> {
    let staged = change.fresh_at(Stage::PreviousStable)?;
    B::raw(&mut *staged.handle().connection()?, seed)?;
    let up = staged
        .handle()
        .upgrader()
        .backfill_batches(args.batch, Duration::ZERO);
    // The calls before it, for comparison.
    let before = with_calls
        .then(|| {
            beside_calls(staged.handle(), args.rows, true, || {
                std::thread::sleep(Duration::from_secs(1));
                Ok((Duration::ZERO, 0, 0, Duration::ZERO))
            })
        })
        .transpose()?
        .and_then(|r| r.calls);
    let ran = beside_calls(staged.handle(), args.rows, with_calls, || {
        let report = up.expand()?;
        Ok((
            report.longest_batch,
            report.batches,
            report.backfilled_rows,
            report.backfill_checks,
        ))
    })?;
    Ok((ran, before))
}

fn run<B: Raw>(kit: &Kit<B>, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let change = kit.transition(2)?;
    let seed = format!(
        "INSERT INTO stock (qty) SELECT i FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
         SELECT i + 1 FROM n WHERE i < {}) SELECT i FROM n) AS rows",
        args.rows
    );
    let wide = if B::NAME == "postgres" {
        "BIGINT"
    } else {
        "INTEGER"
    };
    // Alone first (throughput), then beside calls (what the calls see,
    // and what serving them costs each).
    let raw_alone = raw_loop(&change, &seed, args, false)?;
    let (tandem_alone, _) = tandem_expand(&change, &seed, args, false)?;
    let raw_busy = raw_loop(&change, &seed, args, true)?;
    let (tandem_busy, before) = tandem_expand(&change, &seed, args, true)?;
    // And one statement for every row.
    let one_db = change.fresh_at(Stage::PreviousStable)?;
    let mut one_conn = one_db.handle().connection()?;
    B::raw(&mut *one_conn, &seed)?;
    let started = Instant::now();
    B::raw(
        &mut *one_conn,
        &format!("ALTER TABLE stock ADD COLUMN wide {wide} NOT NULL DEFAULT 0"),
    )?;
    let copied = B::raw(&mut *one_conn, "UPDATE stock SET wide = qty")?;
    let raw_one = started.elapsed();

    let ratio = |raw: &Ran, tandem: Duration| {
        raw.took.as_secs_f64() / tandem.as_secs_f64().max(f64::EPSILON)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let shown = |l: &Option<Latencies>| l.as_ref().map_or("none".to_owned(), summary);
    println!(
        "{}: {} rows, batches of {}:",
        B::NAME,
        args.rows,
        args.batch
    );
    for (what, raw, tandem) in [
        ("alone", &raw_alone, &tandem_alone),
        ("beside calls", &raw_busy, &tandem_busy),
    ] {
        println!(
            "  {what}: tandem expand {:.1} ms ({} batches, {} rows written, longest batch {:.2} ms, \
             closing check {:.1} ms); raw batched loop with a sync trigger {:.1} ms ({} batches, longest {:.2} ms): \
             tandem's throughput {:.2}x raw (the expand less its closing check: {:.2}x)",
            ms(tandem.took),
            tandem.batches,
            tandem.rows,
            ms(tandem.longest),
            ms(tandem.checks),
            ms(raw.took),
            raw.batches,
            ms(raw.longest),
            ratio(raw, tandem.took),
            ratio(raw, tandem.took.saturating_sub(tandem.checks)),
        );
    }
    println!(
        "  raw one UPDATE, no trigger {:.1} ms ({copied} rows, one lock for all of them)\n  \
         calls before: {}\n  calls during tandem's backfill: {}\n  calls during the raw loop: {}",
        ms(raw_one),
        shown(&before),
        shown(&tandem_busy.calls),
        shown(&raw_busy.calls),
    );
    Ok(())
}
