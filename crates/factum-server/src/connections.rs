//! The cap on client connections: a listener that accepts a connection only while fewer than
//! [`Config::max_connections`](crate::Config::max_connections) are open (the others wait in the
//! kernel's backlog), and counts the open ones in `/metrics`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

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
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
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
