-- Version 2: an account has many email addresses, one of them primary.
CREATE TABLE account_emails (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    email TEXT NOT NULL,
    is_primary BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX account_emails_one_primary ON account_emails (account_id) WHERE is_primary;
CREATE INDEX account_emails_account ON account_emails (account_id);

-- Until contract, accounts.email and the primary row stay equal, whichever
-- version wrote. Each trigger updates, then inserts what is missing, instead
-- of INSERT OR REPLACE: SQLite lets the conflict clause of the statement that
-- fired a trigger override the one inside it. The guards (IS NOT) stop the
-- two directions from bouncing.

-- Version 1 code writes accounts.email.
CREATE TRIGGER accounts_email_insert AFTER INSERT ON accounts
WHEN NEW.email <> ''
BEGIN
    INSERT INTO account_emails (account_id, email, is_primary)
        SELECT NEW.id, NEW.email, TRUE
        WHERE NOT EXISTS (SELECT 1 FROM account_emails WHERE account_id = NEW.id AND is_primary);
END;

CREATE TRIGGER accounts_email_update AFTER UPDATE OF email ON accounts
WHEN NEW.email IS NOT OLD.email AND NEW.email <> ''
BEGIN
    UPDATE account_emails SET email = NEW.email
        WHERE account_id = NEW.id AND is_primary AND email IS NOT NEW.email;
    INSERT INTO account_emails (account_id, email, is_primary)
        SELECT NEW.id, NEW.email, TRUE
        WHERE NOT EXISTS (SELECT 1 FROM account_emails WHERE account_id = NEW.id AND is_primary);
END;

-- Version 2 code writes the primary row.
CREATE TRIGGER account_emails_primary_insert AFTER INSERT ON account_emails
WHEN NEW.is_primary
BEGIN
    UPDATE accounts SET email = NEW.email WHERE id = NEW.account_id AND email IS NOT NEW.email;
END;

CREATE TRIGGER account_emails_primary_update AFTER UPDATE OF email, is_primary ON account_emails
WHEN NEW.is_primary
BEGIN
    UPDATE accounts SET email = NEW.email WHERE id = NEW.account_id AND email IS NOT NEW.email;
END;
