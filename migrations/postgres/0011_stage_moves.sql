-- Moving a stage between nodes (docs/nodes.md): the node a stage's holder hands it over to,
-- set by an operator's move or by balancing. The holder stops the stage's runtimes, writes
-- what they wrote, then hands the lease and the stage's clients over.
ALTER TABLE leases ADD COLUMN moving_to TEXT;
-- 1 for a stage an operator moved: balancing leaves it where it was put.
ALTER TABLE leases ADD COLUMN pinned BIGINT NOT NULL DEFAULT 0;

-- When a client's record last passed to another node (a move or a takeover): that node greets
-- it as resumed.
ALTER TABLE clients ADD COLUMN moved_at BIGINT;

-- A node looks for the clients other nodes created for it since its last pass.
CREATE INDEX clients_by_node_created ON clients (node_id, status, created_at);
