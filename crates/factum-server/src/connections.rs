//! Client connections: a listener that accepts a connection only while fewer than
//! [`Config::max_connections`](crate::Config::max_connections) are open (the others wait in the
//! kernel's backlog) and counts the open ones in `/metrics`, and the loop that serves them over
//! HTTP/1.1 and HTTP/2 with the idle timeouts of
//! [`Config::idle_timeout`](crate::Config::idle_timeout):
//!
//! - a connection that sends nothing at all within it is closed;
//! - over HTTP/1.1, a request's head must arrive within it, the first one and each one after
//!   (a keep-alive connection idle for that long is closed; a request in flight never is);
//! - over HTTP/2, a connection quiet for half of it is pinged, and closed when the ping is not
//!   answered within the other half (a live client's idle connection stays, as gRPC clients
//!   expect).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// Serves `router` on the connections `listener` accepts until `shutdown` completes; then
/// stops accepting, lets each connection finish the requests it has in flight, and returns
/// once all are closed.
pub(crate) async fn serve<L>(
    mut listener: Capped<L>,
    router: axum::Router,
    grpc: crate::grpc::Grpc,
    idle_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    L::Io: Unpin,
{
    let (stopping, stop) = watch::channel(false);
    let (open, all_closed) = watch::channel(());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(idle_timeout / 2)
        .keep_alive_timeout(idle_timeout / 2);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            (io, _addr) = listener.accept() => io,
            () = &mut shutdown => break,
        };
        // gRPC calls go straight to the gRPC services; the rest to the HTTP API's router.
        let (router, grpc) = (router.clone(), grpc.clone());
        let service = TowerToHyperService::new(tower::service_fn(
            move |request: http::Request<hyper::body::Incoming>| {
                let request = request.map(axum::body::Body::new);
                let (router, grpc) = (router.clone(), grpc.clone());
                async move {
                    if crate::grpc::is_grpc(request.headers()) {
                        Ok(crate::grpc::call(grpc, request).await)
                    } else {
                        router.oneshot(request).await
                    }
                }
            },
        ));
        let (builder, mut stop, open) = (builder.clone(), stop.clone(), all_closed.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(io.first_byte_within(idle_timeout));
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "a connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|on| *on), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(all_closed);
    open.closed().await;
}

/// Sets up an accepted TCP connection: answers go out at once (`TCP_NODELAY`) instead of
/// waiting for the client's acknowledgement, and the kernel's send buffer is `send_buffer`
/// bytes when given (see [`Config::send_buffer`](crate::Config::send_buffer)).
pub(crate) fn tune(tcp: &tokio::net::TcpStream, send_buffer: Option<usize>) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY could not be set");
    }
    if let Some(bytes) = send_buffer
        && let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(bytes)
    {
        tracing::debug!(error = %e, "SO_SNDBUF could not be set");
    }
}

/// A listener that holds one permit per open connection.
pub(crate) struct Capped<L> {
    inner: L,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl<L> Capped<L> {
    pub(crate) fn new(inner: L, most: usize, metrics: Arc<Metrics>) -> Self {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(most.max(1))),
            metrics,
        }
    }
}

impl<L> axum::serve::Listener for Capped<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        let (io, addr) = self.inner.accept().await;
        self.metrics.connections.inc();
        (
            Counted {
                io,
                _permit: permit,
                metrics: self.metrics.clone(),
                first_byte: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection counted while it is open.
pub(crate) struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    /// Until the client has sent its first byte: when it must have.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Counted<I> {
    /// The same connection, closed (its reads fail) unless the client sends something
    /// within `limit`.
    fn first_byte_within(mut self, limit: Duration) -> Self {
        self.first_byte = Some(Box::pin(tokio::time::sleep(limit)));
        self
    }
}

impl<I> Drop for Counted<I> {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.first_byte.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_byte = None,
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client sent nothing within the idle timeout",
                )));
            }
            _ => {}
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
