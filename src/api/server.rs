//! Listeners and the tonic server: Unix socket (mode 0660 by default) and/or TCP; TLS and a bearer
//! token for anything beyond loopback; message-size and stream limits; health and reflection so
//! grpcurl/grpcui work without the .proto file.

use std::{path::PathBuf, time::Duration};

use tokio::{
    net::{TcpListener, UnixListener},
    task::JoinHandle,
};
use tokio_stream::{
    StreamExt as _,
    wrappers::{TcpListenerStream, UnixListenerStream},
};
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Identity, Server, ServerTlsConfig},
};

use super::{ListenAddr, pb, pb::hark_server::HarkServer, service::HarkService};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another daemon is already listening on {0}")]
    InUse(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("reflection setup: {0}")]
    Reflection(String),
    #[error("server on {addr} failed: {message}")]
    Serve { addr: String, message: String },
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: Vec<ListenAddr>,
    pub socket_mode: u32,
    /// PEM certificate and key.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token required on TCP listeners.
    pub token: Option<String>,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
}

/// Checks `authorization: Bearer TOKEN` when a token is configured.
#[derive(Debug, Clone)]
pub struct BearerCheck {
    expected: Option<String>,
}

impl Interceptor for BearerCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant-time comparison: do not leak the token's prefix through timing.
        let ok = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token (authorization: Bearer TOKEN)",
            ))
        }
    }
}

/// Binds every listener (failing early), logs `listening on ADDR` for each, and serves until
/// `shutdown` is cancelled. Returns the bound addresses and the server tasks.
pub async fn serve(
    service: HarkService,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(Vec<ListenAddr>, Vec<JoinHandle<Result<(), ServeError>>>), ServeError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<HarkServer<HarkService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let refl_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let refl_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let mut bound = Vec::new();
    let mut tasks = Vec::new();
    for addr in &opts.listen {
        let is_tcp = matches!(addr, ListenAddr::Tcp(_));
        let mut builder = Server::builder()
            .max_concurrent_streams(opts.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if is_tcp && let Some((cert, key)) = &opts.tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let auth = BearerCheck {
            expected: if is_tcp { opts.token.clone() } else { None },
        };
        let hark = InterceptedService::new(
            HarkServer::new(service.clone())
                // Leave room for framing around the largest audio payload we accept.
                .max_decoding_message_size(opts.max_message_bytes + 64 * 1024),
            auth,
        );
        let router = builder
            .add_service(health_svc.clone())
            .add_service(refl_v1.clone())
            .add_service(refl_v1alpha.clone())
            .add_service(hark);
        let token = shutdown.clone();
        match addr {
            ListenAddr::Unix(path) => {
                let listener = bind_unix(path, opts.socket_mode)?;
                let shown = ListenAddr::Unix(path.clone());
                tracing::info!("listening on {shown}");
                bound.push(shown.clone());
                let path = path.clone();
                tasks.push(tokio::spawn(async move {
                    let r = router
                        .serve_with_incoming_shutdown(
                            UnixListenerStream::new(listener),
                            token.cancelled_owned(),
                        )
                        .await;
                    let _ = std::fs::remove_file(&path);
                    r.map_err(|e| ServeError::Serve {
                        addr: shown.to_string(),
                        message: e.to_string(),
                    })
                }));
            }
            ListenAddr::Tcp(a) => {
                let listener = TcpListener::bind(a)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: a.to_string(),
                        source,
                    })?;
                let local = listener.local_addr().map_err(|source| ServeError::Bind {
                    addr: a.to_string(),
                    source,
                })?;
                let shown = ListenAddr::Tcp(local);
                tracing::info!("listening on {shown}");
                bound.push(shown.clone());
                let incoming = TcpListenerStream::new(listener).map(|s| {
                    s.inspect(|s| {
                        // Events are small and latency matters more than packet count.
                        let _ = s.set_nodelay(true);
                    })
                });
                tasks.push(tokio::spawn(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                        .await
                        .map_err(|e| ServeError::Serve {
                            addr: shown.to_string(),
                            message: e.to_string(),
                        })
                }));
            }
        }
    }
    Ok((bound, tasks))
}

fn bind_unix(path: &PathBuf, mode: u32) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bind_err = |source| ServeError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        // A live socket means another daemon; a dead one is left over from a crash.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(format!("unix:{}", path.display())));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}
