//! Throwaway PostgreSQL databases: each test gets its own, created under a fresh name on the
//! server of [`engines::postgres`] and dropped when the test ends, even by a panic.
//!
//! The role in the URL needs `CREATEDB`.

use std::net::{SocketAddr, ToSocketAddrs};

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::{engines, names};

/// A database of one test's own, dropped (best effort) when this is dropped.
pub struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    /// A fresh database on the configured server, or `None` once the skip is reported.
    pub async fn from_env() -> Option<Database> {
        Some(Database::create(&engines::postgres()?).await)
    }

    /// A fresh database on the server `admin_url` reaches (a URL or a key-value string, its
    /// database one that exists, e.g. `postgres`); panics when it cannot be created. Panic
    /// messages leave the URL out: it may hold a password.
    pub async fn create(admin_url: &str) -> Database {
        let name = names::fresh("confab_t_");
        connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"))
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Database {
            admin_url: admin_url.to_owned(),
            name,
        }
    }

    /// The database's name, e.g. to find its sessions in `pg_stat_activity`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `postgres://` URL of the database, with the admin URL's user, password, hosts, ports,
    /// `options` and `application_name` (its other settings are not carried over).
    pub fn url(&self) -> String {
        render(&parse(&self.admin_url), &self.name, None, &[])
    }

    /// [`url`](Self::url) with one more connection parameter, e.g.
    /// `("options", "-c synchronous_commit=off")`; not `host` or `port`, which add a host
    /// instead of replacing it (see [`url_via`](Self::url_via)).
    pub fn url_with_param(&self, key: &str, value: &str) -> String {
        render(&parse(&self.admin_url), &self.name, None, &[(key, value)])
    }

    /// [`url`](Self::url) reaching the server at `addr` instead, e.g. through a proxy.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        render(&parse(&self.admin_url), &self.name, Some(addr), &[])
    }

    /// The server's TCP address, for a proxy in front of it; `None` for a Unix socket.
    pub fn addr(&self) -> Option<SocketAddr> {
        let config = parse(&self.admin_url);
        let Some(Host::Tcp(host)) = config.get_hosts().first() else {
            return None;
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        (host.as_str(), port).to_socket_addrs().ok()?.next()
    }

    /// A new connection to the admin database, e.g. to end this database's sessions.
    pub async fn admin(&self) -> Client {
        connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // A thread with a runtime of its own: this may run inside the test's runtime, unwinding.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                connect(&admin_url)
                    .await
                    .ok()?
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            crate::tell(&format!("note: could not drop test database {}", self.name));
        }
    }
}

fn parse(url: &str) -> Config {
    url.parse()
        .unwrap_or_else(|e| panic!("not a PostgreSQL URL: {e}"))
}

/// A client on `url`, its connection driven by a task of the current runtime.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A `postgres://` URL of database `dbname` on the server of `config` (or at `via`), with
/// `params` added to the query.
fn render(
    config: &Config,
    dbname: &str,
    via: Option<SocketAddr>,
    params: &[(&str, &str)],
) -> String {
    let mut url = String::from("postgres://");
    if let Some(user) = config.get_user() {
        url += &encode(user.as_bytes());
        if let Some(password) = config.get_password() {
            url.push(':');
            url += &encode(password);
        }
        url.push('@');
    }
    let hosts: Vec<String> = match via {
        // Display brackets an IPv6 address, as a URL wants.
        Some(addr) => vec![addr.to_string()],
        None => {
            let ports = config.get_ports();
            let hosts = config.get_hosts().iter().enumerate().map(|(i, host)| {
                let host = match host {
                    Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
                    Host::Tcp(h) => encode(h.as_bytes()),
                    #[cfg(unix)]
                    Host::Unix(path) => encode(path.as_os_str().as_encoded_bytes()),
                };
                // One port serves every host; otherwise there is one per host.
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            });
            hosts.collect()
        }
    };
    url += &hosts.join(",");
    url.push('/');
    url += &encode(dbname.as_bytes());
    let carried = [
        ("options", config.get_options()),
        ("application_name", config.get_application_name()),
    ];
    let query: Vec<String> = carried
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .chain(params.iter().copied())
        .map(|(key, value)| format!("{}={}", encode(key.as_bytes()), encode(value.as_bytes())))
        .collect();
    if !query.is_empty() {
        url.push('?');
        url += &query.join("&");
    }
    url
}

/// `bytes` percent-encoded, all but RFC 3986's unreserved characters.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(admin: &str, via: Option<SocketAddr>, params: &[(&str, &str)]) -> String {
        render(&admin.parse().unwrap(), "confab_t_1", via, params)
    }

    #[test]
    fn a_url_keeps_the_server_and_names_the_database() {
        assert_eq!(
            url_of("postgres://postgres@127.0.0.1:5432/postgres", None, &[]),
            "postgres://postgres@127.0.0.1:5432/confab_t_1"
        );
        assert_eq!(
            url_of(
                "host=localhost user=me password='a b@c' dbname=x",
                None,
                &[]
            ),
            "postgres://me:a%20b%40c@localhost/confab_t_1"
        );
        assert_eq!(
            url_of("postgres://u@[::1]:6000/x?options=-c%20a%3Db", None, &[]),
            "postgres://u@[::1]:6000/confab_t_1?options=-c%20a%3Db"
        );
        assert_eq!(
            url_of("postgres://u@%2Fvar%2Frun%2Fpostgresql/x", None, &[]),
            "postgres://u@%2Fvar%2Frun%2Fpostgresql:5432/confab_t_1"
        );
    }

    #[test]
    fn a_url_can_go_elsewhere_and_carry_more() {
        let via = Some("127.0.0.1:7000".parse().unwrap());
        assert_eq!(
            url_of("postgres://u@db.example:5432/x", via, &[]),
            "postgres://u@127.0.0.1:7000/confab_t_1"
        );
        let url = url_of(
            "postgres://u@h/x",
            None,
            &[("options", "-c synchronous_commit=off")],
        );
        assert_eq!(
            url,
            "postgres://u@h:5432/confab_t_1?options=-c%20synchronous_commit%3Doff"
        );
        let parsed: Config = url.parse().unwrap();
        assert_eq!(parsed.get_options(), Some("-c synchronous_commit=off"));
        assert_eq!(parsed.get_dbname(), Some("confab_t_1"));
    }
}
