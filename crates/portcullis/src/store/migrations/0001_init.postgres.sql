CREATE TABLE revision (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO revision (id, value) VALUES (1, 1);

CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    transport TEXT NOT NULL,
    url TEXT,
    command TEXT,
    args TEXT NOT NULL DEFAULT '[]',
    env_names TEXT NOT NULL DEFAULT '[]',
    header_names TEXT NOT NULL DEFAULT '[]',
    sealed_secrets BYTEA NOT NULL,
    public BIGINT NOT NULL DEFAULT 0,
    shared_process BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    grantee TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (server_id, grantee, principal_id)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE audit_events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    user_id TEXT,
    principal TEXT NOT NULL,
    server TEXT,
    method TEXT NOT NULL,
    target TEXT,
    sealed_arguments BYTEA,
    arguments_digest TEXT,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    latency_us BIGINT,
    client_name TEXT,
    client_version TEXT,
    ip TEXT,
    correlation_id TEXT NOT NULL,
    replica TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_user ON audit_events (user_id, seq);
CREATE INDEX audit_events_server ON audit_events (server, seq);

CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);
