//! What a `change_type`'s generated work costs: the expand of `qty` widened
//! from int to bigint on a table of N rows (the new column, its sync
//! trigger, and the keyset backfill in batches, one transaction each),
//! against raw diesel doing the same copy in one statement on an identical
//! table in the same run. Reports figures; asserts nothing.
//!
//! ```text
//! cargo run --release --all-features --example backfill                    # SQLite, 200,000 rows
//! cargo run --release --all-features --example backfill -- --rows 1000000 --batch 5000
//! cargo run --release --all-features --example backfill -- --database-url postgres://…/postgres
//! ```
//!
//! The raw statement holds its table's write lock for the whole copy; the
//! batches hold it for one batch at a time, which is what keeps the
//! application's calls flowing during the backfill.

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

fn run<B: Raw>(kit: &Kit<B>, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let change = kit.transition(2)?;
    let seed = format!(
        "INSERT INTO stock (qty) SELECT i FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
         SELECT i + 1 FROM n WHERE i < {}) SELECT i FROM n) AS rows",
        args.rows
    );

    // tandem: the generated expand, backfill included.
    let staged = change.fresh_at(Stage::PreviousStable)?;
    B::raw(&mut *staged.handle().connection()?, &seed)?;
    let up = staged
        .handle()
        .upgrader()
        .backfill_batches(args.batch, Duration::ZERO);
    let started = Instant::now();
    let report = up.expand()?;
    let tandem = started.elapsed();

    // Raw diesel: the same copy as one statement on an identical table.
    let raw_db = change.fresh_at(Stage::PreviousStable)?;
    let mut conn = raw_db.handle().connection()?;
    B::raw(&mut *conn, &seed)?;
    let wide = if B::NAME == "postgres" {
        "BIGINT"
    } else {
        "INTEGER"
    };
    let started = Instant::now();
    B::raw(
        &mut *conn,
        &format!("ALTER TABLE stock ADD COLUMN wide {wide} NOT NULL DEFAULT 0"),
    )?;
    let copied = B::raw(&mut *conn, "UPDATE stock SET wide = qty")?;
    let raw = started.elapsed();

    let ratio = tandem.as_secs_f64() / raw.as_secs_f64().max(f64::EPSILON);
    println!(
        "{}: {} rows, batches of {}: tandem expand {:.1} ms ({} batches, {} rows written), \
         raw diesel one UPDATE {:.1} ms ({copied} rows); ratio {ratio:.2}",
        B::NAME,
        args.rows,
        args.batch,
        tandem.as_secs_f64() * 1e3,
        report.batches,
        report.backfilled_rows,
        raw.as_secs_f64() * 1e3,
    );
    Ok(())
}
