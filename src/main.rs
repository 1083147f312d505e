//! The `chatgate` command: `serve` (the default), `migrate`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chatgate::auth::Authenticator;
use chatgate::config::Config;
use chatgate::{AppState, store};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

#[derive(Debug, Parser)]
#[command(
    name = "chatgate",
    version,
    about = "A streaming-first chat gateway for LLM providers"
)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true, env = "CHATGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a JWT signed with the configured secret, for trying the API.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Add `role: "admin"`.
        #[arg(long)]
        admin: bool,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("chatgate: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token { sub, admin, ttl } => {
            match Authenticator::new(&config.auth).mint(&sub, admin, ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("chatgate: cannot sign the token: {}", err.message);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate => run(config, migrate),
        Command::Serve => run(config, serve),
    }
}

fn run<F, Fut>(config: Config, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let _log_guard = match chatgate::telemetry::init(&config.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("chatgate: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chatgate: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("chatgate: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Config) -> Result<(), String> {
    let store = store::connect(config.database.url.expose_secret(), 1)
        .await
        .map_err(|e| format!("database: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("migrations: {e}"))?;
    println!("migrations applied ({})", store.backend());
    Ok(())
}

async fn serve(config: Config) -> Result<(), String> {
    let bind = config.bind_addr();
    let state = AppState::new(config).await.map_err(|e| e.to_string())?;
    let listener = chatgate::listen(bind, state.config.server.listen_backlog)
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        backend = state.store.backend(),
        "chatgate listening on http://{addr}"
    );
    chatgate::serve(state, listener, shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"))
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
