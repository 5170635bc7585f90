//! The gRPC surface: the only module that sees tonic and generated protobuf types.
//!
//! - [`service`]: the `hark.v1.Hark` implementation (subscribe, status, devices, StreamAudio);
//! - [`convert`]: domain <-> protobuf conversions;
//! - [`server`]: listeners (Unix socket, TCP with TLS and bearer token), limits, health and
//!   reflection;
//! - [`tts`]: the text-to-speech RPCs (Synthesize, ListVoices, Phonemize, lexicon);
//! - [`client`]: connecting from `hark` and tests.

pub mod client;
pub mod codec;
pub mod convert;
pub mod h2_authority;
pub mod jobs;
pub mod server;
pub mod service;
pub mod tts;

use std::{net::SocketAddr, path::PathBuf};

/// Generated protobuf and gRPC code for `hark.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("hark.v1");

    /// Encoded descriptors of the API, served through reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hark_descriptor");
}

pub use server::{ServeOptions, serve};
pub use service::{ApiContext, HarkService};

/// A parsed `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not unix:PATH or HOST:PORT")]
    Malformed(String),
    #[error(
        "{0} is not a loopback address: listening beyond loopback needs server.tls_cert, \
         server.tls_key and server.token_file"
    )]
    Insecure(SocketAddr),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, AddrError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddrError::Malformed(s.into()));
            }
            return Ok(ListenAddr::Unix(path.into()));
        }
        let s2 = s.replacen("localhost:", "127.0.0.1:", 1);
        s2.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| AddrError::Malformed(s.into()))
    }

    /// TCP beyond loopback must be encrypted and authenticated.
    pub fn check_security(self, tls: bool, token: bool) -> Result<Self, AddrError> {
        match self {
            ListenAddr::Tcp(a) => {
                let secured = tls && token;
                if a.ip().is_loopback() || secured {
                    Ok(ListenAddr::Tcp(a))
                } else {
                    Err(AddrError::Insecure(a))
                }
            }
            other => Ok(other),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            ListenAddr::parse("unix:/tmp/h.sock").unwrap(),
            ListenAddr::Unix("/tmp/h.sock".into())
        );
        assert!(matches!(
            ListenAddr::parse("localhost:0").unwrap(),
            ListenAddr::Tcp(a) if a.ip().is_loopback()
        ));
        assert!(ListenAddr::parse("nonsense").is_err());
        let public = ListenAddr::parse("0.0.0.0:1").unwrap();
        assert!(public.clone().check_security(true, false).is_err());
        assert!(public.check_security(true, true).is_ok());
    }
}
