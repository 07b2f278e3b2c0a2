-- Access rules (the policy issue): who may (or may not) use which servers, tools, resources
-- and prompts, under which conditions, until when. The rule as written (principals, scope,
-- conditions) is kept as one JSON document in `spec`; the columns the store filters and
-- orders on are projected out of it. Names are unique so decisions and audit events can name
-- the rule that decided.
CREATE TABLE rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    effect TEXT NOT NULL,
    global_scope BIGINT NOT NULL,
    spec TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT '',
    expires_at BIGINT,
    enabled BIGINT NOT NULL,
    author TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The rules that decided a call (a JSON list of rule names), and for admin actions the
-- details an auditor needs (a rule change: the rule before and after).
ALTER TABLE audit_events ADD COLUMN rules TEXT;
ALTER TABLE audit_events ADD COLUMN detail TEXT;
