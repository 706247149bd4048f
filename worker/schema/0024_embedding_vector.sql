-- ai_jobs.embedding_vector filled (issue 15): the pgvector copy of each stored embedding.
--
-- 0010 adds the column `embedding_vector vector` where the `vector` extension exists, but
-- nothing wrote it, so a similarity search on it found nothing. Decided: Postgres fills it,
-- in the same row update that stores `embedding` (the worker's flush, or anyone else's
-- write), with pgvector's own cast from real[]: no text formatting, no second update, and
-- the worker's statements stay the same whether the extension exists or not. Optional:
-- * created only where the extension exists (as the column); nothing changes without it;
-- * a value pgvector refuses (NaN, infinity or NULL in the vector, no dimensions, more
--   than 16,000, not one-dimensional) leaves embedding_vector NULL; `embedding` (real[]) keeps the values as before;
-- * to opt out (half the storage of an embedding job): DROP TRIGGER ai_jobs_embedding_vector
--   and ai_jobs_embedding_vector_ins ON ai_jobs; the column then stays NULL.
-- Where the extension is created after this file ran, ALTER TABLE ai_jobs ADD COLUMN
-- embedding_vector <schema>.vector and run the body of this file's DO block by hand
-- (README "Embeddings").
DO $do$
DECLARE
    vec_schema text;
BEGIN
    SELECT n.nspname INTO vec_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector';
    IF vec_schema IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE ai_jobs ADD COLUMN IF NOT EXISTS embedding_vector %I.vector',
                   vec_schema);
    -- The type is schema-qualified: worker_secure() pins search_path to pg_catalog and the
    -- worker's schema, and on Supabase the extension lives in `extensions`.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION ai_jobs_fill_embedding_vector() RETURNS trigger
        LANGUAGE plpgsql AS $body$
        BEGIN
            IF NEW.embedding IS NULL
               OR coalesce(array_ndims(NEW.embedding), 0) <> 1
               OR cardinality(NEW.embedding) > 16000
               OR array_position(NEW.embedding, NULL) IS NOT NULL
               OR 'NaN'::real = ANY (NEW.embedding)
               OR 'Infinity'::real = ANY (NEW.embedding)
               OR '-Infinity'::real = ANY (NEW.embedding) THEN
                NEW.embedding_vector := NULL;
            ELSE
                NEW.embedding_vector := NEW.embedding::%I.vector;
            END IF;
            RETURN NEW;
        END
        $body$$f$, vec_schema);
    DROP TRIGGER IF EXISTS ai_jobs_embedding_vector ON ai_jobs;
    DROP TRIGGER IF EXISTS ai_jobs_embedding_vector_ins ON ai_jobs;
    -- Only rows whose embedding changes run the function (a chat job's flush sets NULL over
    -- NULL: the WHEN test alone, no PL/pgSQL call).
    CREATE TRIGGER ai_jobs_embedding_vector
        BEFORE UPDATE OF embedding ON ai_jobs
        FOR EACH ROW WHEN (NEW.embedding IS DISTINCT FROM OLD.embedding)
        EXECUTE FUNCTION ai_jobs_fill_embedding_vector();
    CREATE TRIGGER ai_jobs_embedding_vector_ins
        BEFORE INSERT ON ai_jobs
        FOR EACH ROW WHEN (NEW.embedding IS NOT NULL)
        EXECUTE FUNCTION ai_jobs_fill_embedding_vector();
END $do$;
