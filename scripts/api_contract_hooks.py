"""schemathesis hooks for scripts/api-contract.

A client that retries nothing sends a new Idempotency-Key with each request. The fuzzer draws
keys from their pattern and reuses the few short ones; a reused key with the same body is
rightly answered with the first response, whose resource may have been deleted since, which
the stateful checks would take for a resource created and not found. So a key that follows
the rules is replaced with a fresh one; one that breaks them is sent as drawn, to be refused.
"""

import re
import uuid

import schemathesis

IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}\Z")


@schemathesis.hook
def map_headers(context, headers):
    if headers is not None:
        key = headers.get("Idempotency-Key")
        if isinstance(key, str) and IDEMPOTENCY_KEY.match(key):
            headers["Idempotency-Key"] = str(uuid.uuid4())
    return headers
