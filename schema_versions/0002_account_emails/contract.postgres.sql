-- Locks accounts before account_emails, the order version 2 writers use.
DROP TRIGGER accounts_email_sync ON accounts;
DROP TRIGGER account_emails_sync ON account_emails;
DROP FUNCTION account_emails_sync();
DROP FUNCTION accounts_email_sync();
ALTER TABLE accounts DROP COLUMN email;
