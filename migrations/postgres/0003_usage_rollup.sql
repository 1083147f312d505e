-- Crash recovery bills an interrupted reply with the prompt estimate made when it started.
ALTER TABLE messages ADD COLUMN prompt_tokens_estimate BIGINT;

-- Daily rollup of usage_records, maintained in the transaction that writes each record: dashboards aggregate
-- at most a row per user, day, model and persona.
CREATE TABLE usage_daily (
    user_id             TEXT NOT NULL,
    day                 TEXT NOT NULL,               -- YYYY-MM-DD, UTC
    model               TEXT NOT NULL,
    persona_id          TEXT NOT NULL DEFAULT '',    -- '' when none
    requests            BIGINT NOT NULL DEFAULT 0,
    estimated_requests  BIGINT NOT NULL DEFAULT 0,
    prompt_tokens       BIGINT NOT NULL DEFAULT 0,
    completion_tokens   BIGINT NOT NULL DEFAULT 0,
    cached_tokens       BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens    BIGINT NOT NULL DEFAULT 0,
    cost_nanousd        BIGINT NOT NULL DEFAULT 0,
    updated_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, day, model, persona_id)
);
CREATE INDEX usage_daily_day ON usage_daily (day);

INSERT INTO usage_daily (user_id, day, model, persona_id, requests, estimated_requests, prompt_tokens,
                         completion_tokens, cached_tokens, reasoning_tokens, cost_nanousd, updated_at)
SELECT user_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), model, COALESCE(persona_id::text, ''),
       COUNT(*), SUM(CASE WHEN estimated THEN 1 ELSE 0 END), SUM(prompt_tokens), SUM(completion_tokens),
       SUM(cached_tokens), SUM(reasoning_tokens), SUM(cost_nanousd), MAX(created_at)
FROM usage_records
GROUP BY user_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), model, COALESCE(persona_id::text, '');
-- The ETag version stamp of one user (MAX(updated_at), COUNT(*)) reads this index alone.
CREATE INDEX usage_daily_user_updated ON usage_daily (user_id, updated_at);
