//! The open-file budget. Every WebSocket holds a file descriptor, so the process's open-file
//! limit, not `max_connections` alone, bounds how many sockets a node can hold. At start a
//! node raises its soft limit to the hard one and lowers `max_connections` to what that
//! leaves after a reserve, so the socket past the limit gets a clear HTTP 503 instead of an
//! `accept` that fails with `EMFILE` while its client waits for a timeout.

use std::io;

/// Descriptors kept back for everything but WebSockets: the store's files (the writer, the
/// checkpointer and up to 8 readers hold three each), the runtime's, the sync queue's and
/// presence's connections, and connections being refused (past the plain-HTTP caps, see
/// `edge::places`). An idle embedded node holds about 20. A PostgreSQL pool comes on top (see
/// [`reserved_files`]); plain-HTTP connections have a budget of their own ([`share`]).
pub const RESERVED_FILES: u64 = 256;

/// The descriptors to keep back for a node whose PostgreSQL pool (if any) holds `pool`.
pub fn reserved_files(postgres_pool: Option<usize>) -> u64 {
    RESERVED_FILES + postgres_pool.map_or(0, |p| p as u64)
}

/// Raises the soft open-file limit to the hard limit (no privilege needed for that) and
/// returns the soft limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    // A hard limit of "unlimited" cannot be the soft one: Linux refuses a soft limit above
    // `fs.nr_open`.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    rlimit::increase_nofile_limit(ceiling)
}

/// How many WebSockets fit in `open_files` descriptors with `reserved` kept back.
pub fn socket_capacity(open_files: u64, reserved: u64) -> usize {
    usize::try_from(open_files.saturating_sub(reserved)).unwrap_or(usize::MAX)
}

/// Plain-HTTP connections a node keeps room for even when WebSockets were given every
/// descriptor: without them nobody could log in or upgrade.
pub const MIN_HTTP_CONNECTIONS: usize = 16;

/// How the descriptors past the reserve are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub websockets: usize,
    pub http: usize,
}

/// Shares `capacity` descriptors between WebSockets (at most `max_websockets`; `usize::MAX`:
/// as many as fit) and plain-HTTP connections (at most `max_http`), so that together they
/// never need more than the limit and a WebSocket is refused with a clear 503 rather than an
/// `accept` that fails. WebSockets asked for by number keep their descriptors, less the few
/// plain HTTP must have ([`MIN_HTTP_CONNECTIONS`]); without a number they take what plain
/// HTTP (at most half) leaves.
pub fn share(capacity: usize, max_websockets: usize, max_http: usize) -> Budget {
    if max_websockets == usize::MAX {
        let http = max_http.min((capacity / 2).max(1)).min(capacity);
        return Budget {
            websockets: capacity - http,
            http,
        };
    }
    let floor = max_http.min(MIN_HTTP_CONNECTIONS).min(capacity);
    let websockets = max_websockets.min(capacity - floor);
    Budget {
        websockets,
        http: max_http.min(capacity - websockets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websockets_keep_their_descriptors_next_to_plain_http() {
        let budget = |w, h| {
            let b = share(19_744, w, h);
            (b.websockets, b.http)
        };
        // Unset: WebSockets take what plain HTTP leaves.
        assert_eq!(budget(usize::MAX, 512), (19_232, 512));
        // Asked for: they keep it, and plain HTTP gets the rest up to its cap...
        assert_eq!(budget(1_000, 512), (1_000, 512));
        assert_eq!(budget(19_400, 512), (19_400, 344));
        // ...but never less than a few.
        assert_eq!(budget(19_744, 512), (19_728, 16));
        assert_eq!(budget(usize::MAX - 1, 512), (19_728, 16));
        // A small limit is shared; plain HTTP takes at most half of it.
        assert_eq!(
            share(64, usize::MAX, 512),
            Budget {
                websockets: 32,
                http: 32
            }
        );
        assert_eq!(
            share(1, usize::MAX, 512),
            Budget {
                websockets: 0,
                http: 1
            }
        );
        assert_eq!(
            share(10, 100, 4),
            Budget {
                websockets: 6,
                http: 4
            }
        );
    }

    #[test]
    fn the_reserve_comes_off_the_limit() {
        assert_eq!(socket_capacity(20_000, RESERVED_FILES), 19_744);
        assert_eq!(socket_capacity(320, RESERVED_FILES), 64);
        assert_eq!(socket_capacity(256, RESERVED_FILES), 0);
        assert_eq!(socket_capacity(100, RESERVED_FILES), 0);
    }

    #[test]
    fn a_postgres_pool_is_reserved_too() {
        assert_eq!(reserved_files(None), 256);
        assert_eq!(reserved_files(Some(16)), 272);
    }

    #[cfg(unix)]
    #[test]
    fn raising_reaches_the_hard_limit() {
        let soft = raise_open_file_limit().unwrap();
        let (now_soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(soft, now_soft);
        // A hard limit above what the kernel allows any process (or unlimited) is met as far
        // as it allows.
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .map_or(u64::MAX, |s| s.trim().parse().unwrap());
        assert_eq!(soft, hard.min(nr_open), "hard {hard}");
    }
}
