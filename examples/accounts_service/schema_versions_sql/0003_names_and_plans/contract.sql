-- No version 2 code is left: drop the sync triggers and the old column.
DROP TRIGGER accounts_name_compose_update;
DROP TRIGGER accounts_name_compose_insert;
DROP TRIGGER accounts_name_split_update;
DROP TRIGGER accounts_name_split_insert;
ALTER TABLE accounts DROP COLUMN name;

-- SQLite cannot add NOT NULL to an existing column without rebuilding the
-- table; these triggers enforce it instead, with SQLite's own message.
-- tandem:allow(contract-only-removes) SQLite's form of SET NOT NULL: it only refuses NULLs, which version 3 never writes
CREATE TRIGGER accounts_required_insert BEFORE INSERT ON accounts
WHEN NEW.first_name IS NULL OR NEW.last_name IS NULL OR NEW.plan IS NULL
BEGIN
    SELECT RAISE(ABORT, 'NOT NULL constraint failed: accounts.first_name, last_name and plan are required');
END;

-- tandem:allow(contract-only-removes) SQLite's form of SET NOT NULL: it only refuses NULLs, which version 3 never writes
CREATE TRIGGER accounts_required_update BEFORE UPDATE OF first_name, last_name, plan ON accounts
WHEN NEW.first_name IS NULL OR NEW.last_name IS NULL OR NEW.plan IS NULL
BEGIN
    SELECT RAISE(ABORT, 'NOT NULL constraint failed: accounts.first_name, last_name and plan are required');
END;
