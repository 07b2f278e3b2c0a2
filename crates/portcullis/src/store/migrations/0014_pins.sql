-- Tool pinning (see pinning.rs): every tool, prompt and resource template a server offers is
-- pinned by the SHA-256 of its full definition. A definition that differs from the approved
-- one is held as pending — hidden from clients and not callable — until an admin approves it.
CREATE TABLE pinned_servers (
    server TEXT PRIMARY KEY,
    pinned_at BIGINT NOT NULL,
    pinned_by TEXT NOT NULL
);
CREATE TABLE pins (
    server TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    approved_hash TEXT,
    approved_definition TEXT,
    approved_at BIGINT,
    approved_by TEXT,
    pending_hash TEXT,
    pending_definition TEXT,
    pending_since BIGINT,
    PRIMARY KEY (server, kind, name)
);
