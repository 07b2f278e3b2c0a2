-- The last tool list each server answered with (a complete tools/list seen by the gateway):
-- rule conditions read a tool's annotations (meta.tool.annotations.readOnlyHint, …), and a
-- rule naming a tool the server never listed is saved with a warning.
CREATE TABLE server_tools (
    server TEXT NOT NULL,
    name TEXT NOT NULL,
    tool TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (server, name)
);
