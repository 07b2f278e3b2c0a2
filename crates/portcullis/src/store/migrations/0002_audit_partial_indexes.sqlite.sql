-- A tools/call is recorded as 'pending' and committed before it is forwarded, so that insert
-- is on every call's path. Leaving pending rows out of the query indexes makes it write two
-- pages instead of four; the outcome's update, which is batched, adds the row to them. Queries
-- read pending rows through their own small index.
DROP INDEX audit_events_ts;
DROP INDEX audit_events_user;
DROP INDEX audit_events_server;
CREATE INDEX audit_events_ts ON audit_events (ts) WHERE outcome <> 'pending';
CREATE INDEX audit_events_user ON audit_events (user_id, seq) WHERE outcome <> 'pending';
CREATE INDEX audit_events_server ON audit_events (server, seq) WHERE outcome <> 'pending';
CREATE INDEX audit_events_pending ON audit_events (seq) WHERE outcome = 'pending';
