DROP TRIGGER account_emails_update;
DROP TRIGGER account_emails_insert;
DROP TRIGGER accounts_email_update;
DROP TRIGGER accounts_email_insert;
ALTER TABLE accounts DROP COLUMN email;
