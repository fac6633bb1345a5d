//! Outgoing HTTP: which addresses a guest's `http-fetch` may reach.
//!
//! A grant names an origin (`net.http:https://api.example.com:443`); the host name in it is
//! resolved by [`VettedResolver`], which drops every address that is not public (loopback,
//! private, link-local, multicast, unspecified, shared, reserved; IPv4, IPv6 and IPv4 embedded
//! in IPv6) and hands only the rest to the HTTP client. The client connects only to addresses the
//! resolver returned, so a name cannot be re-bound to an internal address between the check and
//! the connection (DNS rebinding). To reach an internal service the grant names its IP literal
//! (`net.http:http://10.0.0.7:8080`): literals are not resolved and match only the exact grant.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `ip` is a public unicast address a guest may reach through a host name.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // 0.0.0.0/8, "this network"
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10, shared (carrier-grade NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // 192.0.0.0/24, protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || a >= 240) // 240.0.0.0/4, reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96) embed an IPv4 address.
    if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, high, low] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (segments[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (segments[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // 2001:db8::/32, documentation
}

/// The HTTP client's resolver: the system's resolution, then only public addresses.
#[derive(Debug, Default)]
pub struct VettedResolver;

impl reqwest::dns::Resolve for VettedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (public, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                resolved.into_iter().partition(|address| is_public(address.ip()));
            if public.is_empty() {
                let refused: Vec<String> = refused.iter().map(|address| address.ip().to_string()).collect();
                return Err(format!(
                    "`{host}` resolves only to addresses that are not public ({}); a guest reaches an \
                     internal address only through a grant naming its IP literal",
                    refused.join(", ")
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_pass() {
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "100.64.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "ff02::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused} passed");
        }
        for allowed in [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
        ] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed} refused");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_to_nothing_reachable() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let error = match VettedResolver.resolve(name).await {
            Ok(addresses) => panic!("localhost resolved to {:?}", addresses.collect::<Vec<_>>()),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("not public"), "{error}");
    }
}
