-- No version 1 code is left: drop the sync triggers, then the old column.
DROP TRIGGER account_emails_primary_update;
DROP TRIGGER account_emails_primary_insert;
DROP TRIGGER accounts_email_update;
DROP TRIGGER accounts_email_insert;
ALTER TABLE accounts DROP COLUMN email;
