//! PostgreSQL as Supabase runs it: chatgate's tables out of reach of its Data API's `anon` and `authenticated`
//! roles (set up with Supabase's default privileges on `public`, chatgate connected as a non-superuser owner),
//! and its poolers: Debian's PgBouncer in front of the test PostgreSQL, in transaction mode (refused at startup,
//! saying what to use) and session mode (works, sends repeated). Needs `CHATGATE_TEST_POSTGRES_URL` (a
//! superuser) and, for the pooler, `pgbouncer` (`.ci/run` installs it); says SKIPPED otherwise.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use chatgate::config::Config;
use common::{TestDb, TestServer};
use serde_json::json;
use sqlx::{Connection, PgConnection};

fn admin_url() -> Option<String> {
    let url = std::env::var("CHATGATE_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        common::skipped("supabase tests: set CHATGATE_TEST_POSTGRES_URL to run them on PostgreSQL");
    }
    url
}

/// `url` with its user (and no password) and database replaced.
fn url_as(url: &str, user: &str, database: &str) -> String {
    let mut url = reqwest::Url::parse(url).expect("a postgres URL");
    url.set_username(user).expect("user");
    url.set_password(None).expect("password");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

async fn execute(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// chatgate on `database_url`, the mock provider, titles off.
async fn gateway(database_url: String) -> TestServer {
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"{database_url}\"\n[auth]\njwt_secret = \"{}\"\n[providers.mock]\ndelay_ms = 0\n\
         [models.mock]\nprovider = \"mock\"\nmodel = \"mock-1\"\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n\
         [defaults]\nmodel = \"mock\"\n[titles]\nenabled = false\n",
        common::SECRET
    ))
    .expect("config");
    TestServer::start_with(config, TestDb::at(database_url)).await
}

/// Sends `content` in a new conversation of `user` and waits for the reply to be saved.
async fn chat(server: &TestServer, user: &str, content: &str) {
    let conversation = server.conversation(user).await;
    let response = server
        .send_message(&conversation, user, json!({ "content": content }))
        .send()
        .await
        .expect("send");
    assert!(response.status().is_success(), "{}", response.status());
    let reply = server.wait_for_reply(user, &conversation).await;
    assert_eq!(reply["status"], "complete", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatgate_tables_are_out_of_reach_of_supabase_anon_and_authenticated() {
    let Some(admin_url) = admin_url() else { return };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (owner, database) = (
        format!("chatgate_owner_{suffix}"),
        format!("chatgate_rls_{suffix}"),
    );
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
    // Supabase's API roles (cluster-wide; another run may have made them).
    execute(
        &mut admin,
        "DO $$ BEGIN
            CREATE ROLE anon NOLOGIN NOINHERIT;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN
            CREATE ROLE authenticated NOLOGIN NOINHERIT;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN
            CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
    )
    .await;
    execute(
        &mut admin,
        &format!("CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"),
    )
    .await;
    execute(
        &mut admin,
        &format!("CREATE DATABASE {database} OWNER {owner}"),
    )
    .await;
    // Supabase's default privileges: the API roles may use `public`, and every table the owner creates there
    // is granted to them.
    let db_admin_url = url_as(&admin_url, admin_url_user(&admin_url).as_str(), &database);
    let mut db_admin = PgConnection::connect(&db_admin_url).await.expect("connect");
    execute(
        &mut db_admin,
        &format!(
            "GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;"
        ),
    )
    .await;

    // chatgate, connected as the owner, migrates (tables made by the earlier migrations got the grants, as in a
    // deployment from before this change) and chats.
    let server = gateway(url_as(&admin_url, &owner, &database)).await;
    chat(&server, "alice", "a secret only chatgate may read").await;

    let tables: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
    )
    .fetch_all(&mut db_admin)
    .await
    .expect("tables");
    let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
    for table in [
        "conversations",
        "messages",
        "personas",
        "usage_records",
        "usage_daily",
        "media",
        "_sqlx_migrations",
    ] {
        assert!(names.contains(&table), "{table} in {names:?}");
    }
    // Every table, including any a later migration adds.
    for (table, rls) in &tables {
        assert!(rls, "{table} has no row level security");
    }
    for role in ["anon", "authenticated"] {
        for (table, _) in &tables {
            execute(&mut db_admin, &format!("SET ROLE {role}")).await;
            let read = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut db_admin)
                .await;
            let write = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut db_admin)
                .await;
            execute(&mut db_admin, "RESET ROLE").await;
            for (what, denied) in [("read", read.err()), ("delete", write.err())] {
                let code = denied
                    .as_ref()
                    .and_then(|e| e.as_database_error())
                    .and_then(|e| e.code().map(|c| c.to_string()));
                assert_eq!(
                    code.as_deref(),
                    Some("42501"),
                    "{role} could {what} {table}: {denied:?}"
                );
            }
        }
    }
    // chatgate itself reads and writes as before: what it saved is all there.
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM usage_records)",
    )
    .fetch_one(&mut db_admin)
    .await
    .expect("counts");
    assert_eq!(counts, (2, 1));
    chat(&server, "alice", "and a second one").await;
    server.stop().await;

    drop(db_admin);
    execute(
        &mut admin,
        &format!("DROP DATABASE {database} WITH (FORCE)"),
    )
    .await;
    execute(&mut admin, &format!("DROP ROLE {owner}")).await;
}

fn admin_url_user(url: &str) -> String {
    let url = reqwest::Url::parse(url).expect("a postgres URL");
    match url.username() {
        "" => "postgres".to_string(),
        user => user.to_string(),
    }
}

/// PgBouncer on a free loopback port in front of the test PostgreSQL, killed on drop.
struct PgBouncer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PgBouncer {
    fn installed() -> bool {
        std::process::Command::new("pgbouncer")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts PgBouncer with `pool_mode`, as Supabase's pooler is set up: the startup parameters sqlx sends
    /// accepted, and in transaction mode a small server pool shared by every client.
    async fn start(pool_mode: &str, admin_url: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let upstream = reqwest::Url::parse(admin_url).expect("a postgres URL");
        let user = admin_url_user(admin_url);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).expect("users");
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={} port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 200\nignore_startup_parameters = extra_float_digits,options\n",
                upstream.host_str().unwrap_or("127.0.0.1"),
                upstream.port().unwrap_or(5432),
                dir.path().join("users.txt").display(),
                // Transaction mode shares few servers among many clients; session mode needs one per client
                // connection (chatgate's pools and the migration's).
                pool_size = if pool_mode == "transaction" { 4 } else { 30 },
            ),
        )
        .expect("ini");
        // PgBouncer refuses to run as root; it drops to `-u` then, and must read its files as that user.
        for path in [
            dir.path().to_path_buf(),
            dir.path().join("users.txt"),
            dir.path().join("pgbouncer.ini"),
        ] {
            let mode = if path.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let mut command = std::process::Command::new("pgbouncer");
        if nix_is_root() {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbouncer");
        let bouncer = Self {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return bouncer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pgbouncer ({pool_mode}) did not listen within 5 s");
    }

    /// `url` through this pooler.
    fn route(&self, url: &str) -> String {
        let mut url = reqwest::Url::parse(url).expect("a postgres URL");
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(self.port)).expect("port");
        url.to_string()
    }
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_pooler_is_refused_at_startup_and_a_session_pooler_works() {
    let Some(admin_url) = admin_url() else { return };
    if !PgBouncer::installed() {
        common::skipped("pooler test: pgbouncer is not installed (apt-get install pgbouncer)");
        return;
    }
    let db = TestDb::new(common::Backend::Postgres)
        .await
        .expect("postgres");
    let transaction = PgBouncer::start("transaction", &admin_url).await;
    let session = PgBouncer::start("session", &admin_url).await;

    // Transaction mode: refused when connecting, saying what to use instead; nothing half-started.
    let err = chatgate::store::connect(&transaction.route(&db.url), 5)
        .await
        .err()
        .expect("a transaction pooler is refused");
    assert!(
        matches!(err, chatgate::store::StoreError::TransactionPooler),
        "{err}"
    );
    let message = err.to_string();
    for words in ["transaction mode", "session pooler", "direct connection"] {
        assert!(message.contains(words), "{message}");
    }
    // The binary says so and exits non-zero.
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .current_dir(dir.path())
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .env("DATABASE_URL", transaction.route(&db.url))
        .env("CHATGATE_SERVER__BIND", "127.0.0.1:0")
        .output()
        .expect("run chatgate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("session pooler"), "{stderr}");

    // Session mode (Supabase's pooler on 5432): every statement of a client stays on one server connection,
    // so prepared statements hold; chats in sequence and at once, more clients than the pool has servers.
    let server = gateway(session.route(&db.url)).await;
    for i in 0..5 {
        chat(
            &server,
            "bob",
            &format!("message {i} through the session pooler"),
        )
        .await;
    }
    futures::future::join_all((0..6).map(|i| {
        let server = &server;
        async move { chat(server, &format!("user-{i}"), "all at once").await }
    }))
    .await;
    server.stop().await;
    // A direct connection is never taken for a pooler.
    chatgate::store::connect(&db.url, 5).await.expect("direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_clash_the_probe_missed_is_logged_with_the_fix() {
    let Some(admin_url) = admin_url() else { return };
    let mut conn = PgConnection::connect(&admin_url).await.expect("connect");
    // PostgreSQL's own errors for the two clashes a transaction pooler causes: 42P05 and 26000.
    for sql in [
        "PREPARE sqlx_s_1 AS SELECT 1; PREPARE sqlx_s_1 AS SELECT 1",
        "EXECUTE sqlx_s_9",
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect_err(sql);
        let err = chatgate::error::Error::from(chatgate::store::StoreError::Database(err));
        assert_eq!(err.kind, chatgate::error::ErrorKind::Unavailable, "{sql}");
        let cause = err.cause.as_deref().unwrap_or("");
        assert!(cause.contains("session pooler"), "{sql}: {cause}");
        assert!(
            !err.message.contains("pooler"),
            "the cause is logged, not shown: {}",
            err.message
        );
    }
    sqlx::raw_sql("DEALLOCATE ALL")
        .execute(&mut conn)
        .await
        .expect("deallocate");
}
