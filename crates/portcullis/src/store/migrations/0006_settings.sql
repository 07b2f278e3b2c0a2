-- Deployment-wide settings that admins change at run time (not the start-up configuration).
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
