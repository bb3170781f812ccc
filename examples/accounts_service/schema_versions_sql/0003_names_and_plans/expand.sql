-- Version 3: first_name and last_name replace name, and every account has a
-- plan. All three are NOT NULL in version 3, but they arrive nullable: old
-- code does not write them. The sync triggers fill first_name and last_name
-- from name (version 2 writes) and name from them (version 3 writes); the
-- default fills plan; the backfill touches the rows written before this
-- expand (`SET name = name`), so the split is defined once, here. Contract
-- adds the NOT NULL constraints.
ALTER TABLE accounts ADD COLUMN first_name TEXT;
ALTER TABLE accounts ADD COLUMN last_name TEXT;
ALTER TABLE accounts ADD COLUMN plan TEXT DEFAULT 'free';

-- name -> first_name, last_name: split at the first space.
CREATE TRIGGER accounts_name_split_insert AFTER INSERT ON accounts
WHEN NEW.first_name IS NULL
BEGIN
    UPDATE accounts SET
        first_name = CASE WHEN instr(NEW.name, ' ') = 0 THEN NEW.name
                          ELSE substr(NEW.name, 1, instr(NEW.name, ' ') - 1) END,
        last_name = CASE WHEN instr(NEW.name, ' ') = 0 THEN ''
                         ELSE substr(NEW.name, instr(NEW.name, ' ') + 1) END
    WHERE id = NEW.id;
END;

CREATE TRIGGER accounts_name_split_update AFTER UPDATE OF name ON accounts
WHEN NEW.name IS NOT (CASE WHEN NEW.last_name = '' THEN NEW.first_name
                           ELSE NEW.first_name || ' ' || NEW.last_name END)
BEGIN
    UPDATE accounts SET
        first_name = CASE WHEN instr(NEW.name, ' ') = 0 THEN NEW.name
                          ELSE substr(NEW.name, 1, instr(NEW.name, ' ') - 1) END,
        last_name = CASE WHEN instr(NEW.name, ' ') = 0 THEN ''
                         ELSE substr(NEW.name, instr(NEW.name, ' ') + 1) END
    WHERE id = NEW.id;
END;

-- first_name, last_name -> name: joined by a space (none if last_name is empty).
CREATE TRIGGER accounts_name_compose_insert AFTER INSERT ON accounts
WHEN NEW.first_name IS NOT NULL
BEGIN
    UPDATE accounts SET name = CASE WHEN NEW.last_name = '' THEN NEW.first_name
                                    ELSE NEW.first_name || ' ' || NEW.last_name END
    WHERE id = NEW.id;
END;

CREATE TRIGGER accounts_name_compose_update AFTER UPDATE OF first_name, last_name ON accounts
WHEN NEW.first_name IS NOT NULL
    AND NEW.name IS NOT (CASE WHEN NEW.last_name = '' THEN NEW.first_name
                              ELSE NEW.first_name || ' ' || NEW.last_name END)
BEGIN
    UPDATE accounts SET name = CASE WHEN NEW.last_name = '' THEN NEW.first_name
                                    ELSE NEW.first_name || ' ' || NEW.last_name END
    WHERE id = NEW.id;
END;
