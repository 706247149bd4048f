-- Bookkeeping of `db migrate` (worker/migrate.py): which objects each migration file
-- created, so worker_secure() (schema/0016) can lock them down in the same transaction.

-- name: schema_objects
-- Every relation and function of the schema migrate runs in, with its ACL (a worker object
-- that a later file drops and re-creates under the same name keeps its grants). Members of
-- an extension are left out: a file that creates an extension (pgvector, say) must not
-- close the extension's functions to the application that uses them.
SELECT c.oid::bigint AS oid,
       CASE WHEN c.relkind IN ('r', 'p', 'f') THEN 'table'
            WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'sequence' END AS kind,
       c.relname::text AS name, c.relacl::text AS acl
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace
  AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
UNION ALL
SELECT p.oid::bigint, 'function', format('%s(%s)', p.proname, oidvectortypes(p.proargtypes)),
       p.proacl::text
FROM pg_proc p
WHERE p.pronamespace = current_schema()::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e');

-- name: registered_objects
SELECT kind, name FROM worker_schema_objects;

-- name: register_object
INSERT INTO worker_schema_objects (kind, name, created_by, carry_acl)
VALUES (%(kind)s, %(name)s, %(created_by)s, %(acl)s::aclitem[])
ON CONFLICT (kind, name) DO UPDATE
SET created_by = EXCLUDED.created_by, secured_at = NULL, carry_acl = EXCLUDED.carry_acl;

-- name: rename_object
UPDATE worker_schema_objects SET name = %(new_name)s WHERE kind = %(kind)s AND name = %(old_name)s;

-- name: forget_object
DELETE FROM worker_schema_objects WHERE kind = %(kind)s AND name = %(name)s;

-- name: secure_available
SELECT to_regprocedure('worker_secure()') IS NOT NULL AS present;

-- name: secure_schema
SELECT worker_secure();

-- name: missing_runtime_rights
-- What the connected role lacks to run the worker (empty for the owner and for a role given
-- worker_grant_runtime). Reading the registry needs a right too: no right at all fails here.
SELECT o.kind, o.name
FROM worker_schema_objects o
WHERE o.name NOT IN ('worker_schema_migrations', 'worker_schema_objects', 'worker_runtime_roles')
  AND CASE o.kind
        WHEN 'function' THEN to_regprocedure(o.name) IS NOT NULL
             AND NOT has_function_privilege(to_regprocedure(o.name), 'EXECUTE')
        WHEN 'sequence' THEN to_regclass(o.name) IS NOT NULL
             AND NOT has_sequence_privilege(to_regclass(o.name), 'USAGE')
        WHEN 'view' THEN to_regclass(o.name) IS NOT NULL
             AND NOT has_table_privilege(to_regclass(o.name), 'SELECT')
        ELSE to_regclass(o.name) IS NOT NULL
             AND NOT (has_table_privilege(to_regclass(o.name), 'SELECT')
                      AND has_table_privilege(to_regclass(o.name), 'INSERT')
                      AND has_table_privilege(to_regclass(o.name), 'UPDATE')
                      AND has_table_privilege(to_regclass(o.name), 'DELETE'))
      END
ORDER BY o.kind, o.name;

-- name: applied_migrations
SELECT filename, checksum, applied_at FROM worker_schema_migrations ORDER BY filename;

-- name: procrastinate_present
SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present;

-- name: migrations_ledger_present
SELECT to_regclass('worker_schema_migrations') IS NOT NULL AS present;

-- name: record_migration
INSERT INTO worker_schema_migrations (filename, checksum) VALUES (%s, %s);
