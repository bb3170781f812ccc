-- Version 3: first_name and last_name replace name, and every account has a
-- plan. All three are NOT NULL in version 3, but they arrive nullable: old
-- code does not write them. One BEFORE trigger fills first_name and
-- last_name from name (version 2 writes, and rows the backfill touches with
-- `SET name = name`) and name from them (version 3 writes); the default
-- fills plan. Adding a column with a constant default is a metadata change
-- in PostgreSQL 11 and later. Contract adds the NOT NULL constraints.
ALTER TABLE accounts
    ADD COLUMN first_name TEXT,
    ADD COLUMN last_name TEXT,
    ADD COLUMN plan TEXT DEFAULT 'free';

CREATE FUNCTION accounts_names_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'INSERT' AND NEW.first_name IS NOT NULL)
       OR (TG_OP = 'UPDATE' AND (NEW.first_name IS DISTINCT FROM OLD.first_name
                                 OR NEW.last_name IS DISTINCT FROM OLD.last_name)) THEN
        -- Version 3 code wrote the parts: join them for version 2 code.
        NEW.name := CASE WHEN NEW.last_name = '' THEN NEW.first_name
                         ELSE NEW.first_name || ' ' || NEW.last_name END;
    ELSIF TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name OR NEW.first_name IS NULL THEN
        -- Version 2 code wrote name (or the backfill touched the row): split it.
        IF strpos(NEW.name, ' ') = 0 THEN
            NEW.first_name := NEW.name;
            NEW.last_name := '';
        ELSE
            NEW.first_name := substr(NEW.name, 1, strpos(NEW.name, ' ') - 1);
            NEW.last_name := substr(NEW.name, strpos(NEW.name, ' ') + 1);
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER accounts_names_sync BEFORE INSERT OR UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_names_sync();
