//! Serving a router on a listener with limits, and with TLS when asked.
//!
//! Both endpoints (metrics and probes; admin) share the pipeline's process,
//! so a slow or flooding client must cost detection nothing: connections
//! beyond [`Limits::connections`] are closed at once, a client gets
//! [`Limits::header_secs`] to send its request head, a connection lives at
//! most [`Limits::connection_secs`], and a request body is capped (admin
//! requests are a few hundred bytes).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// What one endpoint allows a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed on accept.
    pub connections: usize,
    /// Time to send the request head (and the TLS handshake).
    pub header_secs: u64,
    /// Longest a connection stays open, keep-alive included.
    pub connection_secs: u64,
    /// Largest request body, bytes.
    pub body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 64,
            header_secs: 5,
            connection_secs: 30,
            body_bytes: 64 * 1024,
        }
    }
}

/// A TLS acceptor from PEM files: a certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = app.layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes));
    let permits = Arc::new(Semaphore::new(limits.connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, endpoint = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(endpoint = what, "connection refused: at the connection cap");
            continue;
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let header = Duration::from_secs(limits.header_secs);
            match tls {
                None => serve_one(stream, app, limits).await,
                Some(tls) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(header, tls.accept(stream)).await {
                        serve_one(stream, app, limits).await;
                    }
                }
            }
        });
    }
}

/// One connection, plain or TLS, within the head and lifetime limits.
async fn serve_one<S>(stream: S, app: Router, limits: Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_secs));
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let _ = tokio::time::timeout(Duration::from_secs(limits.connection_secs), conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(port: u16) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /ok HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    }

    /// Two silent clients hold both connections of a cap of two: a third is
    /// closed unanswered, and once the silent ones are dropped for taking
    /// too long over their request head, requests are served again.
    #[test]
    fn silent_clients_are_capped_and_timed_out() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (_stop, shutdown) = watch::channel(false);
        // Three seconds for a head: long enough that a loaded machine (the
        // whole suite runs beside this) does not time the silent clients out
        // before the third arrives, which would let it in.
        let limits = Limits {
            connections: 2,
            header_secs: 3,
            ..Limits::default()
        };
        let app = Router::new().route("/ok", axum::routing::get(|| async { "fine" }));
        runtime.spawn(serve(listener, app, None, limits, "test", shutdown));

        assert!(get(port).expect("served").ends_with("fine"));
        // Two silent clients, each seen held open (a read times out rather
        // than finding the connection closed). On a loaded machine the first
        // request's connection may still hold its permit for a moment, and a
        // silent client that arrives then is closed at the cap: it connects
        // again.
        let mut silent = Vec::new();
        for _ in 0..50 {
            if silent.len() == 2 {
                break;
            }
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
            match s.read(&mut [0u8; 1]) {
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    silent.push(s)
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        assert_eq!(silent.len(), 2, "two silent clients held open");
        let refused = get(port).unwrap_or_default();
        assert!(!refused.contains("fine"), "served beyond the cap: {refused}");
        for mut s in silent {
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut rest = Vec::new();
            // Closed by the server for want of a request head.
            let _ = s.read_to_end(&mut rest);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(get(port).expect("served again").ends_with("fine"));
    }
}
