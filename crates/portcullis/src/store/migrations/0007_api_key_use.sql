-- When each API key was last used (written in batches, off the request path).
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
