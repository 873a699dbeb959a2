//! The SSRF guard of Web Push: a subscription's endpoint is a URL any client chooses, and the
//! server POSTs to it. Without a guard a client could make the server reach its own network
//! (an admin port on loopback, a cloud metadata service on link-local, a database on a
//! private range).
//!
//! Two checks, because a name that resolved to a public address when the subscription was
//! made may resolve elsewhere when a notification is sent (DNS rebinding):
//! - [`check_endpoint`], when a subscription is set: `https` only, no userinfo, and every
//!   address the host resolves to is public;
//! - at every send, [`PublicResolver`] (the Web Push client's only resolver) drops the
//!   non-public addresses, so the address actually connected to is checked, and
//!   [`check_url`] checks a host written as an IP literal, which no resolver sees.
//!
//! `--push-allow-private` turns both off (tests, private networks), and allows plain `http`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long resolving a subscription's host may take before the request is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a Web Push endpoint when a subscription is set: an `https` URL (or `http`, with
/// `allow_private`) without userinfo, whose host resolves only to public addresses (unless
/// `allow_private`). The error says what is wrong, for a 400.
pub async fn check_endpoint(url: &str, allow_private: bool) -> Result<(), String> {
    let url = Url::parse(url).map_err(|e| format!("the endpoint is not a URL: {e}"))?;
    check_url(&url, allow_private)?;
    if allow_private {
        return Ok(());
    }
    let Some(domain) = url.host_str().filter(|_| ip_literal(&url).is_none()) else {
        // An IP literal: `check_url` has classified it.
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((domain, port)))
        .await
        .map_err(|_| format!("the endpoint's host {domain} did not resolve in time"))?
        .map_err(|e| format!("the endpoint's host {domain} does not resolve: {e}"))?
        .collect::<Vec<_>>();
    if addresses.is_empty() {
        return Err(format!("the endpoint's host {domain} has no address"));
    }
    if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "the endpoint's host {domain} resolves to {}, which is not a public address",
            private.ip()
        ));
    }
    Ok(())
}

/// What can be checked of an endpoint without resolving it, when a subscription is set and at
/// every send: the scheme (`https`; `http` too with `allow_private`), no userinfo, a host,
/// and, for a host written as an IP address, that it is public (unless `allow_private`).
pub fn check_url(url: &Url, allow_private: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err("the endpoint must be an https URL".into()),
        other => return Err(format!("the endpoint's scheme {other:?} is not https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the endpoint must not carry a user name or password".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the endpoint has no host".into());
    }
    match ip_literal(url) {
        Some(ip) if !allow_private && !is_public(ip) => Err(format!(
            "the endpoint's address {ip} is not a public address"
        )),
        _ => Ok(()),
    }
}

/// The host, when the URL names it by address. The URL parser has already turned the other
/// spellings of an IPv4 address (`127.1`, `0x7f000001`, `2130706433`) into dotted form, and
/// brackets an IPv6 one.
fn ip_literal(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Whether `ip` is a public unicast address: not loopback, private, shared (CGNAT),
/// link-local, unique-local, multicast, unspecified, reserved, documentation or benchmarking,
/// and not an IPv4 address of those carried in IPv6 (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 ranges that are not public (the IANA special-purpose registry, RFC 6890 and after).
const V4_NOT_PUBLIC: [([u8; 4], u32); 15] = [
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata services live here)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the broadcast address
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !V4_NOT_PUBLIC.iter().any(|&(net, prefix)| {
        let mask = u32::MAX << (32 - prefix);
        bits & mask == u32::from(Ipv4Addr::from(net))
    })
}

/// IPv6 ranges inside global unicast (2000::/3) that are not public.
const V6_NOT_PUBLIC: [(u128, u32); 3] = [
    (0x2001_0000 << 96, 23), // IETF protocol assignments (Teredo, benchmarking, ORCHID…)
    (0x2001_0db8 << 96, 32), // documentation
    (0x3fff_0000 << 96, 20), // documentation (RFC 9637)
];

fn in_v6(bits: u128, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX << (128 - prefix);
    bits & mask == net
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let bits = u128::from(ip);
    // Only global unicast is public: this leaves out unspecified, loopback, IPv4-compatible,
    // discard-only, unique-local (fc00::/7), link-local, site-local and multicast at once.
    in_v6(bits, 0x2 << 124, 3)
        && !V6_NOT_PUBLIC
            .iter()
            .any(|&(net, prefix)| in_v6(bits, net, prefix))
}

/// The IPv4 address an IPv6 address leads to, where a translator or tunnel would carry the
/// connection there: IPv4-mapped (::ffff:0:0/96), the NAT64 well-known prefix (64:ff9b::/96)
/// and 6to4 (2002::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(ip);
    let low = |b: u128| Ipv4Addr::from(u32::try_from(b & u128::from(u32::MAX)).unwrap_or(0));
    if in_v6(bits, 0x0064_ff9b << 96, 96) {
        return Some(low(bits));
    }
    if in_v6(bits, 0x2002 << 112, 16) {
        return Some(low(bits >> 80));
    }
    None
}

/// Why the resolver gave no address: every address of the host is non-public. The Web Push
/// provider finds it in a request's error and refuses the notification rather than retry.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's host {host} resolves to no public address")]
pub struct NotPublic {
    pub host: String,
}

/// A DNS resolver that keeps only public addresses: the Web Push client connects through it,
/// so the address checked is the one connected to, at every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicResolver;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() && !all.is_empty() {
                return Err(Box::new(NotPublic { host }) as _);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_addresses_are_public() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.114.1",
            "223.255.255.255",
            "142.250.74.110",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "2001:200::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(is_public(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn loopback_private_and_special_addresses_are_not() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:0001::1",
            "2002:c0a8:0101::1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(!is_public(ip(s)), "{s} should not be public");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn only_https_without_userinfo_and_no_private_literal() {
        assert!(check_url(&url("https://push.example/a"), false).is_ok());
        assert!(check_url(&url("https://8.8.8.8/a"), false).is_ok());
        assert!(check_url(&url("https://[2001:4860::1]:8443/a"), false).is_ok());
        for bad in [
            "http://push.example/a",
            "ftp://push.example/a",
            "https://user@push.example/a",
            "https://user:pw@push.example/a",
            "https://127.0.0.1/a",
            // Forms the URL parser turns into 127.0.0.1.
            "https://127.1/a",
            "https://0x7f000001/a",
            "https://2130706433/a",
            "https://[::1]/a",
            "https://[::ffff:7f00:1]/a",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/a",
        ] {
            assert!(
                check_url(&url(bad), false).is_err(),
                "{bad} should be refused"
            );
        }
        assert!(check_url(&url("http://127.0.0.1:9000/a"), true).is_ok());
        assert!(check_url(&url("https://10.0.0.1/a"), true).is_ok());
        assert!(check_url(&url("http://user@127.0.0.1/a"), true).is_err());
        assert!(check_url(&url("ftp://127.0.0.1/a"), true).is_err());
    }

    #[tokio::test]
    async fn a_host_resolving_to_loopback_is_refused() {
        let e = check_endpoint("https://localhost/push/1", false)
            .await
            .unwrap_err();
        assert!(e.contains("not a public address"), "{e}");
        let e = check_endpoint("https://LOCALHOST:8443/push/1", false)
            .await
            .unwrap_err();
        assert!(e.contains("not a public address"), "{e}");
        assert!(check_endpoint("https://127.0.0.1/x", false).await.is_err());
        assert!(
            check_endpoint("http://push.example/x", false)
                .await
                .is_err()
        );
        assert!(check_endpoint("not a url", false).await.is_err());
        assert!(
            check_endpoint("https://localhost/push/1", true)
                .await
                .is_ok()
        );
        assert!(
            check_endpoint("http://localhost:1/push/1", true)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_resolver_gives_no_loopback_address() {
        let name: Name = "localhost".parse().unwrap();
        let e = match PublicResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(e.downcast_ref::<NotPublic>().is_some(), "{e}");
    }
}
