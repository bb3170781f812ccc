-- Version 2 keeps each account's email in account_emails.
CREATE TABLE account_emails (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id),
    email TEXT NOT NULL
);

-- Version 1 code writes accounts.email: mirror it into account_emails.
CREATE FUNCTION accounts_email_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email <> '' THEN
        INSERT INTO account_emails (account_id, email) VALUES (NEW.id, NEW.email)
        ON CONFLICT (account_id) DO UPDATE SET email = EXCLUDED.email
        WHERE account_emails.email IS DISTINCT FROM EXCLUDED.email;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER accounts_email_sync AFTER INSERT OR UPDATE OF email ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_email_sync();

-- Version 2 code writes account_emails: mirror it back while version 1 code
-- may still read accounts.email (until contract).
CREATE FUNCTION account_emails_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET email = NEW.email
    WHERE id = NEW.account_id AND email IS DISTINCT FROM NEW.email;
    RETURN NEW;
END
$$;
CREATE TRIGGER account_emails_sync AFTER INSERT OR UPDATE OF email ON account_emails
    FOR EACH ROW EXECUTE FUNCTION account_emails_sync();
