//! Outbound calls to operator-supplied hosts (OAuth token and revocation endpoints,
//! connectivity probes): private, loopback and link-local addresses are refused unless the
//! host is listed in `CARACAL_PRIVATE_EGRESS_HOSTS` (operations.md), so a provider or
//! resource URL cannot be aimed at the deployment's own network.
//!
//! The check runs where the address is chosen — in the HTTP client's DNS resolver — so a
//! name that resolves differently between a check and the connection cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// `CARACAL_PRIVATE_EGRESS_HOSTS`: comma-separated host names or IP literals.
fn allowed_private_hosts() -> &'static Vec<String> {
    static HOSTS: OnceLock<Vec<String>> = OnceLock::new();
    HOSTS.get_or_init(|| {
        std::env::var("CARACAL_PRIVATE_EGRESS_HOSTS")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    })
}

fn private_allowed(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    allowed_private_hosts().contains(&host)
}

/// Whether an address is publicly routable (not private, loopback, link-local, shared,
/// documentation, benchmarking, reserved, multicast or unspecified), IPv4 embedded in IPv6
/// (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) judged as the IPv4 it
/// carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && v4.octets()[2] == 0))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            let first = seg[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && seg[1] == 0x0db8
                || first == 0x0100 && seg[1..4] == [0, 0, 0])
        }
    }
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms that route to it:
/// mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`, deprecated but routable by some
/// stacks), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`, the address in segments 1–2).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let join =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(join(seg[6], seg[7]));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(join(seg[6], seg[7]));
    }
    (seg[0] == 0x2002).then(|| join(seg[1], seg[2]))
}

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to private addresses (not in CARACAL_PRIVATE_EGRESS_HOSTS)")]
pub struct PrivateEgress(pub String);

/// Resolves with the system resolver and drops non-public addresses of hosts not allowed
/// to be private.
pub struct GuardedResolver;

/// A resolver that resolves nothing: the client of last resort when no guarded client can
/// be built, so an outbound call fails instead of going out unguarded.
pub struct RefuseAll;

impl Resolve for RefuseAll {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            Err(Box::new(PrivateEgress(host)) as Box<dyn std::error::Error + Send + Sync>)
        })
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let keep: Vec<SocketAddr> = if private_allowed(&host) {
                addrs
            } else {
                addrs.into_iter().filter(|a| is_public(a.ip())).collect()
            };
            if keep.is_empty() {
                return Err(
                    Box::new(PrivateEgress(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(keep.into_iter()) as Addrs)
        })
    }
}

pub fn resolver() -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver)
}

/// The resolver never sees IP literals: checks a URL's literal host before a request.
pub fn literal_allowed(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)) || private_allowed(&ip.to_string()),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)) || private_allowed(&ip.to_string()),
        Some(url::Host::Domain(_)) => true,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked() {
        assert!(!literal_allowed("https://127.0.0.1/token"));
        assert!(!literal_allowed("https://[::1]/token"));
        assert!(literal_allowed("https://8.8.8.8/token"));
        assert!(literal_allowed("https://idp.example/token"));
    }
}

#[cfg(test)]
mod classification {
    use super::is_public;

    #[test]
    fn every_non_global_range_is_refused_also_when_embedded_in_ipv6() {
        for private in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::",
            "2002:7f00:1::1",
            "100::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
