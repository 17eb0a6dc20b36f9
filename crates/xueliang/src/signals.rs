//! SIGINT and SIGTERM: the first starts a graceful shutdown, a second exits at once.

use xueliang_core::shutdown::Shutdown;

/// Spawns the signal watcher. Returns at once; handlers are installed before it returns.
#[cfg(unix)]
pub fn spawn(shutdown: Shutdown) -> Result<(), xueliang_core::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    use xueliang_core::{ErrorKind, ResultExt};
    let mut int = signal(SignalKind::interrupt())
        .err_kind(ErrorKind::Internal, || "install SIGINT handler".into())?;
    let mut term = signal(SignalKind::terminate())
        .err_kind(ErrorKind::Internal, || "install SIGTERM handler".into())?;
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        };
        let first = next().await;
        tracing::info!(
            signal = first,
            "shutting down gracefully; send the signal again to exit at once"
        );
        shutdown.trigger();
        let second = next().await;
        tracing::warn!(signal = second, "second signal: exiting immediately");
        std::process::exit(130);
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn spawn(shutdown: Shutdown) -> Result<(), xueliang_core::Error> {
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.trigger();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    Ok(())
}
