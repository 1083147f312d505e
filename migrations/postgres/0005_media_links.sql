-- Which messages use which uploaded media: deleting a conversation deletes the media records only its messages
-- used (their files go in the background sweep).
CREATE TABLE message_media (
    message_id  UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    media_id    UUID NOT NULL REFERENCES media(id) ON DELETE CASCADE,
    PRIMARY KEY (message_id, media_id)
);
CREATE INDEX message_media_media ON message_media (media_id);
