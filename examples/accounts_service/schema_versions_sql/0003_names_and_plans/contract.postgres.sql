-- No version 2 code is left: drop the sync trigger and the old column, and
-- make the new columns NOT NULL (every row was filled by the trigger, the
-- backfill or the default; SET NOT NULL checks that under the lock_timeout
-- tandem sets for phases).
DROP TRIGGER accounts_names_sync ON accounts;
DROP FUNCTION accounts_names_sync();
ALTER TABLE accounts
    DROP COLUMN name,
    ALTER COLUMN first_name SET NOT NULL,
    ALTER COLUMN last_name SET NOT NULL,
    ALTER COLUMN plan SET NOT NULL;
