-- Where a runtime runs, as its pool placed it: the pool's name, the server in the pool, and the
-- pool's handle on the runtime (a pid for the local-process pool, a container id for Docker).
-- The handle replaces the pid column, which only a process pool could fill.

ALTER TABLE runtimes ADD COLUMN pool TEXT NOT NULL DEFAULT 'local';
ALTER TABLE runtimes ADD COLUMN server TEXT;
ALTER TABLE runtimes ADD COLUMN handle TEXT;
UPDATE runtimes SET server = node_id, handle = CAST(pid AS TEXT) WHERE pid IS NOT NULL;
ALTER TABLE runtimes DROP COLUMN pid;
