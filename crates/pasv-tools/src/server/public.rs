//! The address a 227 reply advertises: per client network (`pasv_public_address_for`, first
//! match wins), per local address (`pasv_public_address`), else the leased one; a host name
//! among them is resolved when a reply needs it, with a short cache.
//!
//! Dynamic DNS: the name of a server behind a home or office line changes address now and
//! then, so it is looked up again once its cached answer is [`RESOLVE_TTL`] old, not once at
//! start. A failed lookup keeps the last good address (and logs); a name never resolved
//! leaves the reply without an address (PASV answers 425, EPSV still works).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Cidr, PublicAddress};
use crate::clock;

/// How long a resolved address is used before the name is looked up again.
pub(crate) const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// How long one lookup may take before the last good address is used instead.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The advertised-address rules and the cache of resolved names.
pub(crate) struct PublicAddresses {
    by_client: Vec<(Cidr, PublicAddress)>,
    by_local: HashMap<IpAddr, PublicAddress>,
    cache: Mutex<HashMap<String, Resolved>>,
}

#[derive(Clone, Copy)]
struct Resolved {
    addr: Ipv4Addr,
    at: Instant,
}

impl PublicAddresses {
    pub(crate) fn new(
        by_client: Vec<(Cidr, PublicAddress)>,
        by_local: HashMap<IpAddr, PublicAddress>,
    ) -> Self {
        PublicAddresses {
            by_client,
            by_local,
            cache: Mutex::default(),
        }
    }

    /// The rule for a lease on `leased` given to `client`: the first `by_client` block that
    /// holds the client, else the leased address's own entry, else the `0.0.0.0` entry.
    /// `None`: advertise the leased address.
    pub(crate) fn rule(&self, leased: IpAddr, client: IpAddr) -> Option<&PublicAddress> {
        self.by_client
            .iter()
            .find(|(block, _)| block.contains(client))
            .map(|(_, public)| public)
            .or_else(|| self.by_local.get(&leased.to_canonical()))
            .or_else(|| self.by_local.get(&IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }

    /// The IPv4 address of a rule: itself, or its name's (cached, looked up again once
    /// [`RESOLVE_TTL`] old; a failed lookup gives the last good address). `None` when the
    /// name has never resolved to an IPv4 address.
    pub(crate) async fn resolve(&self, public: &PublicAddress) -> Option<Ipv4Addr> {
        let host = match public {
            PublicAddress::Fixed(addr) => return Some(*addr),
            PublicAddress::Host(host) => host,
        };
        let now = clock::now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied();
        if let Some(hit) = cached.filter(|c| now.duration_since(c.at) < RESOLVE_TTL) {
            return Some(hit.addr);
        }
        let looked_up =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), 0)))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|addrs| {
                    addrs
                        .filter_map(|a| match a.ip().to_canonical() {
                            IpAddr::V4(v4) => Some(v4),
                            IpAddr::V6(_) => None,
                        })
                        .next()
                        .ok_or_else(|| "no IPv4 address".to_owned())
                });
        match looked_up {
            Ok(addr) => {
                if cached.is_some_and(|c| c.addr != addr) {
                    tracing::info!(host = %host, address = %addr, "passive address changed");
                }
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(host.clone(), Resolved { addr, at: now });
                Some(addr)
            }
            Err(error) => {
                tracing::warn!(host = %host, error = %error, last_good = ?cached.map(|c| c.addr),
                    "cannot resolve the passive address; keeping the last good one");
                cached.map(|c| c.addr)
            }
        }
    }

    /// Puts a resolved address in the cache, as if looked up at `at`.
    #[cfg(test)]
    fn seed(&self, host: &str, addr: Ipv4Addr, at: Instant) {
        self.cache
            .lock()
            .unwrap()
            .insert(host.to_owned(), Resolved { addr, at });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rules() -> PublicAddresses {
        let by_client = vec![
            ("10.0.0.0/8".parse().unwrap(), "10.0.0.5".parse().unwrap()),
            ("10.9.0.0/16".parse().unwrap(), "10.9.9.9".parse().unwrap()),
            (
                "192.168.0.0/16".parse().unwrap(),
                "lan.example.invalid".parse().unwrap(),
            ),
        ];
        let by_local = HashMap::from([
            (ip("0.0.0.0"), "203.0.113.7".parse().unwrap()),
            (ip("127.0.0.2"), "203.0.113.8".parse().unwrap()),
        ]);
        PublicAddresses::new(by_client, by_local)
    }

    #[test]
    fn the_first_matching_client_block_wins_then_the_local_address_then_the_default() {
        let r = rules();
        let fixed = |s: &str| Some(PublicAddress::Fixed(s.parse().unwrap()));
        // 10.9.1.1 is in both blocks; the first listed wins.
        assert_eq!(
            r.rule(ip("127.0.0.1"), ip("10.9.1.1")).cloned(),
            fixed("10.0.0.5")
        );
        assert_eq!(
            r.rule(ip("127.0.0.1"), ip("192.168.1.1")).cloned(),
            Some(PublicAddress::Host("lan.example.invalid".to_owned()))
        );
        assert_eq!(
            r.rule(ip("127.0.0.2"), ip("198.51.100.1")).cloned(),
            fixed("203.0.113.8")
        );
        assert_eq!(
            r.rule(ip("127.0.0.1"), ip("198.51.100.1")).cloned(),
            fixed("203.0.113.7")
        );
        let none = PublicAddresses::new(Vec::new(), HashMap::new());
        assert_eq!(none.rule(ip("127.0.0.1"), ip("10.0.0.1")), None);
    }

    /// `localhost` through the system resolver, the cache, and the last good address when a
    /// lookup fails.
    #[tokio::test(start_paused = true)]
    async fn names_resolve_through_the_system_and_fall_back_to_the_last_good_address() {
        let r = PublicAddresses::new(Vec::new(), HashMap::new());
        let localhost = PublicAddress::Host("localhost".to_owned());
        assert_eq!(r.resolve(&localhost).await, Some(Ipv4Addr::LOCALHOST));
        // A stale cached answer is replaced by a fresh lookup.
        r.seed("localhost", Ipv4Addr::new(192, 0, 2, 1), clock::now());
        assert_eq!(
            r.resolve(&localhost).await,
            Some(Ipv4Addr::new(192, 0, 2, 1))
        );
        tokio::time::advance(RESOLVE_TTL).await;
        assert_eq!(r.resolve(&localhost).await, Some(Ipv4Addr::LOCALHOST));
        // A name with an empty label never resolves, and the resolver refuses it before
        // sending any query: nothing known, then the last good address.
        let gone = PublicAddress::Host(GONE.to_owned());
        assert_eq!(r.resolve(&gone).await, None);
        r.seed(GONE, Ipv4Addr::new(192, 0, 2, 2), clock::now());
        tokio::time::advance(RESOLVE_TTL).await;
        assert_eq!(r.resolve(&gone).await, Some(Ipv4Addr::new(192, 0, 2, 2)));
    }

    /// A name that cannot resolve, without a DNS query leaving the machine (an empty label).
    const GONE: &str = "pasvd-test..invalid";

    /// What the code under test logs, read back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// A failed lookup after a good one: the reply keeps the last good address, and the
    /// operator reads a warning naming the host, the error and that address.
    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_keeps_the_last_good_address_and_is_logged() {
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        // A current-thread runtime: the subscriber set for this thread sees every event.
        let _default = tracing::subscriber::set_default(subscriber);

        let r = PublicAddresses::new(Vec::new(), HashMap::new());
        r.seed(GONE, Ipv4Addr::new(192, 0, 2, 7), clock::now());
        tokio::time::advance(RESOLVE_TTL).await;
        let gone = PublicAddress::Host(GONE.to_owned());
        assert_eq!(r.resolve(&gone).await, Some(Ipv4Addr::new(192, 0, 2, 7)));

        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("cannot resolve the passive address"))
            .unwrap_or_else(|| panic!("no warning logged: {text:?}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(GONE), "{line}");
        assert!(line.contains("192.0.2.7"), "{line}");
    }
}
