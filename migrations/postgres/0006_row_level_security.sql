-- Supabase serves every table in `public` through its Data API (PostgREST) to the `anon` and `authenticated`
-- roles, and its default privileges grant them each new table: anyone holding a project's public anon key could
-- read chatgate's conversations, messages and usage. chatgate's tables are chatgate's alone:
--   * row level security on every table, with no policy: no role but the owner (chatgate, which bypasses row
--     level security as the owner) and roles with BYPASSRLS (Supabase's service_role) sees or changes a row;
--   * the grants those defaults gave `anon` and `authenticated` revoked, where those roles exist.
-- On a plain PostgreSQL neither role exists and chatgate is unaffected. A table added by a later migration must
-- do the same (tests/supabase.rs checks every table).
ALTER TABLE personas ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE media ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE message_media ENABLE ROW LEVEL SECURITY;
ALTER TABLE _sqlx_migrations ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    api_role text;
    chatgate_table text;
BEGIN
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            FOREACH chatgate_table IN ARRAY ARRAY['personas', 'conversations', 'messages', 'usage_records',
                'media', 'usage_daily', 'message_media', '_sqlx_migrations'] LOOP
                EXECUTE format('REVOKE ALL ON TABLE %I FROM %I', chatgate_table, api_role);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
