-- Version 1: one name, one email. Every NOT NULL column has a default, so a
-- later version whose code no longer writes it can still insert rows (SQLite
-- cannot drop a NOT NULL constraint without rebuilding the table).
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT ''
);
