//! Listeners and the tonic server: Unix socket (mode 0660 by default) and/or TCP; TLS and a bearer
//! token for anything beyond loopback; message-size and stream limits; health and reflection so
//! grpcurl/grpcui work without the .proto file.

use std::{future::Future as _, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, UnixListener},
    task::JoinHandle,
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
    /// Open connections across all listeners.
    pub max_connections: usize,
    /// Close a connection that sends nothing for this long.
    pub connection_idle: Duration,
}

/// Identity of one accepted connection, in every request's extensions (limits per
/// connection, such as the Subscribe share, key on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub id: u64,
}

impl ConnInfo {
    /// The connection a request came in on (TLS or not); `None` for requests not served by
    /// [`serve`] (unit tests calling the service directly).
    pub fn of<T>(request: &Request<T>) -> Option<ConnInfo> {
        let ext = request.extensions();
        ext.get::<ConnInfo>().copied().or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(|t| *t.get_ref())
        })
    }
}

/// An accepted connection: counts against `max_connections` while open, and fails with
/// `TimedOut` once the peer has sent nothing for `idle` (1124 silent TCP connections used to
/// exhaust the descriptor limit and lock everyone out).
pub struct Conn<IO> {
    io: IO,
    info: ConnInfo,
    idle: Duration,
    last_read: tokio::time::Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<IO> Conn<IO> {
    fn new(io: IO, id: u64, idle: Duration, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            io,
            info: ConnInfo { id },
            idle,
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            _slot: slot,
        }
    }
}

impl<IO> std::fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<IO> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let me = &mut *self;
        match std::pin::Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    me.last_read = tokio::time::Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                // Re-arm lazily: the timer fires at the old deadline, then moves to the last
                // read plus `idle` unless that has passed.
                while me.timer.as_mut().poll(cx).is_ready() {
                    let due = me.last_read + me.idle;
                    if due <= tokio::time::Instant::now() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connection idle",
                        )));
                    }
                    me.timer.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections from `accept` into a stream of [`Conn`]s for tonic: connections beyond
/// the limit are closed at once, and accept errors (out of descriptors) are logged at most
/// once a second and retried after a pause instead of spinning.
fn incoming<S, F, Fut>(
    mut accept: F,
    slots: Arc<tokio::sync::Semaphore>,
    ids: Arc<std::sync::atomic::AtomicU64>,
    idle: Duration,
    limit: usize,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn<S>>>
where
    S: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut last_warn: Option<std::time::Instant> = None;
        let mut quiet: u64 = 0;
        let mut warn = |msg: String| {
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                if quiet > 0 {
                    tracing::warn!(suppressed = quiet, "{msg}");
                } else {
                    tracing::warn!("{msg}");
                }
                last_warn = Some(std::time::Instant::now());
                quiet = 0;
            } else {
                quiet += 1;
            }
        };
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                r = accept() => r,
            };
            match r {
                Ok(stream) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let id = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if tx
                            .send(Ok(Conn::new(stream, id, idle, slot)))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(_) => {
                        drop(stream);
                        warn(format!(
                            "Refused a connection: {limit} are open (server.max_connections)."
                        ));
                    }
                },
                Err(e) => {
                    warn(format!(
                        "Accepting a connection failed: {e} (out of file descriptors? raise                          LimitNOFILE or lower server.max_connections)."
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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
) -> Result<Served, ServeError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    // NOT_SERVING until the daemon says audio flows ([`Served::health`]).
    set_health(&health, false).await;
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
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    let ids = Arc::new(std::sync::atomic::AtomicU64::new(1));
    for addr in &opts.listen {
        let is_tcp = matches!(addr, ListenAddr::Tcp(_));
        let mut builder = Server::builder()
            .layer(tower::util::MapResponseLayer::new(size_limit_code))
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
                let listener = Arc::new(listener);
                let conns = incoming(
                    move || {
                        let l = listener.clone();
                        // Stock grpcio, grpc-java and grpc-swift send the socket path as
                        // :authority, which h2 refuses; AuthorityFix makes it localhost.
                        async move {
                            l.accept()
                                .await
                                .map(|(s, _)| super::h2_authority::AuthorityFix::new(s))
                        }
                    },
                    slots.clone(),
                    ids.clone(),
                    opts.connection_idle,
                    opts.max_connections,
                    token.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let r = router
                        .serve_with_incoming_shutdown(conns, token.cancelled_owned())
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
                let listener = Arc::new(listener);
                let conns = incoming(
                    move || {
                        let l = listener.clone();
                        async move {
                            let (s, _) = l.accept().await?;
                            // Events are small and latency matters more than packet count.
                            let _ = s.set_nodelay(true);
                            Ok(s)
                        }
                    },
                    slots.clone(),
                    ids.clone(),
                    opts.connection_idle,
                    opts.max_connections,
                    token.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    router
                        .serve_with_incoming_shutdown(conns, token.cancelled_owned())
                        .await
                        .map_err(|e| ServeError::Serve {
                            addr: shown.to_string(),
                            message: e.to_string(),
                        })
                }));
            }
        }
    }
    Ok(Served {
        bound,
        tasks,
        health,
    })
}

/// tonic answers a request larger than the message limit with OUT_OF_RANGE; for a client it
/// is a size limit, RESOURCE_EXHAUSTED as the README says (and as StreamAudio already maps it).
fn size_limit_code<B>(
    mut r: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = r.headers();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("too large") || m.contains("too%20large"));
    if out_of_range && too_large {
        r.headers_mut().insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    r
}

/// What [`serve`] started.
#[derive(Debug)]
pub struct Served {
    pub bound: Vec<ListenAddr>,
    pub tasks: Vec<JoinHandle<Result<(), ServeError>>>,
    /// grpc.health.v1 status of `hark.v1.Hark` and of the server as a whole ("").
    pub health: tonic_health::server::HealthReporter,
}

/// Sets the health of the Hark service and of the server ("").
pub async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health
        .set_service_status(
            <HarkServer<HarkService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// The default socket's directory (`$XDG_RUNTIME_DIR/hark`, `/tmp/hark-UID`, `/run/harkd`)
/// must be ours and closed to others: in a pre-created `/tmp/hark-UID` another user could
/// swap the socket for their own. Ours with group/other access is tightened to 0700.
fn check_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by uid {uid}; refusing to put the socket there \
                 (another user could replace it): remove it or set HARK_SOCKET",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 && uid != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn bind_unix(path: &PathBuf, mode: u32) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let bind_err = |source| ServeError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(bind_err)?;
        }
        if dir == crate::config::default_socket_path().parent().unwrap_or(dir) {
            check_private_dir(dir).map_err(bind_err)?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        // Only a socket is ever replaced: `--listen unix:PATH` on a regular file deleted it.
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_directory_must_be_ours_and_private() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("hark-1000");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        check_private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o777;
        if uid != 0 {
            assert_eq!(mode, 0o700);
        }
        // A directory someone else owns (only root can make one here) is refused.
        if uid == 0 {
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: chown on a path we created.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            let err = check_private_dir(&d).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        }
        // A symlink to a directory is not a directory we own.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(check_private_dir(&link).is_err());
    }
}
