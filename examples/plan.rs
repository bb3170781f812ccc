//! Prints what an upgrade would run: each remaining phase of each version
//! with the SQL it runs on the backend (a `change.toml`'s generated text
//! included), and the catalog's lint report.
//!
//! ```text
//! cargo run --example plan                         # the demo catalog, a fresh SQLite database
//! cargo run --example plan -- --catalog examples/accounts_service/schema_versions
//! cargo run --example plan -- --catalog DIR --database-url app.db --to 3
//! ```
//!
//! On a fresh database (the default, in memory) tandem first installs
//! version 1, so the plan starts from there; on an existing database it
//! starts where that database stands.

use tandem::{Catalog, Sqlite, Tandem};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut catalog_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schema_versions").to_owned();
    let mut url = ":memory:".to_owned();
    let mut to = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--catalog" => catalog_dir = value("--catalog")?,
            "--database-url" => url = value("--database-url")?,
            "--to" => to = Some(value("--to")?.parse::<u32>()?),
            other => {
                return Err(format!("unknown argument {other}; see the example's header").into())
            }
        }
    }
    let catalog = Catalog::from_dir(&catalog_dir)?;
    let lint = catalog.lint(<Sqlite as tandem::Backend>::NAME)?;
    println!("-- lint of {catalog_dir} (sqlite): {lint}");
    let to = to.unwrap_or(catalog.latest().get());
    let db = Tandem::<Sqlite>::builder(&url, catalog)
        .pool_size(2)
        .label("plan")
        .open()?;
    let state = db.state()?;
    println!(
        "-- the database: version {} {:?}",
        state.version, state.phase
    );
    let plan = db.upgrader().plan(to)?;
    if plan.is_empty() {
        println!("-- nothing to run up to version {to}");
    }
    for phase in plan {
        println!("{phase}\n");
    }
    Ok(())
}
