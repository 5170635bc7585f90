//! Connecting to harkd: over its Unix socket or TCP (optionally TLS and a bearer token).

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri},
};

use super::{ListenAddr, pb::hark_client::HarkClient};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Addr(#[from] super::AddrError),
    #[error("cannot connect to harkd at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("invalid token: {0}")]
    Token(String),
}

/// Adds `authorization: Bearer TOKEN` when a token is set.
#[derive(Debug, Clone)]
pub struct BearerAuth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = HarkClient<InterceptedService<Channel, BearerAuth>>;

/// Connection options beyond the address.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub token: Option<String>,
    /// CA certificate (PEM) to trust; setting it switches TCP to TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// Name to verify in the server certificate (defaults to the host).
    pub tls_domain: Option<String>,
    /// HTTP/2 receive window (stream and connection), bytes. Small windows make a client that
    /// stops reading visible to the daemon sooner; the default suits normal clients.
    pub window_bytes: Option<u32>,
}

/// Connects to `addr` (`unix:PATH` or `HOST:PORT`).
pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<Client, ClientError> {
    let channel = channel(addr, opts).await?;
    let token = match &opts.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Token("not valid ASCII".into()))?,
        ),
        None => None,
    };
    Ok(HarkClient::with_interceptor(channel, BearerAuth(token))
        .max_decoding_message_size(64 * 1024 * 1024))
}

/// The HTTP/2 channel to `addr` (for clients of other services on the same socket: health,
/// reflection).
pub async fn channel(addr: &str, opts: &ConnectOptions) -> Result<Channel, ClientError> {
    let listen = ListenAddr::parse(addr)?;
    let conn_err = |e: tonic::transport::Error| ClientError::Connect {
        addr: addr.to_string(),
        message: crate::telemetry::error_chain(&e),
    };
    let channel = match listen {
        ListenAddr::Unix(path) => {
            let path: PathBuf = path;
            // The URI is required by the HTTP/2 layer but unused: the connector ignores it.
            Endpoint::try_from("http://[::1]:1")
                .map_err(conn_err)?
                .connect_timeout(Duration::from_secs(5))
                .initial_stream_window_size(opts.window_bytes)
                .initial_connection_window_size(opts.window_bytes)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(conn_err)?
        }
        ListenAddr::Tcp(a) => {
            let scheme = if opts.ca_pem.is_some() {
                "https"
            } else {
                "http"
            };
            let mut ep = Endpoint::from_shared(format!("{scheme}://{a}"))
                .map_err(conn_err)?
                .connect_timeout(Duration::from_secs(5))
                .initial_stream_window_size(opts.window_bytes)
                .initial_connection_window_size(opts.window_bytes)
                .tcp_nodelay(true);
            if let Some(ca) = &opts.ca_pem {
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let Some(d) = &opts.tls_domain {
                    tls = tls.domain_name(d.clone());
                }
                ep = ep.tls_config(tls).map_err(conn_err)?;
            }
            ep.connect().await.map_err(conn_err)?
        }
    };
    Ok(channel)
}
