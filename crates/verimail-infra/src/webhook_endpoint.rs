//! Where a webhook endpoint's host leads, checked when it is set and again
//! before each delivery (a name may be re-pointed at an internal address
//! after it was set: DNS rebinding). Every address the name resolves to
//! must be allowed, not just one.

use std::net::{IpAddr, SocketAddr};

use verimail_domain::webhook::{EndpointRefusal, refused_address};

/// The addresses of `url`'s host, when none of them is refused (or all are
/// allowed with `allow_insecure`).
pub async fn resolve_allowed(
    url: &url::Url,
    allow_insecure: bool,
) -> Result<Vec<SocketAddr>, EndpointRefusal> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        _ => return resolve_host_allowed(host, port, allow_insecure).await,
    };
    checked(host, addresses, allow_insecure)
}

/// The addresses a host name resolves to now, when none of them is refused:
/// what a delivery's connection may go to (the HTTP client resolves through
/// this, so no name re-pointed after the check reaches a refused address).
pub async fn resolve_host_allowed(
    host: &str,
    port: u16,
    allow_insecure: bool,
) -> Result<Vec<SocketAddr>, EndpointRefusal> {
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| EndpointRefusal::Unresolved(host.to_owned()))?
        .collect();
    checked(host, addresses, allow_insecure)
}

fn checked(
    host: &str,
    addresses: Vec<SocketAddr>,
    allow_insecure: bool,
) -> Result<Vec<SocketAddr>, EndpointRefusal> {
    if addresses.is_empty() {
        return Err(EndpointRefusal::Unresolved(host.to_owned()));
    }
    if !allow_insecure {
        for address in &addresses {
            if let Some(kind) = refused_address(address.ip()) {
                return Err(EndpointRefusal::Address {
                    host: host.to_owned(),
                    address: address.ip(),
                    kind,
                });
            }
        }
    }
    Ok(addresses)
}
