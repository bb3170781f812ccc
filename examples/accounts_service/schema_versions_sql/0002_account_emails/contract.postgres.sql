-- No version 1 code is left: drop the sync triggers, then the old column.
-- Locks accounts before account_emails, the order version 2 writers use.
DROP TRIGGER accounts_email_to_primary ON accounts;
DROP TRIGGER primary_email_to_accounts ON account_emails;
DROP FUNCTION accounts_email_to_primary();
DROP FUNCTION primary_email_to_accounts();
ALTER TABLE accounts DROP COLUMN email;
