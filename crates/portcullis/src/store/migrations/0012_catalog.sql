-- The server catalog: pre-vetted entries employees pick from when they request a server.
-- The entry is stored as written (JSON); retired entries stay (requests and servers made from
-- them still name them) but are no longer offered.
CREATE TABLE catalog_entries (
    name TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    source TEXT NOT NULL,
    retired_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
