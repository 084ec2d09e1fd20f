-- Rodan's change notifications without plpython3u or Redis: a plain
-- PL/pgSQL trigger that sends, with pg_notify, exactly the payload Rodan's
-- object_notify()/publish_message() publish to 'rodan:broadcast:rodan'
-- (Python json.dumps spacing and key order, COMPAT 4.1):
--   {"status": "updated", "project": "<dashed uuid>", "model": "workflowrun", "uuid": "<32 hex>"}
-- ("project" left out when the row has no project_id or it is NULL).
--
-- Install as the owner of the tables (no superuser needed):
--   psql -v ON_ERROR_STOP=1 -f tuning/sql/rodan_notify.sql
--   CREATE TRIGGER object_post_insert_notify AFTER INSERT OR UPDATE OR DELETE
--     ON rodan_workflowrun FOR EACH ROW EXECUTE FUNCTION rodan_object_notify('rodan');
-- and run ringcast with
--   [sources.postgres] enabled = true, listen = ["rodan"],
--   channel = "rodan:broadcast:rodan"
-- The trigger's argument is the NOTIFY channel (default 'rodan').

CREATE OR REPLACE FUNCTION rodan_object_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_json jsonb;
    status text;
    project text;
    payload text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        status := 'created';
        row_json := to_jsonb(NEW);
    ELSIF TG_OP = 'UPDATE' THEN
        status := 'updated';
        row_json := to_jsonb(NEW);
    ELSE
        status := 'deleted';
        row_json := to_jsonb(OLD);
    END IF;
    project := row_json ->> 'project_id';
    payload := '{"status": ' || to_json(status)::text
        || CASE WHEN project IS NULL THEN ''
                ELSE ', "project": ' || to_json(project)::text END
        || ', "model": ' || to_json(replace(TG_TABLE_NAME, 'rodan_', ''))::text
        || ', "uuid": ' || to_json(replace(row_json ->> 'uuid', '-', ''))::text
        || '}';
    PERFORM pg_notify(coalesce(TG_ARGV[0], 'rodan'), payload);
    RETURN NULL;
END;
$$;
