-- SQLite deployments journal a call's audit event to a file before forwarding the call; the
-- writer moves journaled events into audit_events and records here, in the same transaction,
-- how far the journal is applied (generation = file, position = byte offset after the last
-- applied event). A restart replays what lies beyond. Unused on PostgreSQL.
CREATE TABLE audit_journal (
    id INTEGER PRIMARY KEY,
    generation BIGINT NOT NULL,
    position BIGINT NOT NULL
);
INSERT INTO audit_journal (id, generation, position) VALUES (1, 0, 0);
