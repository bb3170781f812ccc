-- Version 2 keeps each account's email in account_emails.
CREATE TABLE account_emails (
    account_id INTEGER PRIMARY KEY REFERENCES accounts (id),
    email TEXT NOT NULL
);

-- The triggers update, then insert what is missing, rather than use
-- INSERT OR REPLACE: SQLite lets the conflict clause of the statement that
-- fired a trigger override the one inside it, so an application's upsert
-- would turn a REPLACE in here into an ABORT.

-- Version 1 code writes accounts.email: mirror it into account_emails.
CREATE TRIGGER accounts_email_insert AFTER INSERT ON accounts
WHEN NEW.email <> ''
BEGIN
    UPDATE account_emails SET email = NEW.email WHERE account_id = NEW.id AND email IS NOT NEW.email;
    INSERT INTO account_emails (account_id, email)
        SELECT NEW.id, NEW.email WHERE NOT EXISTS (SELECT 1 FROM account_emails WHERE account_id = NEW.id);
END;

CREATE TRIGGER accounts_email_update AFTER UPDATE OF email ON accounts
WHEN NEW.email IS NOT OLD.email
BEGIN
    UPDATE account_emails SET email = NEW.email WHERE account_id = NEW.id AND email IS NOT NEW.email;
    INSERT INTO account_emails (account_id, email)
        SELECT NEW.id, NEW.email WHERE NOT EXISTS (SELECT 1 FROM account_emails WHERE account_id = NEW.id);
END;

-- Version 2 code writes account_emails: mirror it back while version 1 code
-- may still read accounts.email (until contract).
CREATE TRIGGER account_emails_insert AFTER INSERT ON account_emails
BEGIN
    UPDATE accounts SET email = NEW.email WHERE id = NEW.account_id AND email IS NOT NEW.email;
END;

CREATE TRIGGER account_emails_update AFTER UPDATE OF email ON account_emails
BEGIN
    UPDATE accounts SET email = NEW.email WHERE id = NEW.account_id AND email IS NOT NEW.email;
END;
