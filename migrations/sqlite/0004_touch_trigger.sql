-- A new message marks its conversation active, in the same statement: one round trip per insert.
CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
BEGIN
    UPDATE conversations
    SET last_message_at = MAX(last_message_at, NEW.created_at), updated_at = NEW.created_at
    WHERE id = NEW.conversation_id;
END;
