//! Logging: text or JSON lines to stderr, optionally also to a rotating file (tracing-appender).

pub mod metrics;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::{LogConfig, LogFormat, LogRotation};

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`. Keep the returned guard alive: it flushes
/// the file writer on drop.
///
/// # Errors
/// When `log.level` is not a valid filter or a subscriber is already installed.
pub fn init(config: &LogConfig) -> Result<Option<WorkerGuard>, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(env).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(&config.level).map_err(|e| format!("log.level: {e}"))?,
    };
    let (file, guard) = if config.dir.is_empty() {
        (None, None)
    } else {
        let rotation = match config.rotation {
            LogRotation::Hourly => Rotation::HOURLY,
            LogRotation::Daily => Rotation::DAILY,
            LogRotation::Never => Rotation::NEVER,
        };
        let appender = RollingFileAppender::new(rotation, &config.dir, "chatgate.log");
        let (writer, guard) = tracing_appender::non_blocking(appender);
        (Some(writer), Some(guard))
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (config.format, file) {
        (LogFormat::Json, Some(file)) => builder
            .json()
            .with_writer(std::io::stderr.and(file))
            .try_init(),
        (LogFormat::Json, None) => builder.json().with_writer(std::io::stderr).try_init(),
        (LogFormat::Text, Some(file)) => builder
            .with_writer(std::io::stderr.and(file))
            .with_ansi(false)
            .try_init(),
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}
