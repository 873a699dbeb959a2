//! The HTTP edge, from outside: every error in the protocol's JSON shape (hyper's own
//! included), JSON bodies only as `application/json`, browser origins and CORS, and the caps
//! on plain-HTTP connections. Requests are crafted bytes over raw TCP where the point is
//! what exactly goes over the wire.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names lowercased.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    /// The body as the protocol's error: its `code`, after checking the content type.
    fn error_code(&self) -> String {
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "{self:?}"
        );
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"));
        assert!(body["error"]["message"].is_string(), "{body}");
        body["error"]["code"].as_str().expect("a code").to_owned()
    }
}

/// Connects from `source` (an address of 127.0.0.0/8) to the server.
async fn connect_from(s: &TestServer, source: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(s.addr).await.unwrap()
}

/// Reads one response: its head, then the body its `content-length` announces.
async fn read_answer(tcp: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines.next().unwrap()[9..12].parse().unwrap();
                let headers: HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .map_or(0, |l| l.parse().unwrap());
                while got.len() < end + 4 + len {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed inside the body: {got:?}");
                    got.extend_from_slice(&buf[..n]);
                }
                let body = got[end + 4..end + 4 + len].to_vec();
                return Answer {
                    status,
                    headers,
                    body,
                };
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole head: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer in time")
}

/// Sends `request` on a new connection from 127.0.0.1 and reads the answer.
async fn exchange(s: &TestServer, request: &[u8]) -> Answer {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    read_answer(&mut tcp).await
}

#[tokio::test]
async fn every_error_has_the_json_body() {
    let s = TestServer::start().await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9 * 1024));
    // Just over the limit, so that the server has read all of it when it answers (closing
    // with bytes unread would reset the connection under the answer).
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(33 * 1024)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: 1\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "unknown path",
            b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            "method the path does not take",
            b"DELETE /v1/users HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            405,
            "bad_request",
        ),
        (
            "request target too long",
            long_uri.into_bytes(),
            414,
            "too_large",
        ),
        (
            "request head too large (hyper's own)",
            big_head.into_bytes(),
            431,
            "too_large",
        ),
        (
            "too many header fields (hyper's own)",
            many_headers.into_bytes(),
            431,
            "too_large",
        ),
        (
            "malformed header (hyper's own)",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "not HTTP at all (hyper's own)",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a plain GET on the WebSocket path",
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a body over the limit",
            format!(
                "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 5000\r\n\r\n{}",
                "x".repeat(5000)
            )
            .into_bytes(),
            413,
            "too_large",
        ),
        (
            "a body that is not JSON",
            b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 2\r\n\r\n{}"
                .to_vec(),
            415,
            "bad_request",
        ),
    ];
    for (what, request, status, code) in cases {
        let answer = exchange(&s, &request).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{what}");
    }
    // 405 still names the methods the path takes.
    let answer = exchange(&s, b"DELETE /v1/users HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        answer.headers.get("allow").map(String::as_str),
        Some("POST")
    );
    // Nothing above hurt the server.
    let dora = s.user("dora").await;
    s.connect(&dora).await;
}

#[tokio::test]
async fn json_bodies_must_say_they_are_json() {
    let s = TestServer::start().await;
    let body = r#"{"username":"erin","password":"password1"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut request = s.http.post(s.url("/v1/users")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "bad_request", "{content_type:?}");
    }
    let r = s
        .http
        .post(s.url("/v1/users"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// A raw WebSocket upgrade of `/v1/ws`, with an `Origin` if given.
fn upgrade_request(origin: Option<&str>) -> Vec<u8> {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_foreign_origin_is_forbidden() {
    let s = TestServer::start().await;
    let register = |origin: Option<&str>, name: &str| {
        let mut request = s
            .http
            .post(s.url("/v1/users"))
            .json(&json!({"username": name, "password": "password1"}));
        if let Some(o) = origin {
            request = request.header("origin", o);
        }
        request.send()
    };
    let r = register(Some("http://evil.example"), "fred").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "forbidden");

    // The upgrade too, before any WebSocket exists.
    let answer = exchange(&s, &upgrade_request(Some("http://evil.example"))).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.error_code(), "forbidden");

    // Its preflight is refused as well.
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/v1/users"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The server's own origin (the Host it was addressed as), and no origin at all, pass.
    let own = format!("http://{}", s.addr);
    let r = register(Some(&own), "fred").await.unwrap();
    assert_eq!(r.status(), 201);
    let r = register(None, "gina").await.unwrap();
    assert_eq!(r.status(), 201);
    let answer = exchange(&s, &upgrade_request(None)).await;
    assert_eq!(answer.status, 101);
    let answer = exchange(&s, &upgrade_request(Some("http://x"))).await;
    assert_eq!(answer.status, 101, "own origin by Host");
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_headers() {
    let app = "https://app.example.com";
    let s = TestServer::start_with(|c| c.gateway.allowed_origins = vec![app.to_owned()]).await;

    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/v1/sessions"))
        .header("origin", app)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(header("access-control-allow-origin"), app);
    for method in ["get", "post", "put", "patch", "delete"] {
        assert!(
            header("access-control-allow-methods").contains(method),
            "{method}"
        );
    }
    for name in ["authorization", "content-type"] {
        assert!(
            header("access-control-allow-headers").contains(name),
            "{name}"
        );
    }

    let r = s
        .http
        .post(s.url("/v1/users"))
        .header("origin", app)
        .json(&json!({"username": "hana", "password": "password1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["access-control-allow-origin"], app);

    // The socket opens from there too.
    let answer = exchange(&s, &upgrade_request(Some(app))).await;
    assert_eq!(answer.status, 101);
    // Another origin still does not.
    let answer = exchange(&s, &upgrade_request(Some("https://other.example.com"))).await;
    assert_eq!(answer.status, 403);
}

/// A connection from `source` that got one answer to `GET /healthz` and is now idle
/// (keep-alive), or the answer that refused it.
async fn idle_from(s: &TestServer, source: Ipv4Addr) -> Result<TcpStream, Answer> {
    let mut tcp = connect_from(s, source).await;
    // The write may fail if a refused connection is already closed: the answer is there.
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = read_answer(&mut tcp).await;
    match answer.status {
        200 => Ok(tcp),
        _ => Err(answer),
    }
}

fn assert_refused(refused: Result<TcpStream, Answer>, words: &str) {
    let answer = refused.expect_err("refused");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.error_code(), "unavailable");
    assert_eq!(
        answer.headers.get("retry-after").map(String::as_str),
        Some("1")
    );
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains(words),
        "{body}"
    );
}

/// Retries until a connection from `source` is let in: a closed connection gives up its
/// place once the server has seen it close.
async fn admitted_soon(s: &TestServer, source: Ipv4Addr) -> TcpStream {
    for _ in 0..100 {
        if let Ok(tcp) = idle_from(s, source).await {
            return tcp;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no place freed for {source}");
}

#[tokio::test]
async fn plain_http_connections_are_capped_per_address_and_in_total() {
    let s = TestServer::start_with(|c| {
        c.gateway.hello_timeout = Duration::from_secs(30);
        c.gateway.max_http_connections = 4;
        c.gateway.max_http_connections_per_address = 2;
    })
    .await;
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let b = Ipv4Addr::new(127, 0, 0, 3);
    let c = Ipv4Addr::new(127, 0, 0, 4);
    let metrics = &s.server.as_ref().unwrap().app.metrics;

    let mut from_a = vec![
        idle_from(&s, a).await.unwrap(),
        idle_from(&s, a).await.unwrap(),
    ];
    assert_refused(idle_from(&s, a).await, "this address");
    assert_eq!(metrics.http_connections_refused.get(), 1);
    // Another address still gets in.
    let from_b = vec![
        idle_from(&s, b).await.unwrap(),
        idle_from(&s, b).await.unwrap(),
    ];
    // Four in all: the total cap.
    assert_refused(idle_from(&s, c).await, "server is at its limit of 4");
    assert_eq!(metrics.http_connections_refused.get(), 2);
    assert_eq!(metrics.http_connections.get(), 4);

    // Closing one frees its place.
    drop(from_a.pop());
    from_a.push(admitted_soon(&s, a).await);
    assert_refused(idle_from(&s, c).await, "server is at its limit");
    drop(from_b);
    let _from_c = admitted_soon(&s, c).await;
    drop(from_a);
}

#[tokio::test]
async fn an_upgraded_socket_leaves_the_http_caps() {
    let s = TestServer::start_with(|c| {
        c.gateway.max_http_connections = 3;
        c.gateway.max_http_connections_per_address = 2;
    })
    .await;
    let metrics = &s.server.as_ref().unwrap().app.metrics;
    let users = [
        s.user("ivan").await,
        s.user("jack").await,
        s.user("kate").await,
    ];
    let mut sockets = Vec::new();
    for user in &users {
        sockets.push(s.connect(user).await.0);
    }
    let mut extra = Vec::new();
    for user in &users {
        extra.push(s.connect(user).await.0);
    }
    // Six sockets from one address past a per-address cap of 2 and a total of 3: none of
    // them holds an HTTP place (the harness's own keep-alive connection may).
    assert!(
        metrics.http_connections.get() <= 1,
        "{}",
        metrics.http_connections.get()
    );
    for ws in sockets.iter_mut().chain(extra.iter_mut()) {
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(ws.next_of("pong").await["type"], "pong");
    }
    // And plain HTTP from another address is served.
    assert!(idle_from(&s, Ipv4Addr::new(127, 0, 0, 5)).await.is_ok());
}
