-- Server requests (see requests.rs): an employee asks for a catalog server, a custom server or
-- access to an active one; an admin tests, reviews and decides. The proposal is stored without
-- secret values (JSON); the secrets are sealed under the request id with the deployment key.
-- A resubmitted request is a new row linked both ways (previous_id / next_id).
CREATE TABLE server_requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    requester_id TEXT NOT NULL,
    requester_email TEXT NOT NULL,
    server TEXT NOT NULL,
    catalog_entry TEXT,
    proposal TEXT,
    sealed_secrets TEXT,
    justification TEXT NOT NULL,
    origin TEXT NOT NULL,
    sensitive BIGINT NOT NULL DEFAULT 0,
    urgent BIGINT NOT NULL DEFAULT 0,
    tier TEXT NOT NULL,
    duplicate_of TEXT,
    previous_id TEXT,
    next_id TEXT,
    created_at BIGINT NOT NULL,
    submitted_at BIGINT,
    updated_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    decision TEXT,
    test_running_since BIGINT,
    test_step TEXT,
    test_result TEXT
);
CREATE INDEX server_requests_by_state ON server_requests (state, submitted_at);
CREATE INDEX server_requests_by_requester ON server_requests (requester_id, created_at);

-- The in-app inbox: what happened that someone should know (new requests for admins,
-- decisions for requesters, changed tools, reconnects needed).
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    link TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_by_user ON notifications (user_id, created_at);

-- Servers on the high-risk list (sensitive data, broad reach): shown in lists, reviewed
-- quarterly (reviewed_at is the last review).
CREATE TABLE high_risk_servers (
    server TEXT PRIMARY KEY,
    note TEXT NOT NULL,
    marked_by TEXT NOT NULL,
    marked_at BIGINT NOT NULL,
    reviewed_at BIGINT NOT NULL
);
