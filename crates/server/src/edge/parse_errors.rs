//! The JSON body for the answers hyper writes itself.
//!
//! hyper answers a request it cannot parse without asking the service: 400 for a malformed
//! request line or header, 431 for a head over [`super::MAX_HEAD_BYTES`] or with too many
//! header fields, 414 for a request target over 64 KiB. hyper 1.x has no hook for that
//! answer (`Server::on_error` in `proto/h1/role.rs` writes a bare status line with
//! `content-length: 0`), and the protocol wants every error to carry its JSON body. The
//! limits can be enforced above hyper for the cases that have a limit (the URI's is,
//! [`super::MAX_URI_BYTES`]), but a request hyper cannot parse never reaches the service at
//! all. So the connection's transport is wrapped: a write that is exactly hyper's bodiless
//! 400, 414 or 431 head gets the JSON body, and its `content-length`, spliced in. Nothing
//! else can look like it: every error the router answers carries a JSON body, so its head
//! never says `content-length: 0`. After `101 Switching Protocols` the bytes are a
//! WebSocket's and are no longer looked at.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use confab_protocol::{ErrorBody, ErrorCode, ErrorDetail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's transport, which gives hyper's own error answers the JSON body.
pub struct JsonParseErrors<Io> {
    io: Io,
    /// Whether writes may still be HTTP responses (until `101 Switching Protocols`).
    watching: bool,
    /// A rewritten answer, and how much of it is written: hyper was told all of its own
    /// bytes went out, so these must before anything else.
    pending: Option<(Vec<u8>, usize)>,
}

impl<Io> JsonParseErrors<Io> {
    pub fn new(io: Io) -> Self {
        JsonParseErrors {
            io,
            watching: true,
            pending: None,
        }
    }
}

impl<Io: AsyncWrite + Unpin> JsonParseErrors<Io> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == answer.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Looks at a write that starts a response; `Some` if it is hyper's error head, which is
    /// then taken over.
    fn take_over(
        &mut self,
        buf: &[u8],
        cx: &mut Context<'_>,
    ) -> Option<Poll<std::io::Result<usize>>> {
        if buf.starts_with(b"HTTP/1.1 101 ") {
            self.watching = false;
            return None;
        }
        let answer = with_json_body(buf)?;
        self.pending = Some((answer, 0));
        // Started now; `poll_flush` (which hyper calls next) finishes it.
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Some(Poll::Ready(Err(e)));
        }
        Some(Poll::Ready(Ok(buf.len())))
    }
}

/// Whether a write may be one [`JsonParseErrors::take_over`] wants to see.
fn may_be_watched(buf: &[u8]) -> bool {
    buf.len() > 13
        && buf.starts_with(b"HTTP/1.1 ")
        && matches!(&buf[9..13], b"101 " | b"400 " | b"414 " | b"431 ")
}

/// hyper's bodiless error head `head`, with the JSON body; `None` for anything else.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(head).ok()?;
    let (code, message) = match head.get(..13)? {
        "HTTP/1.1 400 " => (ErrorCode::BadRequest, "malformed HTTP request".to_owned()),
        "HTTP/1.1 414 " => (ErrorCode::TooLarge, "request target too long".to_owned()),
        "HTTP/1.1 431 " => (
            ErrorCode::TooLarge,
            format!(
                "request head over {} bytes or with too many header fields",
                super::MAX_HEAD_BYTES
            ),
        ),
        _ => return None,
    };
    let end = head.find("\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    const NO_BODY: &str = "\r\ncontent-length: 0\r\n";
    let at = lower.find(NO_BODY)?;
    if lower.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail { code, message },
    })
    .ok()?;
    let mut out = String::with_capacity(head.len() + body.len() + 48);
    out.push_str(&head[..at]);
    out.push_str("\r\ncontent-type: application/json\r\ncontent-length: ");
    out.push_str(&body.len().to_string());
    out.push_str("\r\n");
    out.push_str(&head[at + NO_BODY.len()..]);
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<Io: AsyncRead + Unpin> AsyncRead for JsonParseErrors<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.watching
            && may_be_watched(buf)
            && let Some(done) = this.take_over(buf, cx)
        {
            return done;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.watching
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && may_be_watched(first)
        {
            // A response head starts the write: written on its own (a short write is
            // allowed), so that it is seen whole.
            return self.poll_write(cx, first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bodiless_heads_get_the_body() {
        let head = "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                    date: Mon, 07 Dec 2026 23:37:03 GMT\r\n\r\n";
        let out = String::from_utf8(with_json_body(head.as_bytes()).unwrap()).unwrap();
        let (new_head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(new_head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(new_head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(new_head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(new_head.ends_with("date: Mon, 07 Dec 2026 23:37:03 GMT"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_large");
    }

    #[test]
    fn anything_else_is_left_alone() {
        for other in [
            // The router's errors have bodies.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            // Other statuses.
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n",
            // Not a whole head.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
        ] {
            assert!(with_json_body(other.as_bytes()).is_none(), "{other}");
        }
    }
}
