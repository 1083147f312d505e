-- no-transaction
-- The checks on `messages.role` and `messages.status` compare with `=` where they said `IN (...)`, the same rule.
-- SQLite evaluates a constant `IN` list of more than two values through a temporary B-tree it builds from the
-- list (`OpenEphemeral`), and a CHECK runs once a row: every message insert, and every update of a status, built
-- two. SQLite changes a CHECK only by rebuilding the table (https://sqlite.org/lang_altertable.html#otheralter):
-- foreign keys off, which takes effect only outside a transaction (hence `no-transaction`), so that dropping the
-- old table neither cascades to the rows that reference it nor fails; then, in one transaction, the new table,
-- the rows copied as they are, the old table dropped, the new one renamed, its indexes and its trigger again.
-- A run cut short before it was recorded runs again from the start.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
DROP TABLE IF EXISTS messages_rebuilt;
CREATE TABLE messages_rebuilt (
    id                      TEXT PRIMARY KEY NOT NULL,
    conversation_id         TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id               TEXT REFERENCES messages(id) ON DELETE SET NULL,
    role                    TEXT NOT NULL CHECK (role = 'user' OR role = 'assistant' OR role = 'system'),
    content                 TEXT NOT NULL,
    message_type            TEXT NOT NULL DEFAULT 'text',
    media                   TEXT NOT NULL DEFAULT '[]',
    status                  TEXT NOT NULL CHECK (status = 'streaming' OR status = 'complete' OR status = 'cancelled'
                                                 OR status = 'failed' OR status = 'interrupted'),
    model                   TEXT,
    provider                TEXT,
    finish_reason           TEXT,
    error                   TEXT,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL,
    instance_id             TEXT,
    prompt_tokens_estimate  INTEGER,
    content_tokens          INTEGER
);
INSERT INTO messages_rebuilt (id, conversation_id, parent_id, role, content, message_type, media, status, model,
                              provider, finish_reason, error, created_at, updated_at, instance_id,
                              prompt_tokens_estimate, content_tokens)
SELECT id, conversation_id, parent_id, role, content, message_type, media, status, model, provider, finish_reason,
       error, created_at, updated_at, instance_id, prompt_tokens_estimate, content_tokens
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_rebuilt RENAME TO messages;
CREATE INDEX messages_conversation_time ON messages (conversation_id, created_at, id);
CREATE INDEX messages_streaming ON messages (status, updated_at) WHERE status = 'streaming';
CREATE INDEX messages_parent ON messages (parent_id);
CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
BEGIN
    UPDATE conversations
    SET last_message_at = MAX(last_message_at, NEW.created_at), updated_at = NEW.created_at
    WHERE id = NEW.conversation_id;
END;
COMMIT;
PRAGMA foreign_keys = ON;
