//! A client that breaks RFC 6455's framing is told so with a close frame before the
//! connection drops: 1007 for a text message that is not UTF-8, 1002 for the rest. Frames are
//! written by hand on a bare TCP connection, since a WebSocket library will not send them.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// One frame as a client writes it: `first` is the byte of FIN, RSV and opcode.
fn frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | u8::try_from(n).unwrap()),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final, masked frame of `opcode`.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | opcode, true, payload)
}

/// A WebSocket on a bare TCP connection: the upgrade by hand, frames read by hand.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(s: &TestServer) -> Raw {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("the server said nothing in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next whole frame from the server, `(opcode, payload)`; `None` if the connection
    /// ended first.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some((opcode, payload));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Sends `hello` and reads up to `synced`.
    async fn hello(&mut self, token: &str) {
        let hello = format!(r#"{{"type":"hello","token":"{token}"}}"#);
        self.send(&masked(TEXT, hello.as_bytes())).await;
        loop {
            let (opcode, payload) = self.next().await.expect("open until synced");
            if opcode == TEXT {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                assert_ne!(v["type"], "error", "{v}");
                if v["type"] == "synced" {
                    return;
                }
            }
        }
    }

    /// Skips frames up to the server's close frame and returns its code; then the server
    /// must end the connection. Panics if it ends without a close frame.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.next().await {
                None => panic!("connection dropped without a close frame"),
                Some((CLOSE, payload)) => {
                    assert!(payload.len() >= 2, "a close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    // Nothing follows the close: the server drops the connection.
                    assert!(self.next().await.is_none(), "frames after the close");
                    return code;
                }
                Some(_) => {}
            }
        }
    }
}

/// A whole server frame at the start of `buf`: opcode, payload and bytes used.
fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let [first, second, ..] = *buf else {
        return None;
    };
    assert_eq!(second & 0x80, 0, "the server masked a frame");
    let (len, at) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap())),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap())).unwrap(),
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((first & 0x0f, payload, at + len))
}

/// Each violation, named, with the code the server must close with.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    let ping = br#"{"type":"ping"}"#;
    let mut split_utf8 = frame(TEXT, true, b"{\"a\":\"\xe2\x82");
    split_utf8.extend(masked(CONTINUATION, b"\xff\"}"));
    let mut unfinished_then_text = frame(TEXT, true, b"{\"a\":");
    unfinished_then_text.extend(masked(TEXT, ping));
    vec![
        (
            "invalid UTF-8 text",
            masked(TEXT, b"{\"a\":\"\xff\xfe\"}"),
            1007,
        ),
        ("invalid UTF-8 across fragments", split_utf8, 1007),
        ("unmasked frame", frame(0x80 | TEXT, false, ping), 1002),
        ("RSV1 set", frame(0x80 | 0x40 | TEXT, true, ping), 1002),
        ("RSV3 set", frame(0x80 | 0x10 | TEXT, true, ping), 1002),
        ("data opcode 0x3", masked(0x3, ping), 1002),
        ("control opcode 0xB", masked(0xB, b""), 1002),
        ("ping of 126 bytes", masked(PING, &[b'p'; 126]), 1002),
        ("fragmented ping", frame(PING, true, b"p"), 1002),
        ("continuation of nothing", masked(CONTINUATION, ping), 1002),
        (
            "text while a message is unfinished",
            unfinished_then_text,
            1002,
        ),
        ("close frame of one byte", masked(CLOSE, &[0x03]), 1002),
    ]
}

#[tokio::test]
async fn violations_before_hello_close_with_1002_or_1007() {
    let s = TestServer::start().await;
    for (name, bytes, code) in violations() {
        let mut raw = Raw::connect(&s).await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, code, "{name}");
    }
}

#[tokio::test]
async fn violations_after_hello_close_with_1002_or_1007() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    for (name, bytes, code) in violations() {
        let mut raw = Raw::connect(&s).await;
        raw.hello(&alice.token).await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, code, "{name}");
    }
    // The server goes on serving, and the hand-made frames are right when they keep the rules.
    let mut raw = Raw::connect(&s).await;
    raw.hello(&alice.token).await;
    raw.send(&masked(PING, &[b'p'; 125])).await;
    assert_eq!(raw.next().await, Some((0xA, vec![b'p'; 125])));
    raw.send(&masked(TEXT, br#"{"type":"ping"}"#)).await;
    let (opcode, pong) = raw.next().await.unwrap();
    assert_eq!(
        (opcode, pong.as_slice()),
        (TEXT, &br#"{"type":"pong"}"#[..])
    );
}

/// The size limit keeps its own code.
#[tokio::test]
async fn a_message_over_the_limit_still_closes_with_1009() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let mut raw = Raw::connect(&s).await;
    raw.hello(&alice.token).await;
    raw.send(&masked(TEXT, &vec![b' '; 70_000])).await;
    assert_eq!(raw.close_code().await, 1009);
}
