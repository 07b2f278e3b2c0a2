-- Per-user OAuth to upstream servers (see auth/upstream.rs). A server's OAuth settings (JSON);
-- the gateway's own client registration at each authorization server; each person's tokens,
-- sealed with the deployment key.
ALTER TABLE servers ADD COLUMN oauth TEXT;
CREATE TABLE upstream_clients (
    server TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    sealed_secret TEXT,
    redirect_uri TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (server, issuer)
);
CREATE TABLE upstream_tokens (
    user_id TEXT NOT NULL,
    server TEXT NOT NULL,
    sealed TEXT NOT NULL,
    expires_at BIGINT,
    status TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, server)
);
