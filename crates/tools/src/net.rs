//! Outbound HTTP with an SSRF guard, shared by `http_request` and notification webhooks.
//!
//! Every host name is resolved by our own resolver ([`GuardedResolver`], `tokio::net::lookup_host`)
//! which refuses the whole name when any of its addresses is loopback, private, link-local
//! (cloud metadata included), CGNAT, unspecified, multicast, documentation, reserved, or one of
//! this host's own interface addresses — the connection is then made to exactly the addresses
//! that were checked, so DNS rebinding cannot swap them. IPv6 forms that embed an IPv4 address
//! (mapped, translated, compatible, NAT64, 6to4) are judged by that IPv4 address. IP literals
//! are checked before sending. Hosts on the allow-list skip the check. Redirects are followed
//! by hand (bounded), each hop checked again; only `http` and `https`.
//!
//! A refusal tells the caller only [`REFUSED_MESSAGE`]; what the name resolved to is logged
//! server-side, never returned (it would map the internal network).

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};
use url::{Host, Url};

/// What a refused target is told, whatever the reason.
pub const REFUSED_MESSAGE: &str = "the target address is not allowed";

/// True for addresses a server-side request must not reach unless explicitly allowed: the
/// special-purpose ranges ([`ip_in_forbidden_range`]) and this host's own interface
/// addresses ([`is_own_address`]).
pub fn ip_is_forbidden(ip: IpAddr) -> bool {
    ip_in_forbidden_range(ip) || is_own_address(ip)
}

/// True for loopback, private, link-local, CGNAT, documentation, benchmarking, multicast,
/// reserved and other special-purpose addresses (IPv6 forms embedding IPv4 judged by it).
pub fn ip_in_forbidden_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_forbidden(v4),
        IpAddr::V6(v6) => v6_is_forbidden(v6),
    }
}

fn v4_is_forbidden(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback() // 127/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16, cloud metadata 169.254.169.254
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0/24
        || (a == 192 && b == 0 && c == 2) // documentation TEST-NET-1 192.0.2/24
        || (a == 198 && b == 51 && c == 100) // documentation TEST-NET-2 198.51.100/24
        || (a == 203 && b == 0 && c == 113) // documentation TEST-NET-3 203.0.113/24
        || (a == 192 && b == 88 && c == 99) // deprecated 6to4 relay anycast 192.88.99/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || ip.is_multicast() // 224/4
        || a >= 240 // reserved 240/4 and broadcast
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

fn v6_is_forbidden(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped ::ffff:0:0/96: judged by the embedded IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_is_forbidden(v4);
    }
    // IPv4-translated ::ffff:0:a.b.c.d (SIIT, ::ffff:0:0:0/96).
    if s[..4].iter().all(|&x| x == 0) && s[4] == 0xffff && s[5] == 0 {
        return v4_is_forbidden(embedded_v4(s[6], s[7]));
    }
    // Deprecated IPv4-compatible ::a.b.c.d (:: and ::1 included).
    if s[..6].iter().all(|&x| x == 0) {
        return ip.is_unspecified() || ip.is_loopback() || v4_is_forbidden(embedded_v4(s[6], s[7]));
    }
    // NAT64 64:ff9b::/96 embeds an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return v4_is_forbidden(embedded_v4(s[6], s[7]));
    }
    // 6to4 2002::/16 embeds an IPv4 address.
    if s[0] == 0x2002 {
        return v4_is_forbidden(embedded_v4(s[1], s[2]));
    }
    (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x0100 && s[1..4].iter().all(|&x| x == 0)) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32 (embeds an obfuscated IPv4)
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast ff00::/8
}

/// How long the list of this host's interface addresses is reused before it is read again.
const OWN_ADDRESSES_TTL: Duration = Duration::from_secs(30);

/// This host's interface addresses (`getifaddrs(3)` through the `if-addrs` crate), cached for
/// [`OWN_ADDRESSES_TTL`] so an address added at run time is refused within that time.
struct OwnAddresses {
    cache: Mutex<Option<(Instant, Arc<Vec<IpAddr>>)>>,
}

static OWN_ADDRESSES: LazyLock<OwnAddresses> = LazyLock::new(|| OwnAddresses {
    cache: Mutex::new(None),
});

impl OwnAddresses {
    fn current(&self) -> Arc<Vec<IpAddr>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, list)) = cache.as_ref()
            && at.elapsed() < OWN_ADDRESSES_TTL
        {
            return list.clone();
        }
        let list = match if_addrs::get_if_addrs() {
            Ok(ifaces) => Arc::new(ifaces.into_iter().map(|i| i.ip()).collect::<Vec<_>>()),
            Err(e) => {
                // The range checks still apply; keep what was known before.
                tracing::warn!(error = %e, "cannot list this host's interface addresses");
                cache.as_ref().map(|(_, l)| l.clone()).unwrap_or_default()
            }
        };
        *cache = Some((Instant::now(), list.clone()));
        list
    }
}

/// True when `ip` (or the IPv4 address an IPv4-mapped `ip` carries) is one of this host's
/// own interface addresses: a public address of the host itself reaches services that
/// listen on all interfaces.
pub fn is_own_address(ip: IpAddr) -> bool {
    let canonical = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    OWN_ADDRESSES
        .current()
        .iter()
        .any(|own| *own == ip || *own == canonical)
}

/// Hosts (and optionally ports) allowed despite the guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<(String, Option<u16>)>);

impl AllowList {
    /// Entries are `host`, `host:port`, `[v6]` or `[v6]:port`.
    pub fn new(entries: &[String]) -> Self {
        let parsed = entries
            .iter()
            .map(|e| {
                let e = e.trim().to_ascii_lowercase();
                if let Some(rest) = e.strip_prefix('[')
                    && let Some((host, tail)) = rest.split_once(']')
                {
                    let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
                    return (host.to_owned(), port);
                }
                match e.rsplit_once(':') {
                    // A bare IPv6 address has several colons and no port.
                    Some((host, port)) if !host.contains(':') => match port.parse() {
                        Ok(p) => (host.to_owned(), Some(p)),
                        Err(_) => (e.clone(), None),
                    },
                    _ => (e.clone(), None),
                }
            })
            .collect();
        Self(parsed)
    }

    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = url.port_or_known_default();
        self.0
            .iter()
            .any(|(h, p)| *h == host && (p.is_none() || *p == port))
    }
}

/// The resolver error that marks a refused name (found again in reqwest's error chain). Its
/// message is the generic [`REFUSED_MESSAGE`]; `host` and `addr` are for the server log only.
#[derive(Debug, thiserror::Error)]
#[error("the target address is not allowed")]
pub struct Refused {
    pub host: String,
    pub addr: IpAddr,
}

/// Resolves names with the system resolver and refuses any name with a forbidden address.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| ip_is_forbidden(a.ip())) {
                tracing::warn!(host = %host, addr = %bad.ip(), "outbound request refused: the name resolves to a forbidden address");
                return Err(Box::new(Refused {
                    host,
                    addr: bad.ip(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let it: Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The target (or a redirect hop) is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is malformed (URL, scheme, header).
    #[error("{0}")]
    Invalid(String),
    #[error("timed out")]
    Timeout,
    #[error("response body is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// Connection or protocol failure (retryable).
    #[error("request failed: {0}")]
    Transport(String),
}

pub struct HttpRequest {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The URL that answered (after redirects).
    pub url: Url,
}

/// The guarded outbound client.
pub struct HttpClient {
    guarded: reqwest::Client,
    allowed: reqwest::Client,
    allow: AllowList,
    max_response_bytes: u64,
    max_redirects: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("allow", &self.allow)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would make the connection somewhere we did not check.
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(8)
        .user_agent(concat!("GatheRing/", env!("CARGO_PKG_VERSION")))
}

impl HttpClient {
    pub fn new(
        allowed_hosts: &[String],
        max_response_bytes: u64,
        max_redirects: usize,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            guarded: builder().dns_resolver(Arc::new(GuardedResolver)).build()?,
            allowed: builder().build()?,
            allow: AllowList::new(allowed_hosts),
            max_response_bytes,
            max_redirects,
        })
    }

    /// Checks the scheme and, for IP literals, the address; picks the client for the URL.
    fn client_for(&self, url: &Url) -> Result<&reqwest::Client, HttpError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::Invalid(format!(
                "scheme `{}` is not allowed (http or https only)",
                url.scheme()
            )));
        }
        if self.allow.allows(url) {
            return Ok(&self.allowed);
        }
        let ip = match url.host() {
            None => return Err(HttpError::Invalid("URL has no host".to_owned())),
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(Host::Domain(_)) => None,
        };
        if let Some(ip) = ip
            && ip_is_forbidden(ip)
        {
            tracing::warn!(addr = %ip, "outbound request refused: forbidden address literal");
            return Err(HttpError::Forbidden(REFUSED_MESSAGE.to_owned()));
        }
        Ok(&self.guarded)
    }

    /// Sends the request, following redirects by hand, and reads the body up to the limit.
    /// The whole exchange (every hop and the body) must finish within `req.timeout`.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let timeout = req.timeout;
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    async fn exchange(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let HttpRequest {
            mut method,
            mut url,
            mut headers,
            mut body,
            timeout,
        } = req;
        let mut hop = 0;
        loop {
            let client = self.client_for(&url)?;
            let mut rb = client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(timeout);
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            let resp = rb.send().await.map_err(classify)?;
            let status = resp.status();
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if status.is_redirection()
                && let Some(location) = location
            {
                if hop >= self.max_redirects {
                    return Err(HttpError::TooManyRedirects(self.max_redirects));
                }
                hop += 1;
                let next = url
                    .join(&location)
                    .map_err(|e| HttpError::Transport(format!("bad redirect location: {e}")))?;
                let switch_to_get = status == StatusCode::SEE_OTHER && method != Method::HEAD
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST);
                if switch_to_get {
                    method = Method::GET;
                    body = None;
                    headers.remove(header::CONTENT_TYPE);
                    headers.remove(header::CONTENT_LENGTH);
                }
                if next.origin() != url.origin() {
                    // Credentials meant for one origin are not handed to another.
                    headers.remove(header::AUTHORIZATION);
                    headers.remove(header::COOKIE);
                    headers.remove(header::PROXY_AUTHORIZATION);
                }
                tracing::debug!(from = %url, to = %next, "following redirect");
                url = next;
                continue;
            }
            let headers = resp.headers().clone();
            let body = read_bounded(resp, self.max_response_bytes).await?;
            return Ok(HttpResponse {
                status,
                headers,
                body,
                url,
            });
        }
    }
}

async fn read_bounded(mut resp: reqwest::Response, max: u64) -> Result<Bytes, HttpError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(HttpError::TooLarge { max });
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(HttpError::TooLarge { max });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Maps a reqwest failure, recognising our resolver's refusal in the error chain.
fn classify(e: reqwest::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.downcast_ref::<Refused>().is_some() {
            return HttpError::Forbidden(REFUSED_MESSAGE.to_owned());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return HttpError::Timeout;
    }
    if e.is_builder() {
        return HttpError::Invalid(e.to_string());
    }
    // Name resolution failures, refused connections, resets, TLS and protocol errors.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    HttpError::Transport(msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        ip_is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn loopback_private_link_local_and_special_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "127.255.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            // Documentation ranges.
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.255",
            "2001:db8::1",
            // IPv4-mapped / translated forms of forbidden IPv4, and local-use NAT64.
            "::ffff:192.0.2.1",
            "::ffff:203.0.113.9",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::8.8.8.8",
            "2001::1",
            "100::1",
        ] {
            assert!(forbidden(ip), "{ip} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
            "64:ff9b::808:808",
            "192.0.3.1",
            "203.0.114.1",
        ] {
            assert!(!forbidden(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn every_interface_address_of_this_host_is_forbidden() {
        let own: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .map(|i| i.ip())
            .collect();
        assert!(!own.is_empty());
        for ip in own {
            assert!(is_own_address(ip), "{ip} is this host's own");
            assert!(ip_is_forbidden(ip), "{ip} must be forbidden");
            if let IpAddr::V4(v4) = ip {
                assert!(ip_is_forbidden(IpAddr::V6(v4.to_ipv6_mapped())));
            }
        }
        assert!(!is_own_address("8.8.8.8".parse().unwrap()));
    }

    #[tokio::test]
    async fn refusals_say_nothing_about_what_a_name_resolves_to() {
        let client = HttpClient::new(&[], 1024, 0).unwrap();
        for url in [
            "http://localhost:9/x",
            "http://127.0.0.1:9/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            let err = client
                .send(HttpRequest {
                    method: Method::GET,
                    url: Url::parse(url).unwrap(),
                    headers: HeaderMap::new(),
                    body: None,
                    timeout: Duration::from_secs(5),
                })
                .await
                .unwrap_err();
            let HttpError::Forbidden(m) = err else {
                panic!("{url}: expected Forbidden, got {err:?}");
            };
            assert_eq!(m, REFUSED_MESSAGE, "{url}");
        }
    }

    #[test]
    fn allow_list_matches_host_with_or_without_port() {
        let list = AllowList::new(&[
            "LocalHost".to_owned(),
            "127.0.0.1:8080".to_owned(),
            "[::1]:9000".to_owned(),
            "::2".to_owned(),
        ]);
        let ok = |u: &str| list.allows(&Url::parse(u).unwrap());
        assert!(ok("http://localhost/x"));
        assert!(ok("http://localhost:1234/x"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(!ok("http://127.0.0.1:8081/"));
        assert!(!ok("http://127.0.0.1/"));
        assert!(ok("http://[::1]:9000/"));
        assert!(!ok("http://[::1]:9001/"));
        assert!(ok("http://[::2]:1/"));
        assert!(!ok("http://example.com/"));
    }
}
