-- 0060_transitions_unreferenced: job_transitions no longer carries a foreign key to jobs;
-- a statement trigger deletes a job's history with the job, as the key's cascade did.
--
-- Every transition is written by the statement that writes its job's row, from that
-- statement's RETURNING, so conveyor never writes one for a missing job, and a tenant
-- role's inserts still need their job to exist (the EXISTS in the RLS policy). The key
-- was checked by one query per transition row, three per job, and the worker's status
-- pool plans every query afresh (plan_cache_mode = force_custom_plan), the key's checks
-- included: a third of Postgres' CPU per job in the throughput benchmark (ARCHITECTURE.md,
-- "The worker's Postgres cost per job").

ALTER TABLE job_transitions DROP CONSTRAINT job_transitions_job_id_fkey;

-- SECURITY DEFINER, so it deletes as the owner, which RLS does not restrict: once the
-- jobs are gone, a tenant role's policy (an EXISTS on jobs) would hide their history from
-- it, and the history would stay behind. It deletes only the history of the rows the
-- caller's own statement deleted.
CREATE FUNCTION delete_job_transitions() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    DELETE FROM job_transitions AS t USING old_rows AS o WHERE t.job_id = o.job_id;
    RETURN NULL;
END;
$$;

-- Only as this trigger: a role that could attach it to a table of its own would delete
-- any history as the owner.
REVOKE EXECUTE ON FUNCTION delete_job_transitions() FROM PUBLIC;

CREATE TRIGGER jobs_delete_transitions
    AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delete_job_transitions();
