-- Crash safety: which process is streaming a message (checkpointed rows), found again after a crash.
ALTER TABLE messages ADD COLUMN instance_id TEXT;
CREATE INDEX messages_streaming ON messages (status, updated_at) WHERE status = 'streaming';
-- Exactly one usage record per generation.
DROP INDEX usage_records_message;
CREATE UNIQUE INDEX usage_records_message ON usage_records (message_id);
CREATE INDEX IF NOT EXISTS messages_parent ON messages (parent_id);
