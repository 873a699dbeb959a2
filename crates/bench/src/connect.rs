//! Opening many authenticated sockets: through the SDK's raw [`Connection`] for the load
//! tests, and from a chosen source address (for more sockets than one address has ephemeral
//! ports) for the idle test, which the SDK cannot do.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use confab_client::{
    ClientFrame, ConnectOptions, Connection, Error as SdkError, ErrorKind, ServerFrame, Welcome,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Handshakes this tool has in flight at once from one source address. A server counts a
/// connection against its plain-HTTP cap per client address until the upgrade
/// (`serve --max-http-connections-per-address`, by default 128) and answers 503 past it, so a
/// run opening sockets faster would see refusals that measure nothing. (64-128 at once also
/// gave the highest connect rate.)
pub const HANDSHAKES_PER_ADDRESS: usize = 128;

/// How long a socket may take from connect to `synced`.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// An SDK connection past `synced`, and what its catch-up held.
pub struct Synced {
    pub conn: Connection,
    pub welcome: Welcome,
    /// The cursor `synced` named: everything up to it has been seen.
    pub cursor: String,
    /// Messages replayed before `synced` (history from earlier runs on the same accounts).
    pub replayed: usize,
}

/// Connects with the SDK, reading `read_buffer` bytes at a time, sends `hello` and reads up to
/// `synced`. Replayed history is acked, so the next run on these accounts does not replay it
/// again.
pub async fn connect_synced(
    ws_url: &str,
    token: &str,
    cursor: Option<&str>,
    read_buffer: usize,
) -> anyhow::Result<Synced> {
    let options = ConnectOptions {
        read_buffer,
        ..ConnectOptions::default()
    };
    let work = async {
        let (mut conn, welcome) = Connection::connect_with(ws_url, token, cursor, options)
            .await
            .map_err(|e| anyhow!(sdk_reason(&e)).context("connect"))?;
        let mut replayed = 0;
        loop {
            match conn.next().await {
                Ok(Some(ServerFrame::Synced { cursor })) => {
                    if replayed > 0 {
                        conn.send(&ClientFrame::Ack {
                            cursor: cursor.clone(),
                        })
                        .await
                        .map_err(|e| anyhow!(sdk_reason(&e)))?;
                    }
                    return Ok(Synced {
                        conn,
                        welcome,
                        cursor,
                        replayed,
                    });
                }
                Ok(Some(ServerFrame::Message { .. })) => replayed += 1,
                Ok(Some(ServerFrame::Error { code, message, .. })) => {
                    bail!("server error before synced: {code}: {message}")
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("socket closed before synced (code {:?})", conn.close_code()),
                Err(e) => bail!("before synced: {}", sdk_reason(&e)),
            }
        }
    };
    tokio::time::timeout(SYNC_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("no synced within {SYNC_TIMEOUT:?}"))?
}

/// A short label for an SDK error, to count errors by.
pub fn sdk_reason(e: &SdkError) -> String {
    match e.kind() {
        ErrorKind::Server { code, .. } | ErrorKind::Api { code, .. } => code.to_string(),
        ErrorKind::Transport => format!("transport: {e}"),
        ErrorKind::Protocol => "protocol".into(),
        ErrorKind::Timeout => "timeout".into(),
        ErrorKind::Closed => "closed".into(),
    }
}

/// Adds one to `counts[reason]`, keeping the key short (the first line, at most 80 chars).
pub fn count(counts: &mut BTreeMap<String, u64>, reason: &str) {
    let key: String = reason
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(80)
        .collect();
    *counts.entry(key).or_default() += 1;
}

/// Which source address each of many connections uses: `per_address` connections from
/// `base`, the next `per_address` from `base + 1`, and so on (127.0.0.1, 127.0.0.2, …), so
/// that no address runs out of ephemeral ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePlan {
    pub base: Ipv4Addr,
    pub per_address: usize,
}

impl SourcePlan {
    /// A plan that leaves a tenth of each address's ephemeral ports free (for other programs
    /// and for sockets in TIME_WAIT).
    pub fn for_port_range(base: Ipv4Addr, ports: usize) -> SourcePlan {
        SourcePlan {
            base,
            per_address: (ports - ports / 10).max(1),
        }
    }

    /// The source address of connection `index` (counted over the whole run).
    pub fn address(&self, index: usize) -> Ipv4Addr {
        let offset = (index / self.per_address) as u32;
        Ipv4Addr::from(u32::from(self.base).saturating_add(offset))
    }

    /// Connections per address for connections `start..start + n`, in address order.
    pub fn spread(&self, start: usize, n: usize) -> Vec<(Ipv4Addr, usize)> {
        let mut out: Vec<(Ipv4Addr, usize)> = Vec::new();
        let mut i = start;
        let end = start + n;
        while i < end {
            let block_end = ((i / self.per_address) + 1) * self.per_address;
            let take = block_end.min(end) - i;
            out.push((self.address(i), take));
            i += take;
        }
        out
    }

    /// The source of connection `index`: its address, and a port of its own counted up from
    /// the start of the ephemeral range. Binding a given port is a hash lookup, while letting
    /// the kernel choose makes it search the range for a free one, which dominated connecting
    /// past ~10,000 sockets.
    pub fn source(&self, index: usize) -> SocketAddr {
        let (lo, len) = *EPHEMERAL.get_or_init(ephemeral_range);
        let port = lo as usize + (index % self.per_address) % len.max(1);
        SocketAddr::new(IpAddr::V4(self.address(index)), port.min(65_535) as u16)
    }

    /// Whether every address of `n` connections stays inside 127.0.0.0/8.
    pub fn fits_loopback(&self, n: usize) -> bool {
        n == 0 || self.address(n - 1).octets()[0] == 127 && self.base.octets()[0] == 127
    }
}

static EPHEMERAL: std::sync::OnceLock<(u16, usize)> = std::sync::OnceLock::new();

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`): first port
/// and size.
fn ephemeral_range() -> (u16, usize) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or((32_768, 28_232))
}

/// The size of the kernel's ephemeral port range.
pub fn ephemeral_ports() -> usize {
    ephemeral_range().1
}

/// `"32768\t60999"` → first port 32,768, 28,232 ports.
pub fn parse_port_range(s: &str) -> Option<(u16, usize)> {
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (hi >= lo).then(|| (lo, usize::from(hi - lo) + 1))
}

/// A bare WebSocket past `synced`, opened from a chosen source address.
pub type RawSocket = WebSocketStream<TcpStream>;

/// Opens a socket from `source` to `server`, upgrades it, sends `hello` and reads up to
/// `synced`. Speaks the protocol's own types, as the SDK would; small buffers, because
/// thousands of these sit idle. If `source`'s port is taken (another program, or TIME_WAIT
/// towards the same server), the kernel chooses one instead.
pub async fn connect_from(
    server: SocketAddr,
    ws_url: &str,
    source: Option<SocketAddr>,
    token: &str,
) -> anyhow::Result<RawSocket> {
    let work = async {
        let stream = match source {
            None => tcp_connect(server, None).await,
            Some(src) => connect_trying_ports(server, src).await,
        }
        .with_context(|| match source {
            Some(src) => format!("connect from {}", src.ip()),
            None => "connect".to_owned(),
        })?;
        stream.set_nodelay(true).context("nodelay")?;
        // Closed with a reset rather than a FIN: thousands of idle sockets closing at the end
        // of a run would otherwise leave as many ports in TIME_WAIT for a minute, which the
        // next run (or the SDK's connects, which cannot pick their port) would run out of.
        stream.set_zero_linger().context("linger")?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config))
            .await
            .map_err(refusal)
            .context("upgrade")?;
        let hello = ClientFrame::Hello {
            token: Some(token.to_owned()),
            cursor: None,
        };
        ws.send(WsMessage::text(serde_json::to_string(&hello)?))
            .await
            .context("hello")?;
        let mut welcomed = false;
        loop {
            let msg = match ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("read")),
                None => bail!("closed"),
            };
            let WsMessage::Text(text) = msg else {
                if msg.is_close() {
                    bail!("closed by the server");
                }
                continue;
            };
            match ServerFrame::parse(&text) {
                Ok(ServerFrame::Welcome { .. }) => welcomed = true,
                Ok(ServerFrame::Synced { .. }) if welcomed => return Ok(ws),
                Ok(ServerFrame::Error { code, .. }) => bail!("{code}"),
                Ok(_) => {}
                Err(e) => bail!("bad frame: {e}"),
            }
        }
    };
    tokio::time::timeout(SYNC_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("timeout"))?
}

/// An upgrade the server answered with an HTTP error, said with the server's own words (its
/// JSON `error.message`: "server is at its limit of N connections"), so a run's failures
/// say why.
fn refusal(e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    if let tokio_tungstenite::tungstenite::Error::Http(resp) = &e {
        let body = resp
            .body()
            .as_deref()
            .and_then(|b| serde_json::from_slice::<confab_protocol::ErrorBody>(b).ok());
        if let Some(body) = body {
            return anyhow!("HTTP {}: {}", resp.status().as_u16(), body.error.message);
        }
    }
    anyhow::Error::new(e)
}

/// Connects from `src`; if its port is taken (by another program, or by a socket of an
/// earlier run still in TIME_WAIT), tries a few ports spread over the ephemeral range, and
/// only then lets the kernel search for one.
///
/// The kernel's search is `connect` without a `bind` where it can be: `connect` picks a port
/// for the whole connection (source and destination). `bind(ip, 0)` knows no destination:
/// after a few large runs, with the range full of sockets in TIME_WAIT, it failed with
/// "address in use" for 3,134 of 19,000 connects, where `connect` alone failed for none.
/// Without a bind the source is the server's own address (the kernel's choice for a loopback
/// destination), so that is the case it serves.
async fn connect_trying_ports(server: SocketAddr, src: SocketAddr) -> std::io::Result<TcpStream> {
    let taken = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
        )
    };
    for at in port_tries(src) {
        match tcp_connect(server, Some(at)).await {
            Err(e) if taken(&e) => continue,
            other => return other,
        }
    }
    if src.ip() == server.ip() {
        tcp_connect(server, None).await
    } else {
        tcp_connect(server, Some(SocketAddr::new(src.ip(), 0))).await
    }
}

/// The sources [`connect_trying_ports`] tries before the kernel's search: `src`, then ports
/// spread over the ephemeral range.
fn port_tries(src: SocketAddr) -> impl Iterator<Item = SocketAddr> {
    const TRIES: usize = 8;
    let (lo, len) = *EPHEMERAL.get_or_init(ephemeral_range);
    let first = usize::from(src.port().saturating_sub(lo));
    (0..TRIES).map(move |k| {
        // A stride that is prime and far from the plan's own step visits distant ports.
        let port = lo as usize + (first + k * 7_919) % len.max(1);
        SocketAddr::new(src.ip(), port.min(65_535) as u16)
    })
}

async fn tcp_connect(server: SocketAddr, source: Option<SocketAddr>) -> std::io::Result<TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }?;
    if let Some(src) = source {
        // Lets bind take a port whose earlier socket is still in TIME_WAIT, so that
        // back-to-back runs do not run out of ports.
        socket.set_reuseaddr(true)?;
        socket.bind(src)?;
    }
    socket.connect(server).await
}

/// The reason of a failed [`connect_from`] with its cause, short enough to count by.
pub fn failure_reason(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::{Error as WsError, http};

    #[test]
    fn a_refused_upgrade_says_the_servers_reason() {
        let refused = |status: u16, body: Option<&str>| {
            let resp = http::Response::builder()
                .status(status)
                .body(body.map(|b| b.as_bytes().to_vec()))
                .unwrap();
            refusal(WsError::Http(Box::new(resp))).to_string()
        };
        assert_eq!(
            refused(
                503,
                Some(
                    r#"{"error":{"code":"unavailable","message":"server is at its limit of 44 connections"}}"#
                )
            ),
            "HTTP 503: server is at its limit of 44 connections"
        );
        // Without the server's JSON, tungstenite's own words.
        assert!(refused(502, Some("bad gateway")).contains("502"));
        assert!(refused(503, None).contains("503"));
    }

    #[test]
    fn connections_spread_over_source_addresses() {
        let plan = SourcePlan::for_port_range(Ipv4Addr::new(127, 0, 0, 1), 28_232);
        assert_eq!(plan.per_address, 25_409);
        assert_eq!(plan.address(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(plan.address(25_408), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(plan.address(25_409), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(plan.spread(0, 0).len(), 0);
        assert_eq!(plan.spread(0, 25_409).len(), 1);
        assert_eq!(plan.spread(0, 100_000).len(), 4);

        let small = SourcePlan {
            base: Ipv4Addr::new(127, 0, 0, 254),
            per_address: 10,
        };
        assert_eq!(
            small.address(25),
            Ipv4Addr::new(127, 0, 1, 0),
            "wraps into the next octet"
        );
        assert_eq!(
            small.spread(0, 25),
            vec![
                (Ipv4Addr::new(127, 0, 0, 254), 10),
                (Ipv4Addr::new(127, 0, 0, 255), 10),
                (Ipv4Addr::new(127, 0, 1, 0), 5)
            ]
        );
        // A child process's share starts mid-block and continues the same numbering.
        assert_eq!(
            small.spread(7, 5),
            vec![
                (Ipv4Addr::new(127, 0, 0, 254), 3),
                (Ipv4Addr::new(127, 0, 0, 255), 2)
            ]
        );
        let total: usize = small.spread(3, 1000).iter().map(|(_, n)| n).sum();
        assert_eq!(total, 1000);
        assert!(small.fits_loopback(1000));
        let (lo, _) = ephemeral_range();
        assert_eq!(small.source(0).port(), lo);
        assert_eq!(small.source(9).port(), lo + 9);
        assert_eq!(
            small.source(10).port(),
            lo,
            "each address counts its ports afresh"
        );
        assert_eq!(
            small.source(10).ip(),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 255))
        );
        let edge = SourcePlan {
            base: Ipv4Addr::new(127, 255, 255, 250),
            per_address: 1,
        };
        assert!(!edge.fits_loopback(10));
    }

    #[tokio::test]
    async fn a_source_whose_ports_are_all_taken_still_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        // Every port tried first already has a connection to this server (or is in use by
        // some other program): each attempt fails on its source.
        let (lo, _) = ephemeral_range();
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), lo + 123);
        let tried: Vec<SocketAddr> = port_tries(src).collect();
        assert_eq!(tried.len(), 8);
        assert_eq!(tried[0], src);
        let mut blockers = Vec::new();
        for &at in &tried {
            if let Ok(s) = tcp_connect(server, Some(at)).await {
                blockers.push(s);
            }
        }
        let stream = connect_trying_ports(server, src)
            .await
            .expect("the kernel finds a free port");
        let port = stream.local_addr().unwrap().port();
        assert!(!tried.iter().any(|t| t.port() == port), "port {port}");
        drop(blockers);
        accepting.abort();
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 28_232)));
        assert_eq!(parse_port_range("1024 1024"), Some((1024, 1)));
        assert_eq!(parse_port_range("9 1"), None);
        assert_eq!(parse_port_range(""), None);
        assert!(ephemeral_ports() > 0);
    }

    #[test]
    fn reasons_are_counted_by_first_line() {
        let mut m = BTreeMap::new();
        count(&mut m, "a\nb");
        count(&mut m, "a");
        assert_eq!(m.get("a"), Some(&2));
    }
}
