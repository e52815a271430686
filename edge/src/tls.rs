//! The pull API over TLS: Pingora's rustls listener with ALPN `h2` and `http/1.1`, serving the
//! pair from `[tls]` through a resolver that swaps it when the files change (checked every
//! `[tls] watch`, every second by default) and on SIGHUP. A new pair that does not load keeps the old one in service; the
//! attempt is logged and counted (`berth_edge_tls_reloads_total{result="refused"}`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_shared::tls::{Reload, ReloadingCert, TlsError, TlsFiles};
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;

use crate::metrics::Metrics;

/// Loads the pair and builds the listener settings serving it.
pub fn settings(files: &TlsFiles) -> Result<(TlsSettings, Arc<ReloadingCert>), TlsError> {
    let cert = ReloadingCert::load(files.clone())?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let mut settings = TlsSettings::intermediate(&path(&files.cert), &path(&files.key))
        .map_err(|e| TlsError::File { path: files.cert.clone(), message: e.to_string() })?;
    settings.set_cert_resolver(Arc::clone(&cert) as Arc<dyn rustls::server::ResolvesServerCert>);
    settings.enable_h2();
    Ok((settings, cert))
}

/// Reloads the certificate on file change and SIGHUP, as a Pingora background service.
pub struct CertWatch {
    pub cert: Arc<ReloadingCert>,
    pub metrics: Arc<Metrics>,
}

impl CertWatch {
    fn attempt(&self, force: bool) {
        match self.cert.reload(force) {
            Reload::Unchanged => {}
            Reload::Loaded => {
                self.metrics.tls_reloads.with_label_values(&["loaded"]).inc();
                self.metrics.tls_cert_expiry.set(self.cert.not_after().unwrap_or(0));
                tracing::info!(cert = %self.cert.files().cert.display(), "TLS certificate reloaded");
            }
            Reload::Refused(e) => {
                self.metrics.tls_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "new TLS certificate refused: the previous one stays in service");
            }
        }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for CertWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.metrics.tls_cert_expiry.set(self.cert.not_after().unwrap_or(0));
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tracing::info!(cert = %self.cert.files().cert.display(), sighup = hangup.is_some(), "watching the TLS certificate");
        let every = self.cert.files().watch.get();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let sighup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                // "0s": SIGHUP only.
                _ = async { if every.is_zero() { std::future::pending().await } else { tick.tick().await } } => self.attempt(false),
                _ = sighup => self.attempt(true),
            }
        }
    }
}
