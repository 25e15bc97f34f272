//! Who the client is behind reverse proxies. `X-Forwarded-For` is believed only as far as the
//! hops that wrote it are trusted (`trusted_proxies`): anyone can send the header, so a
//! request straight from an untrusted peer is logged with the peer's own address.
//!
//! Pure: no I/O, no shared state.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`. A network with host bits set (`10.1.0.0/8`) is refused
    /// rather than masked: it is most often a typo for a narrower network.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let net = match text.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            Err(_) if !text.contains('/') => match text.parse::<IpAddr>() {
                Ok(addr) => ipnet::IpNet::from(addr),
                Err(_) => {
                    return Err(format!(
                        "`{text}` is not an IP address or network (e.g. 10.0.0.0/8, 127.0.0.1, ::1)"
                    ));
                }
            },
            Err(_) => {
                let (addr, _) = text.split_once('/').unwrap_or((text, ""));
                let max = match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => 32,
                    Ok(IpAddr::V6(_)) => 128,
                    Err(_) => {
                        return Err(format!(
                            "`{text}` is not an IP address or network (e.g. 10.0.0.0/8, 127.0.0.1, ::1)"
                        ));
                    }
                };
                return Err(format!("`{text}`: the prefix length must be 0 to {max}"));
            }
        };
        // An IPv4-mapped IPv6 network is the IPv4 network it maps.
        let net = match net {
            ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(ipnet::IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            other => other,
        };
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set: the network is {}",
                net.trunc()
            ));
        }
        Ok(IpNet(net))
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`trusted_proxies`; empty by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// Where a request came from, as far as it can be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    /// The TCP peer itself (no trusted proxy in between): address and port.
    Direct(SocketAddr),
    /// The address a trusted proxy reported in `X-Forwarded-For` (no port is forwarded).
    Forwarded(IpAddr),
}

impl ClientAddr {
    pub fn ip(&self) -> IpAddr {
        match self {
            ClientAddr::Direct(addr) => addr.ip().to_canonical(),
            ClientAddr::Forwarded(ip) => ip.to_canonical(),
        }
    }

    /// What per-address limits count by: the address, or for IPv6 its /64, the block one
    /// host is usually given (counting by /128 would let it rotate addresses without end).
    pub fn limit_key(&self) -> IpAddr {
        match self.ip() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Direct(addr) => write!(f, "{addr}"),
            ClientAddr::Forwarded(ip) => write!(f, "{ip}"),
        }
    }
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For` header
    /// values (in the order received). Unless `peer` is trusted the header is ignored.
    /// Otherwise the hops are read from the right (the nearest first) and the first one that
    /// is not a trusted proxy is the client: everything left of it was written by the client
    /// or by proxies nobody vouches for. An entry that is not an address stops the walk at
    /// the nearest hop that was trusted; so does a chain of trusted proxies only.
    pub fn client<'h>(
        &self,
        peer: SocketAddr,
        forwarded_for: impl IntoIterator<Item = &'h str>,
    ) -> ClientAddr {
        let direct = ClientAddr::Direct(peer);
        if !self.trusts(peer.ip()) {
            return direct;
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect();
        let mut nearest = direct;
        for hop in hops.into_iter().rev() {
            match parse_hop(hop) {
                Some(ip) if self.trusts(ip) => nearest = ClientAddr::Forwarded(ip),
                Some(ip) => return ClientAddr::Forwarded(ip),
                None => return nearest,
            }
        }
        nearest
    }
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some proxies write
/// it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_ipv6_by_its_64_and_ipv4_by_address() {
        let v6 = |text: &str| ClientAddr::Forwarded(text.parse().unwrap()).limit_key();
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(
            v6("::ffff:192.0.2.7"),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v4: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert_eq!(
            ClientAddr::Direct(v4).limit_key(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| IpNet::parse(n).unwrap()).collect())
    }

    fn peer(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn forwarded(text: &str) -> ClientAddr {
        ClientAddr::Forwarded(text.parse().unwrap())
    }

    #[test]
    fn networks_parse_and_match() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            IpNet::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn bad_networks_are_refused_with_a_reason() {
        assert!(
            IpNet::parse("10.1.0.0/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(IpNet::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(IpNet::parse("::/129").unwrap_err().contains("0 to 128"));
        assert!(IpNet::parse("localhost").unwrap_err().contains("not an IP"));
        assert!(IpNet::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn an_untrusted_peer_is_its_own_client_whatever_it_forwards() {
        let trusted = proxies(&["127.0.0.1"]);
        let p = peer("192.0.2.7:5555");
        assert_eq!(
            trusted.client(p, ["203.0.113.9"]),
            ClientAddr::Direct(p),
            "a forged header is ignored"
        );
        assert_eq!(
            TrustedProxies::default().client(peer("127.0.0.1:1"), ["203.0.113.9"]),
            ClientAddr::Direct(peer("127.0.0.1:1")),
            "nothing is trusted by default"
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let p = peer("127.0.0.1:40000");
        // The client prepended a forged entry; nginx appended the real address.
        assert_eq!(
            trusted.client(p, ["6.6.6.6, 198.51.100.4"]),
            forwarded("198.51.100.4")
        );
        // Two proxies: a load balancer in 10/8 then nginx on the loopback.
        assert_eq!(
            trusted.client(p, ["6.6.6.6, 198.51.100.4, 10.1.2.3"]),
            forwarded("198.51.100.4")
        );
        // Several header lines count as one list, in order.
        assert_eq!(
            trusted.client(p, ["6.6.6.6", "198.51.100.4,10.1.2.3"]),
            forwarded("198.51.100.4")
        );
        assert_eq!(
            trusted.client(p, ["[2001:db8::5]:443"]),
            forwarded("2001:db8::5")
        );
        assert_eq!(
            trusted.client(p, ["192.0.2.1:4711"]),
            forwarded("192.0.2.1")
        );
        assert_eq!(
            trusted.client(peer("[::ffff:127.0.0.1]:1"), ["198.51.100.4"]),
            forwarded("198.51.100.4"),
            "an IPv4-mapped peer on a dual-stack listener is IPv4"
        );
    }

    #[test]
    fn missing_or_unusable_headers_stop_at_the_nearest_trusted_hop() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let p = peer("127.0.0.1:40000");
        assert_eq!(trusted.client(p, []), ClientAddr::Direct(p));
        assert_eq!(trusted.client(p, [" , "]), ClientAddr::Direct(p));
        assert_eq!(trusted.client(p, ["unknown"]), ClientAddr::Direct(p));
        assert_eq!(
            trusted.client(p, ["198.51.100.4, garbage, 10.9.9.9"]),
            forwarded("10.9.9.9")
        );
        assert_eq!(
            trusted.client(p, ["10.0.0.1, 10.0.0.2"]),
            forwarded("10.0.0.1"),
            "only trusted hops: the farthest one"
        );
    }

    #[test]
    fn display_keeps_the_port_of_direct_peers_only() {
        assert_eq!(
            ClientAddr::Direct(peer("192.0.2.7:5555")).to_string(),
            "192.0.2.7:5555"
        );
        assert_eq!(forwarded("2001:db8::5").to_string(), "2001:db8::5");
    }
}
