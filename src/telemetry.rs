//! Logging setup: human or JSON lines on stderr, filtered by `RUST_LOG` or the config; the one-line
//! text of an error and its causes that the binaries print.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `filter`.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = result;
}

/// An error and its causes, `: `-joined, each cause left out when the text before it already
/// says it: hark's errors that wrap another quote it ("source: X", caused by X), and printing the
/// whole chain said X twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("source: {0}")]
        Quoting(#[source] std::io::Error),
        #[error("reading the config")]
        Plain(#[source] std::io::Error),
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let io = || std::io::Error::other("no such file");
        assert_eq!(
            super::error_chain(&Outer::Quoting(io())),
            "source: no such file"
        );
        assert_eq!(
            super::error_chain(&Outer::Plain(io())),
            "reading the config: no such file"
        );
    }
}
