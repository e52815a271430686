//! Downstream connections, bounded: at most `[server] max_connections` open at once (more are
//! closed as they arrive and counted), and on HTTP/1 a request must arrive whole within
//! `header_timeout` of its first byte (slowloris) and an idle connection closes after
//! `idle_timeout`. HTTP/2 connections close after `idle_timeout` without streams (Pingora's
//! own timer); the h2 codec bounds their frames and header lists.
//!
//! The bound is a wrapper around Pingora's HTTP app and the stream it reads: every byte the
//! server reads and writes passes through [`GuardedStream`], which knows whether a request is
//! being read (bytes arrived since the last response) or the connection waits for the next one.
//! On HTTP/1 the wrapper also runs the keep-alive loop: before each request, `direct.rs` may
//! answer it (a memory hit); otherwise Pingora's HTTP session takes that one request, with the
//! bytes already read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::state::EdgeState;

/// The limits one connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Pingora's HTTP app behind the connection bound.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: Limits,
    open: Arc<AtomicUsize>,
    /// The edge: its metrics, its drain (once a drain's period is over, no new connection), and
    /// the memory hits [`super::direct`] answers before the inner app.
    state: Arc<EdgeState>,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, limits: Limits, state: Arc<EdgeState>) -> Self {
        GuardedApp { inner: Arc::new(inner), limits, open: Arc::new(AtomicUsize::new(0)), state }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(self: &Arc<Self>, session: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if self.state.drain.is_closing() {
            // Drained: the connection is closed.
            return None;
        }
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        let metrics = &self.state.metrics;
        let slot = Slot { open: Arc::clone(&self.open), metrics: Arc::clone(metrics) };
        metrics.downstream_connections.set(open as i64);
        if open > self.limits.max_connections {
            metrics.connections_refused.inc();
            tracing::debug!(open, max = self.limits.max_connections, "connection refused: too many open");
            drop(slot);
            return None;
        }
        let stream = Box::new(GuardedStream::new(session, self.limits, slot, Arc::clone(metrics)));
        match stream.h1 {
            true => self.serve_h1(stream, shutdown).await,
            // HTTP/2: Pingora's app runs the connection.
            false => ServerApp::process_new(&self.inner, stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> GuardedApp<A> {
    /// An HTTP/1 connection, request by request: direct answers while the requests are memory
    /// hits, Pingora's HTTP session for the next one that is not, then direct answers again
    /// (the keep-alive loop of Pingora's own `ServerApp`, with [`super::direct`] before each
    /// session).
    async fn serve_h1(self: &Arc<Self>, mut stream: Box<GuardedStream>, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            if super::direct::serve(&self.state, &mut stream, shutdown).await == super::direct::Next::Close {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            // As Pingora's loop: the session's keep-alive off once the server is shutting down
            // (a client's own keep-alive request can still turn it on, as there).
            session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
            if let Some(settings) = settings.take() {
                settings.apply_to_session(&mut session);
            }
            let (reused, kept) = self.inner.process_new_http(session, shutdown).await?.consume();
            settings = kept;
            stream = reused.into_any().downcast::<GuardedStream>().ok()?;
        }
    }
}

/// One open connection in the count; released when the connection is dropped.
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        self.metrics.downstream_connections.set(open as i64);
    }
}

/// Where an HTTP/1 connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the next request: `idle_timeout` runs.
    Idle,
    /// Bytes of a request arrived and no response started yet: `header_timeout` runs.
    Reading,
    /// A response is being written: no timer (the client reads at its pace).
    Writing,
}

/// A downstream stream with the HTTP/1 timers.
pub struct GuardedStream {
    inner: Stream,
    /// Bytes read from `inner` and not yet consumed: a request head [`super::direct`] read and
    /// handed on; every read takes these first.
    unread: BytesMut,
    /// HTTP/2 multiplexes: the per-request timers do not apply.
    h1: bool,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    _slot: Slot,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

impl GuardedStream {
    fn new(inner: Stream, limits: Limits, slot: Slot, metrics: Arc<Metrics>) -> Self {
        let h1 = inner.selected_alpn_proto() != Some(ALPN::H2);
        let deadline = Box::pin(tokio::time::sleep(limits.idle_timeout));
        let unread = BytesMut::new();
        GuardedStream { inner, unread, h1, phase: Phase::Idle, deadline, limits, metrics, _slot: slot }
    }

    /// The bytes read and not consumed yet.
    pub(super) fn unread(&self) -> &[u8] {
        &self.unread
    }

    /// A request's bytes are read and go on unanswered: `header_timeout` runs.
    pub(super) fn reading_request(&mut self) {
        if self.h1 && !self.unread.is_empty() {
            self.enter(Phase::Reading);
        }
    }

    /// Consumes the first `n` unread bytes.
    pub(super) fn consume(&mut self, n: usize) {
        self.unread.advance(n.min(self.unread.len()));
    }

    /// Reads what the socket has (with the timers of a read) and keeps it unread; `0` at EOF.
    pub(super) async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        std::future::poll_fn(|cx| self.poll_socket(cx, &mut buf)).await?;
        self.unread.extend_from_slice(buf.filled());
        Ok(buf.filled().len())
    }

    /// The client's address, for the access log.
    pub(super) fn client_addr(&self) -> Option<String> {
        let digest = self.inner.get_socket_digest()?;
        digest.peer_addr().map(|a| a.to_string())
    }

    fn enter(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            let after = match phase {
                Phase::Idle => self.limits.idle_timeout,
                Phase::Reading => self.limits.header_timeout,
                Phase::Writing => return,
            };
            self.deadline.as_mut().reset(Instant::now() + after);
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.unread.is_empty() {
            let n = buf.remaining().min(this.unread.len());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.poll_socket(cx, buf)
    }
}

impl GuardedStream {
    /// A read from the socket, with the phase and the timers.
    fn poll_socket(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self;
        if this.h1 && this.phase == Phase::Writing {
            // The server reads again: the response is done, the connection waits for the next.
            this.enter(Phase::Idle);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.h1 && buf.filled().len() > before {
                    this.enter(Phase::Reading);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.h1 && this.deadline.as_mut().poll(cx).is_ready() => {
                let (what, label) = match this.phase {
                    Phase::Reading => ("request not complete within header_timeout", "header"),
                    _ => ("connection idle for idle_timeout", "idle"),
                };
                this.metrics.connection_timeouts.with_label_values(&[label]).inc();
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        if this.h1 && matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.enter(Phase::Writing);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if this.h1 && matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.enter(Phase::Writing);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if !self.unread.is_empty() {
            // What the socket holds comes after the unread bytes: only they can be peeked.
            let whole = self.unread.len() >= buf.len();
            if whole {
                buf.copy_from_slice(&self.unread[..buf.len()]);
            }
            return Ok(whole);
        }
        self.inner.try_peek(buf).await
    }
}
