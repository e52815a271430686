//! Running the distributor: bind, open the store, serve. `run` blocks until SIGTERM/SIGINT;
//! `spawn` runs it on its own thread and returns a handle that stops it (tests, embedders).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::api::{self, AppState};
use crate::config::DistributorConfig;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::policy::PolicyLog;
use crate::store::{PgStore, RedbStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(#[from] berth_shared::tls::TlsError),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// A distributor ready to serve.
pub struct Distributor {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    closing: tokio::sync::watch::Sender<bool>,
    tls: Option<Arc<berth_shared::tls::ReloadingCert>>,
    /// With a PostgreSQL store: where to listen for the other replicas' appends, and how often
    /// to check without being told.
    postgres: Option<(String, std::time::Duration)>,
}

impl Distributor {
    /// Opens the store and binds the listener (or takes the one passed by socket activation,
    /// which then replaces `listen.http`).
    pub fn build(config: &DistributorConfig) -> Result<Self, StartError> {
        let bind = |source| StartError::Bind { addr: config.listen.http, source };
        let listener = match crate::activation::inherited_listener().map_err(bind)? {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(config.listen.http).map_err(bind)?,
        };
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let tls = config.tls.clone().map(berth_shared::tls::ReloadingCert::load).transpose()?;
        let store: Arc<dyn Store> = match &config.store.postgres_url {
            Some(url) => Arc::new(PgStore::open(url)?),
            None => Arc::new(RedbStore::open(&config.store.dir)?),
        };
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let analytics = Arc::new(crate::analytics::Analytics::new(Arc::clone(&store), config.analytics.keep.get()));
        let state = Arc::new(AppState {
            log: PolicyLog::new(Arc::clone(&store), config.log.keep_events)?,
            fleet: Arc::new(Fleet::load(Arc::clone(&store))?),
            store,
            tokens: config.tokens(),
            metrics: Arc::new(Metrics::new()),
            keepalive: config.watch.keepalive.get(),
            dns: config.dns.clone(),
            hooks: config.hooks.clone(),
            closing: closing_rx,
            stats: Default::default(),
            analytics,
            sessions: Default::default(),
            stale_after: config.fleet.stale_after.get(),
            tls: tls.is_some(),
            login_gate: Default::default(),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(http = %addr, scheme, "distributor ready to serve");
        let postgres = config.store.postgres_url.clone().map(|url| (url, config.store.recheck.get()));
        Ok(Distributor { listener, addr, state, closing, tls, postgres })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes; then watch streams end and in-flight requests finish.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let closing = self.closing;
        let signal = async move {
            shutdown.await;
            let _ = closing.send(true);
        };
        let metrics = Arc::clone(&self.state.metrics);
        // Pull analytics are written every few seconds, and once more at shutdown.
        let flusher =
            tokio::spawn(crate::analytics::run(Arc::clone(&self.state.analytics), self.state.closing.clone()));
        if let Some((url, recheck)) = self.postgres {
            follow_replicas(url, recheck, Arc::clone(&self.state.log), self.state.closing.clone());
        }
        let router = api::router(self.state);
        let served = match self.tls {
            Some(cert) => crate::tls::serve(listener, router, cert, metrics, signal).await,
            None => axum::serve(listener, router).with_graceful_shutdown(signal).await,
        };
        let _ = flusher.await;
        served
    }

    /// Whether the API is served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs until SIGTERM or SIGINT (SIGHUP reloads the TLS certificate).
    pub fn run(self) -> Result<(), StartError> {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions. A SIGHUP must
        // not end the process (its default action) before the certificate watch takes it over.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let runtime = tokio::runtime::Runtime::new().map_err(StartError::Runtime)?;
        runtime.block_on(async move {
            let shutdown = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
                tracing::info!("shutting down");
            };
            self.serve(shutdown).await.map_err(StartError::Runtime)
        })
    }

    /// Runs on a new thread with its own runtime.
    pub fn spawn(self) -> RunningDistributor {
        let (addr, tls) = (self.addr, self.tls.is_some());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("berth-distributor".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Runtime::new() else { return };
                let _ = runtime.block_on(self.serve(async move {
                    let _ = rx.await;
                }));
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .ok();
        RunningDistributor { addr, tls, stop: Some(tx), thread }
    }
}

/// A running distributor; dropping it stops it.
pub struct RunningDistributor {
    pub addr: SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningDistributor {
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningDistributor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// With PostgreSQL: events appended through any replica reach this one's watch streams, in
/// version order, as soon as PostgreSQL announces them (`NOTIFY`); every `recheck` without an
/// announcement the log is checked anyway, so one lost with a connection is caught up.
fn follow_replicas(
    url: String,
    recheck: std::time::Duration,
    log: Arc<PolicyLog>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let stopped = closing.clone();
    crate::store::postgres::listen(url, recheck, move |_| {
        // A full channel already holds a wake-up: this one is covered by it.
        let _ = tx.try_send(());
        !*stopped.borrow() && !tx.is_closed()
    });
    tokio::spawn(async move {
        loop {
            tokio::select! {
                woken = rx.recv() => if woken.is_none() { return },
                _ = closing.changed() => return,
            }
            if let Err(e) = log.catch_up().await {
                tracing::warn!(error = %e, "cannot read the policy log from PostgreSQL");
            }
        }
    });
}
