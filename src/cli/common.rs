//! Helpers shared by the verbs: logging, signals, repository opening.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Logs go to stderr; `-v`/`-vv` or `RUST_LOG` choose the level.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "pitr=info,warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The signal that asked a command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    /// `SIGTERM` / `SIGINT`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }

    /// The shell's status for a process ended by this signal (128 + number).
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Term => 143,
            Signal::Int => 130,
        }
    }
}

/// A token cancelled on the first SIGTERM or SIGINT. A second signal exits
/// at once.
pub fn shutdown_token() -> CancellationToken {
    shutdown_signal().0
}

/// Like [`shutdown_token`], also telling which signal cancelled the token.
pub fn shutdown_signal() -> (CancellationToken, Arc<OnceLock<Signal>>) {
    let token = CancellationToken::new();
    let which = Arc::new(OnceLock::new());
    let (t, w) = (token.clone(), which.clone());
    tokio::spawn(async move {
        let sig = wait_for_signal().await;
        let _ = w.set(sig);
        tracing::info!("{} received: stopping", sig.name());
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
    (token, which)
}

#[cfg(unix)]
async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => Signal::Term,
                _ = tokio::signal::ctrl_c() => Signal::Int,
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Int
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Signal {
    let _ = tokio::signal::ctrl_c().await;
    Signal::Int
}

/// Parses durations like `1s`, `500ms`, `24h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `url` with the password of `file` (`--password-file`, named `flag` in errors) added; `url`
/// itself when no file is given. The error is one sentence without the URL's secrets.
pub fn with_password_file(
    url: String,
    file: Option<&std::path::Path>,
    flag: &str,
) -> anyhow::Result<String> {
    let Some(file) = file else {
        return Ok(url);
    };
    let password =
        crate::secrets::read_password_file(file).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    crate::secrets::with_password(&url, &password, flag)
        .map_err(|e| anyhow::anyhow!("the database URL {} {e}", crate::redact::redact(&url)))
}
