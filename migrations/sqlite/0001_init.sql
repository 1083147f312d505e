-- chatgate schema, SQLite dialect. Ids are hyphenated UUID text; timestamps RFC 3339 UTC text; JSON as text.
CREATE TABLE personas (
    id                  TEXT PRIMARY KEY NOT NULL,
    slug                TEXT NOT NULL UNIQUE,
    display_name        TEXT NOT NULL,
    avatar_url          TEXT,
    description         TEXT NOT NULL DEFAULT '',
    category            TEXT NOT NULL DEFAULT 'general',
    relationship        TEXT NOT NULL CHECK (relationship IN ('parent','spouse','child','sibling','friend','colleague','other')),
    system_prompt       TEXT NOT NULL,
    personality_traits  TEXT NOT NULL DEFAULT '[]',
    model               TEXT,
    is_active           BOOLEAN NOT NULL DEFAULT 1,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY NOT NULL,
    user_id          TEXT NOT NULL,
    persona_id       TEXT NOT NULL REFERENCES personas(id),
    title            TEXT,
    archived         BOOLEAN NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_message_at  TEXT NOT NULL
);
CREATE INDEX conversations_user_recent ON conversations (user_id, last_message_at DESC, id DESC);

CREATE TABLE messages (
    id               TEXT PRIMARY KEY NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id        TEXT REFERENCES messages(id) ON DELETE SET NULL,
    role             TEXT NOT NULL CHECK (role IN ('user','assistant','system')),
    content          TEXT NOT NULL,
    message_type     TEXT NOT NULL DEFAULT 'text',
    media            TEXT NOT NULL DEFAULT '[]',
    status           TEXT NOT NULL CHECK (status IN ('streaming','complete','cancelled','failed','interrupted')),
    model            TEXT,
    provider         TEXT,
    finish_reason    TEXT,
    error            TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX messages_conversation_time ON messages (conversation_id, created_at, id);

CREATE TABLE usage_records (
    id                 TEXT PRIMARY KEY NOT NULL,
    user_id            TEXT NOT NULL,
    conversation_id    TEXT REFERENCES conversations(id) ON DELETE SET NULL,
    message_id         TEXT REFERENCES messages(id) ON DELETE SET NULL,
    persona_id         TEXT REFERENCES personas(id) ON DELETE SET NULL,
    model              TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    provider           TEXT NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    estimated          BOOLEAN NOT NULL,
    cost_nanousd       INTEGER NOT NULL,
    ttft_ms            INTEGER,
    duration_ms        INTEGER NOT NULL,
    created_at         TEXT NOT NULL
);
CREATE INDEX usage_records_user_time ON usage_records (user_id, created_at);
CREATE INDEX usage_records_message ON usage_records (message_id);

CREATE TABLE media (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    storage_key   TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX media_user ON media (user_id, created_at);
