-- Each message's own token count: a reply's from its usage, written with it; a user message's (and older rows')
-- counted with tiktoken the first time fitting a long history needs it. NULL until then. History fitting sums
-- these instead of counting text on every request.
ALTER TABLE messages ADD COLUMN content_tokens INTEGER;
