-- chatgate schema, PostgreSQL dialect (Supabase included). Same tables and columns as migrations/sqlite.
CREATE TABLE personas (
    id                  UUID PRIMARY KEY,
    slug                TEXT NOT NULL UNIQUE,
    display_name        TEXT NOT NULL,
    avatar_url          TEXT,
    description         TEXT NOT NULL DEFAULT '',
    category            TEXT NOT NULL DEFAULT 'general',
    relationship        TEXT NOT NULL CHECK (relationship IN ('parent','spouse','child','sibling','friend','colleague','other')),
    system_prompt       TEXT NOT NULL,
    personality_traits  JSONB NOT NULL DEFAULT '[]',
    model               TEXT,
    is_active           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);

CREATE TABLE conversations (
    id               UUID PRIMARY KEY,
    user_id          TEXT NOT NULL,
    persona_id       UUID NOT NULL REFERENCES personas(id),
    title            TEXT,
    archived         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    last_message_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX conversations_user_recent ON conversations (user_id, last_message_at DESC, id DESC);

CREATE TABLE messages (
    id               UUID PRIMARY KEY,
    conversation_id  UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id        UUID REFERENCES messages(id) ON DELETE SET NULL,
    role             TEXT NOT NULL CHECK (role IN ('user','assistant','system')),
    content          TEXT NOT NULL,
    message_type     TEXT NOT NULL DEFAULT 'text',
    media            JSONB NOT NULL DEFAULT '[]',
    status           TEXT NOT NULL CHECK (status IN ('streaming','complete','cancelled','failed','interrupted')),
    model            TEXT,
    provider         TEXT,
    finish_reason    TEXT,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX messages_conversation_time ON messages (conversation_id, created_at, id);
CREATE INDEX messages_parent ON messages (parent_id);

CREATE TABLE usage_records (
    id                 UUID PRIMARY KEY,
    user_id            TEXT NOT NULL,
    conversation_id    UUID REFERENCES conversations(id) ON DELETE SET NULL,
    message_id         UUID REFERENCES messages(id) ON DELETE SET NULL,
    persona_id         UUID REFERENCES personas(id) ON DELETE SET NULL,
    model              TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    provider           TEXT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens   BIGINT NOT NULL DEFAULT 0,
    estimated          BOOLEAN NOT NULL,
    cost_nanousd       BIGINT NOT NULL,
    ttft_ms            BIGINT,
    duration_ms        BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX usage_records_user_time ON usage_records (user_id, created_at);
CREATE INDEX usage_records_message ON usage_records (message_id);

CREATE TABLE media (
    id            UUID PRIMARY KEY,
    user_id       TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    storage_key   TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX media_user ON media (user_id, created_at);
