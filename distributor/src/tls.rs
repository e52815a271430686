//! The API over TLS: a rustls acceptor in front of the axum router (HTTP/1.1 and HTTP/2 by
//! ALPN), the certificate reloaded when its files change and on SIGHUP (a bad new pair keeps
//! the old one), connections drained on shutdown.

use std::sync::Arc;
use std::time::Duration;

use berth_shared::tls::{Reload, ReloadingCert};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::metrics::Metrics;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown begins.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cert: Arc<ReloadingCert>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = berth_shared::tls::server_config(Arc::clone(&cert), &[b"h2", b"http/1.1"])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let watch = tokio::spawn(watch(cert, metrics));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(router);
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    watch.abort();
    let _ = tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown()).await;
    Ok(())
}

/// Reloads the certificate when its files change (every `[tls] watch`) and on SIGHUP.
async fn watch(cert: Arc<ReloadingCert>, metrics: Arc<Metrics>) {
    metrics.tls_cert_expiry.set(cert.not_after().unwrap_or(0));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let every = cert.files().watch.get();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.tick().await;
    loop {
        let force = tokio::select! {
            // "0s": SIGHUP only.
            _ = async { if every.is_zero() { std::future::pending().await } else { tick.tick().await } } => false,
            _ = async { match hangup.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => true,
        };
        match cert.reload(force) {
            Reload::Unchanged => {}
            Reload::Loaded => {
                metrics.tls_reloads.with_label_values(&["loaded"]).inc();
                metrics.tls_cert_expiry.set(cert.not_after().unwrap_or(0));
                tracing::info!("TLS certificate reloaded");
            }
            Reload::Refused(e) => {
                metrics.tls_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "new TLS certificate refused: the previous one stays in service");
            }
        }
    }
}
