//! `rename_column` in its copy-and-sync form (`copy = { type = "text" }`),
//! through the kit on SQLite and PostgreSQL: for databases that clients
//! outside tandem also use. Both names exist from expand to contract and a
//! trigger keeps them equal both ways, so a client that reads or writes
//! the old name after the switch sees version 2's writes and is seen by
//! it; rows from before the change are backfilled; contract drops the old
//! column; an upgrade crashed at each of its steps resumes.

mod common;

use std::sync::Arc;

use diesel::prelude::*;
use tandem::testing::{Kit, Stage};
use tandem::{Catalog, Repository, Version};

const V1: &str = r#"
[[operations]]
create_table = { table = "orders", columns = [
    { name = "id", type = "bigint", primary_key = true },
    { name = "customer", type = "text", nullable = false, default = "''" },
    { name = "qty", type = "integer", nullable = false, default = "0" },
] }
"#;

const V2: &str = r#"
[[operations]]
rename_column = { table = "orders", from = "customer", to = "customer_name", copy = { type = "text" } }
"#;

fn catalog() -> (tempfile::TempDir, Catalog) {
    common::change_catalog(&[("0001_orders", V1), ("0002_customer_name", V2)])
}

mod v1 {
    diesel::table! { orders (id) { id -> BigInt, customer -> Text, qty -> Integer, } }
}
mod v2 {
    diesel::table! { orders (id) { id -> BigInt, customer_name -> Nullable<Text>, qty -> Integer, } }
}

trait Orders<C>: Send + Sync {
    fn create(&self, conn: &mut C, customer: &str) -> QueryResult<i64>;
    fn customer(&self, conn: &mut C, id: i64) -> QueryResult<String>;
    fn rename(&self, conn: &mut C, id: i64, customer: &str) -> QueryResult<usize>;
}
struct OrdersV1;
struct OrdersV2;
macro_rules! bindings {
    ($conn:ty) => {
        impl Orders<$conn> for OrdersV1 {
            fn create(&self, conn: &mut $conn, customer: &str) -> QueryResult<i64> {
                use v1::orders::dsl;
                diesel::insert_into(dsl::orders)
                    .values((dsl::customer.eq(customer), dsl::qty.eq(1)))
                    .returning(dsl::id)
                    .get_result(conn)
            }
            fn customer(&self, conn: &mut $conn, id: i64) -> QueryResult<String> {
                use v1::orders::dsl;
                dsl::orders.find(id).select(dsl::customer).first(conn)
            }
            fn rename(&self, conn: &mut $conn, id: i64, customer: &str) -> QueryResult<usize> {
                use v1::orders::dsl;
                diesel::update(dsl::orders.find(id))
                    .set(dsl::customer.eq(customer))
                    .execute(conn)
            }
        }
        impl Orders<$conn> for OrdersV2 {
            fn create(&self, conn: &mut $conn, customer: &str) -> QueryResult<i64> {
                use v2::orders::dsl;
                diesel::insert_into(dsl::orders)
                    .values((dsl::customer_name.eq(customer), dsl::qty.eq(1)))
                    .returning(dsl::id)
                    .get_result(conn)
            }
            fn customer(&self, conn: &mut $conn, id: i64) -> QueryResult<String> {
                use v2::orders::dsl;
                let name: Option<String> = dsl::orders
                    .find(id)
                    .select(dsl::customer_name)
                    .first(conn)?;
                Ok(name.unwrap_or_default())
            }
            fn rename(&self, conn: &mut $conn, id: i64, customer: &str) -> QueryResult<usize> {
                use v2::orders::dsl;
                diesel::update(dsl::orders.find(id))
                    .set(dsl::customer_name.eq(customer))
                    .execute(conn)
            }
        }
    };
}
bindings!(diesel::SqliteConnection);
#[cfg(feature = "postgres")]
bindings!(diesel::PgConnection);

fn orders<C: 'static>() -> Repository<dyn Orders<C>>
where
    OrdersV1: Orders<C>,
    OrdersV2: Orders<C>,
{
    Repository::<dyn Orders<C>>::builder("orders")
        .binding(1, Arc::new(OrdersV1))
        .binding(2, Arc::new(OrdersV2))
        .build()
        .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    customer: String,
}

macro_rules! suite {
    ($name:ident, $backend:ty, $kit:expr) => {
        mod $name {
            use super::*;
            type B = $backend;
            type C = <B as tandem::Backend>::Connection;
            const ONE: Version = Version::FIRST;

            fn two() -> Version {
                Version::new(2).unwrap()
            }

            #[test]
            fn each_binding_works_where_it_must_and_data_crosses_both_ways() {
                let (_dir, catalog) = catalog();
                let Some(kit): Option<Kit<B>> = $kit("synced_rename_bindings", catalog) else {
                    return;
                };
                let change = kit.transition(2).unwrap();
                let repo = orders::<C>();
                let ran = change
                    .check(&repo, |r, s| {
                        let id = r.create(s.conn(), "ada")?;
                        assert_eq!(r.customer(s.conn(), id)?, "ada");
                        r.rename(s.conn(), id, "grace")?;
                        assert_eq!(r.customer(s.conn(), id)?, "grace");
                        Ok::<_, diesel::result::Error>(())
                    })
                    .unwrap();
                assert!(ran.len() >= 4, "{ran:?}");
                change
                    .forward(
                        &repo,
                        |r, s| r.create(s.conn(), "kay"),
                        |r, s, id| r.customer(s.conn(), *id),
                    )
                    .unwrap();
                change
                    .backward(
                        &repo,
                        |r, s| r.create(s.conn(), "lin"),
                        |r, s, id| r.customer(s.conn(), *id),
                    )
                    .unwrap();
            }

            /// A client outside tandem keeps using the old name after the
            /// switch: its writes reach version 2, version 2's reach it, and
            /// the rows from before the change were backfilled. Contract
            /// drops the old name.
            #[test]
            fn a_client_outside_tandem_keeps_the_old_name_until_contract() {
                let (_dir, catalog) = catalog();
                let Some(kit): Option<Kit<B>> = $kit("synced_rename_outside", catalog) else {
                    return;
                };
                let change = kit.transition(2).unwrap();
                let repo = orders::<C>();
                let db = change.fresh_at(Stage::PreviousStable).unwrap();
                let up = db.handle().upgrader();
                let before = db
                    .run(&repo, ONE, |r, s| r.create(s.conn(), "before"))
                    .unwrap();
                let report = up.expand().unwrap();
                assert_eq!(report.backfilled_rows, 1, "{report:?}");
                up.switch().unwrap();
                assert_eq!(
                    db.run(&repo, two(), |r, s| r.customer(s.conn(), before))
                        .unwrap(),
                    "before"
                );
                let outside = |sql: &str| {
                    diesel::sql_query(sql)
                        .execute(&mut *db.handle().connection().unwrap())
                        .unwrap()
                };
                let old_name = |id: i64| -> String {
                    diesel::sql_query(format!("SELECT customer FROM orders WHERE id = {id}"))
                        .get_result::<Name>(&mut *db.handle().connection().unwrap())
                        .unwrap()
                        .customer
                };
                // Version 2 writes; the outside client reads the old name.
                let new = db
                    .run(&repo, two(), |r, s| r.create(s.conn(), "new"))
                    .unwrap();
                assert_eq!(old_name(new), "new");
                db.run(&repo, two(), |r, s| r.rename(s.conn(), new, "newer"))
                    .unwrap();
                assert_eq!(old_name(new), "newer");
                // The outside client writes the old name; version 2 reads it.
                outside(&format!(
                    "UPDATE orders SET customer = 'outside' WHERE id = {new}"
                ));
                assert_eq!(
                    db.run(&repo, two(), |r, s| r.customer(s.conn(), new))
                        .unwrap(),
                    "outside"
                );
                outside("INSERT INTO orders (customer, qty) VALUES ('inserted', 3)");
                let inserted: i64 = {
                    let mut conn = db.handle().connection().unwrap();
                    v2::orders::table
                        .select(v2::orders::id)
                        .order(v2::orders::id.desc())
                        .first(&mut *conn)
                        .unwrap()
                };
                assert_eq!(
                    db.run(&repo, two(), |r, s| r.customer(s.conn(), inserted))
                        .unwrap(),
                    "inserted"
                );
                up.contract().unwrap();
                assert_eq!(
                    db.run(&repo, two(), |r, s| r.customer(s.conn(), inserted))
                        .unwrap(),
                    "inserted"
                );
                let gone = diesel::sql_query("SELECT customer FROM orders")
                    .execute(&mut *db.handle().connection().unwrap());
                assert!(gone.is_err(), "the old column is dropped in contract");
            }

            #[test]
            fn an_upgrade_crashed_at_each_step_resumes() {
                let (_dir, catalog) = catalog();
                let Some(kit): Option<Kit<B>> = $kit("synced_rename_crash", catalog) else {
                    return;
                };
                let change = kit.transition(2).unwrap();
                let repo = orders::<C>();
                common::crash_at_each_step(
                    &change,
                    |up| up.backfill_batches(2, std::time::Duration::ZERO),
                    |staged, crash| {
                        (0..5)
                            .map(|i| {
                                let name = format!("c{crash}-{i}");
                                (
                                    staged
                                        .run(&repo, ONE, |r, s| r.create(s.conn(), &name))
                                        .unwrap(),
                                    name,
                                )
                            })
                            .collect::<Vec<_>>()
                    },
                    |staged, rows, crash| {
                        for (id, name) in rows {
                            let read = staged
                                .run(&repo, two(), |r, s| r.customer(s.conn(), id))
                                .unwrap();
                            assert_eq!(read, name, "step {crash}");
                        }
                    },
                    6,
                );
            }
        }
    };
}

fn sqlite_kit(_test: &str, catalog: Catalog) -> Option<Kit<tandem::Sqlite>> {
    Some(Kit::sqlite(catalog))
}
suite!(sqlite, tandem::Sqlite, sqlite_kit);

#[cfg(feature = "postgres")]
fn pg_kit(test: &str, catalog: Catalog) -> Option<Kit<tandem::Postgres>> {
    Some(Kit::postgres(&common::pg::server(test)?, catalog))
}
#[cfg(feature = "postgres")]
suite!(postgres, tandem::Postgres, pg_kit);
