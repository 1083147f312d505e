-- Each message's own token count (its text as the tokenizer or the provider counted it), written with the
-- message (replies, from their usage) or just after it (user messages); NULL until counted, then counted once
-- when history is next fitted. History fitting sums these instead of counting text on every request.
ALTER TABLE messages ADD COLUMN content_tokens BIGINT;
