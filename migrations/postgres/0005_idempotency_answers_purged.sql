-- Idempotency keys used to keep the whole answer of any POST, including those that carry
-- credentials (user secrets, refresh and access tokens) and request fingerprints of bodies with
-- passwords. Routes that issue or take credentials no longer honour keys; what earlier versions
-- kept is dropped. Keys only guard retries for a day, so nothing else is lost.
DELETE FROM idempotency_keys;
