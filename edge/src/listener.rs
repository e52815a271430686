//! Listening sockets bound by Berth before Pingora starts: bind errors are reported clearly at
//! start-up, and port 0 works (tests learn the port the OS picked). Pingora takes a socket that
//! is already in its listening-fd table instead of binding again.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;

use crate::state::StartError;

/// Binds a TCP listener and returns it with the address it got.
pub fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { addr: addr.to_string(), source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Takes a listener bound by the caller (nonblocking, as Pingora needs) with its address.
pub fn adopt(listener: TcpListener) -> Result<(TcpListener, SocketAddr), StartError> {
    let local = listener.local_addr().map_err(|source| StartError::Bind { addr: "a given socket".into(), source })?;
    let err = |source| StartError::Bind { addr: local.to_string(), source };
    listener.set_nonblocking(true).map_err(err)?;
    Ok((listener, local))
}

/// Pull sockets bound by the caller instead of from `[listen]`: a test that must know an edge's
/// address before it starts (its peers' configs name it).
#[derive(Debug, Default)]
pub struct Sockets {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
}

/// A Pingora service whose listening sockets were bound beforehand.
pub struct PreBound<S> {
    inner: S,
    sockets: Vec<(String, TcpListener)>,
}

impl<S> PreBound<S> {
    /// `sockets`: (the address string the inner service was given with `add_tcp`, the socket).
    pub fn new(inner: S, sockets: Vec<(String, TcpListener)>) -> Self {
        PreBound { inner, sockets }
    }
}

#[async_trait]
impl<S: Service> Service for PreBound<S> {
    async fn start_service(&mut self, fds: Option<ListenFds>, shutdown: ShutdownWatch, listeners_per_fd: usize) {
        if let Some(fds) = &fds {
            let mut table = fds.lock();
            for (addr, socket) in self.sockets.drain(..) {
                table.add(addr, socket.into_raw_fd());
            }
        }
        Service::start_service(&mut self.inner, fds, shutdown, listeners_per_fd).await
    }

    fn name(&self) -> &str {
        Service::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        Service::threads(&self.inner)
    }
}
