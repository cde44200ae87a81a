//! A served connection's byte stream: TCP or Unix, shared between hyper and the server so that
//! the server can still answer a client hyper gave up on (a request head cut off by the timeout),
//! and marked when part of a request head is pending.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};

/// An accepted connection.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix stream socket.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The shared state of one connection.
struct Inner {
    stream: Mutex<Stream>,
    /// Bytes arrived since the last response bytes went out: a request head is (partly) pending.
    partial: AtomicBool,
}

/// hyper's side of the connection.
pub(super) struct Guarded(Arc<Inner>);

/// The server's side of the connection, kept after hyper is done with it.
pub(super) struct Head(Arc<Inner>);

impl Guarded {
    /// Wraps `stream`; the [`Head`] stays with the server.
    pub(super) fn new(stream: Stream) -> (Self, Head) {
        let inner = Arc::new(Inner {
            stream: Mutex::new(stream),
            partial: AtomicBool::new(false),
        });
        (Self(inner.clone()), Head(inner))
    }
}

impl Head {
    /// Whether part of a request arrived after the last response.
    pub(super) fn partial(&self) -> bool {
        self.0.partial.load(Ordering::Relaxed)
    }

    /// Writes `data` whole (the connection is then dropped by the caller).
    pub(super) async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            let n = std::future::poll_fn(|cx| {
                let mut s = self.0.stream.lock().expect("stream lock");
                Pin::new(&mut *s).poll_write(cx, &data[off..])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            off += n;
        }
        std::future::poll_fn(|cx| {
            let mut s = self.0.stream.lock().expect("stream lock");
            Pin::new(&mut *s).poll_shutdown(cx)
        })
        .await
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let mut s = self.0.stream.lock().expect("stream lock");
        let r = Pin::new(&mut *s).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.0.partial.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.partial.store(false, Ordering::Relaxed);
        let mut s = self.0.stream.lock().expect("stream lock");
        Pin::new(&mut *s).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.stream.lock().expect("stream lock");
        Pin::new(&mut *s).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.stream.lock().expect("stream lock");
        Pin::new(&mut *s).poll_shutdown(cx)
    }
}
