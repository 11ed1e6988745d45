//! Which peers a relay may talk to.
//!
//! A TURN relay that forwards to any address lets a client behind it reach the operator's own
//! network: the loopback interface, private ranges, link-local services such as the cloud
//! metadata endpoint at 169.254.169.254 (RFC 8656 §21.3 "Exploiting the relay"). By default
//! every special-purpose range is refused; an allow list opens chosen ranges again (tests
//! allow loopback), and a deny list closes more.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why text is not a CIDR range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address or an address/prefix range (e.g. 10.0.0.0/8, fd00::/8)")]
pub struct CidrError(String);

impl Cidr {
    /// The range of `prefix` leading bits of `network` (host bits are cleared); `None` when
    /// the prefix is longer than the address.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Self> {
        let network = match network {
            IpAddr::V4(v4) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix)))
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix)))
            }
            _ => return None,
        };
        Some(Self { network, prefix })
    }

    /// Whether `ip` is inside the range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// matches IPv4 ranges, so a v6 socket cannot be used to sneak past a v4 rule.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| error())?;
        let full = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| error())?,
            None => full,
        };
        Self::new(address, prefix).ok_or_else(error)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The special-purpose ranges refused by default (IANA special-purpose registries, RFC 6890):
/// "this network", loopback, RFC 1918 private, shared CGNAT space, link-local (which holds
/// the cloud metadata endpoints), benchmarking, reserved, multicast and broadcast, and their
/// IPv6 counterparts including unique-local addresses (where `fd00:ec2::254` lives) and the
/// NAT64 prefixes (which would reach IPv4 private ranges through a translator).
pub const DEFAULT_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Which peer addresses relays may send to and receive from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    defaults: Vec<Cidr>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

impl PeerPolicy {
    /// The default denials plus `deny`, with `allow` taking precedence over the defaults (but
    /// not over `deny`: an operator's explicit denial always wins).
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> Self {
        let defaults = DEFAULT_DENIED
            .iter()
            .filter_map(|text| text.parse().ok())
            .collect();
        Self {
            allow,
            deny,
            defaults,
        }
    }

    /// Whether a relay may exchange packets with `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|range| range.contains(ip)) {
            return false;
        }
        if self.allow.iter().any(|range| range.contains(ip)) {
            return true;
        }
        !self.defaults.iter().any(|range| range.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_matches() {
        let range: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(range.to_string(), "10.0.0.0/8");
        assert!(range.contains(ip("10.255.0.1")));
        assert!(!range.contains(ip("11.0.0.1")));
        assert!(range.contains(ip("::ffff:10.0.0.1")));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert!(host.contains(ip("2001:db8::1")));
        assert!(!host.contains(ip("2001:db8::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            PeerPolicy::default().defaults.len(),
            DEFAULT_DENIED.len(),
            "every default range parses"
        );
    }

    #[test]
    fn default_policy_refuses_special_ranges() {
        let policy = PeerPolicy::default();
        for denied in [
            "127.0.0.1",
            "10.0.0.5",
            "172.20.1.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!policy.permits(ip(denied)), "{denied}");
        }
        for allowed in ["203.0.113.7", "8.8.8.8", "2001:4860:4860::8888"] {
            assert!(policy.permits(ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn allow_list_reopens_and_deny_list_wins() {
        let policy = PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            vec!["127.0.0.2".parse().unwrap(), "8.8.8.0/24".parse().unwrap()],
        );
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(!policy.permits(ip("8.8.8.8")));
        assert!(!policy.permits(ip("10.0.0.1")));
    }
}
