-- Version 2: an account has many email addresses, one of them primary.
CREATE TABLE account_emails (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    email TEXT NOT NULL,
    is_primary BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX account_emails_one_primary ON account_emails (account_id) WHERE is_primary;
CREATE INDEX account_emails_account ON account_emails (account_id);

-- Until contract, accounts.email and the primary row stay equal, whichever
-- version wrote. Writers of both versions lock the accounts row before
-- account_emails (version 2 code takes it FOR UPDATE first), so the two
-- trigger directions cannot deadlock. The guards (IS DISTINCT FROM) stop the
-- directions from bouncing.

-- Version 1 code writes accounts.email.
CREATE FUNCTION accounts_email_to_primary() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email <> '' THEN
        INSERT INTO account_emails (account_id, email, is_primary) VALUES (NEW.id, NEW.email, TRUE)
        ON CONFLICT (account_id) WHERE is_primary DO UPDATE SET email = EXCLUDED.email
        WHERE account_emails.email IS DISTINCT FROM EXCLUDED.email;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER accounts_email_to_primary AFTER INSERT OR UPDATE OF email ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_email_to_primary();

-- Version 2 code writes the primary row.
CREATE FUNCTION primary_email_to_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.is_primary THEN
        UPDATE accounts SET email = NEW.email
        WHERE id = NEW.account_id AND email IS DISTINCT FROM NEW.email;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER primary_email_to_accounts AFTER INSERT OR UPDATE OF email, is_primary ON account_emails
    FOR EACH ROW EXECUTE FUNCTION primary_email_to_accounts();
