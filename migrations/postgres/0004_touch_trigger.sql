-- A new message marks its conversation active, in the same statement: one round trip per insert.
CREATE FUNCTION messages_touch_conversation() RETURNS trigger AS $$
BEGIN
    UPDATE conversations
    SET last_message_at = GREATEST(last_message_at, NEW.created_at), updated_at = NEW.created_at
    WHERE id = NEW.conversation_id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION messages_touch_conversation();
