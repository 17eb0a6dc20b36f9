//! Logging setup: `XUELIANG_LOG` (an EnvFilter, default `info`) and `XUELIANG_LOG_FORMAT`
//! (`text` or `json`), to stderr. Panics are logged like any other error.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

const DEFAULT_FILTER: &str = "info,sqlx=warn,rumqttd=warn";

/// Installs the global subscriber. Fails, naming the variable, on a bad filter or format.
pub fn init() -> Result<(), String> {
    let filter = match std::env::var("XUELIANG_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f)
            .map_err(|e| format!("XUELIANG_LOG={f:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let format = std::env::var("XUELIANG_LOG_FORMAT").unwrap_or_else(|_| "text".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    match format.as_str() {
        "text" | "" => builder.try_init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        other => {
            return Err(format!(
                "XUELIANG_LOG_FORMAT={other:?} is not a log format; use text or json"
            ));
        }
    }
    .map_err(|e| format!("cannot install the logger: {e}"))
}

/// Sends panics through tracing so they reach the same place as every other error.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let backtrace = std::backtrace::Backtrace::capture();
        tracing::error!(%location, %thread, %backtrace, "panic: {payload}");
    }));
}
