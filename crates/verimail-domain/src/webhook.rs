//! A partner's webhook endpoint (issue 24): its signing secret, the
//! signature every delivery carries (Standard Webhooks v1, signed by the
//! `standardwebhooks` crate, the reference implementation's), and which
//! endpoint addresses are refused: no delivery may reach this side's own
//! network (SSRF).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use rand::RngCore;

/// Standard Webhooks' secret prefix.
const PREFIX: &str = "whsec_";
/// 24 random bytes: 192 bits, as the reference libraries generate.
const SECRET_BYTES: usize = 24;

/// A signing secret (`whsec_<base64>`). Its `Debug` is redacted; only
/// `expose` shows it, once, to the operator who set the endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `whsec_<base64>`, as partners paste it into their verifier.
    pub fn expose(&self) -> String {
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The `webhook-signature` header's value: one `v1,<base64>` per secret,
/// space-separated (during a rotation both the new and the previous secret
/// sign, so a receiver that still has the previous one keeps verifying).
pub fn signature(secrets: &[&WebhookSecret], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .filter_map(|secret| {
            standardwebhooks::Webhook::from_bytes(secret.0.clone())
                .ok()?
                .sign(id, timestamp, body.as_bytes())
                .ok()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointRefusal {
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("must be an https:// URL (http:// only with VERIMAIL_WEBHOOK_ALLOW_INSECURE=true)")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("must not carry a #fragment")]
    Fragment,
    #[error(
        "{host} is {kind} ({address}); deliveries must not reach this side's own network \
         (allowed only with VERIMAIL_WEBHOOK_ALLOW_INSECURE=true)"
    )]
    Address {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
    #[error("{0} did not resolve to any address")]
    Unresolved(String),
}

/// An endpoint URL as given, checked for its form: `https` (or `http` when
/// insecure endpoints are allowed), no credentials, no fragment. The host
/// is checked separately, at set time and again at each delivery, against
/// what it resolves to then ([`refused_address`]).
pub fn parse_endpoint(raw: &str, allow_insecure: bool) -> Result<url::Url, EndpointRefusal> {
    let url = url::Url::parse(raw.trim()).map_err(|e| EndpointRefusal::NotAUrl(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        _ => return Err(EndpointRefusal::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointRefusal::Credentials);
    }
    if url.fragment().is_some() {
        return Err(EndpointRefusal::Fragment);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(EndpointRefusal::NotAUrl("no host".into()));
    }
    Ok(url)
}

/// What kind of address this side's own network (or a cloud's metadata
/// service) answers on, if `address` is one: such endpoints are refused.
pub fn refused_address(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        "a cloud metadata address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_private() {
        "a private address"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (carrier-grade NAT) address"
    } else if ip.is_unspecified() || a == 0 {
        "an unspecified address"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "not a unicast address"
    } else {
        return None;
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // fd00:ec2::254, the IPv6 address of EC2's instance metadata service.
    const EC2_METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip == EC2_METADATA {
        "a cloud metadata address"
    } else if ip.is_unicast_link_local() {
        "a link-local address"
    } else if ip.is_unique_local() {
        "a private address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_multicast() {
        "not a unicast address"
    } else {
        return None;
    })
}

/// When a failed delivery is tried again, and when it is given up
/// (`VERIMAIL_WEBHOOK_RETRY_SCHEDULE`: the waits after each failed attempt,
/// the last one repeating, for up to three days from the event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySchedule {
    waits: Vec<std::time::Duration>,
    give_up_after: std::time::Duration,
}

impl DeliverySchedule {
    /// How long an event is retried for.
    pub const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(3 * 24 * 3600);

    /// `None` for an empty list.
    pub fn new(waits: Vec<std::time::Duration>) -> Option<Self> {
        (!waits.is_empty()).then_some(Self {
            waits,
            give_up_after: Self::GIVE_UP_AFTER,
        })
    }

    /// The wait before the next attempt once `attempt` (1 for the first)
    /// failed, for an event `age` old; `None` once that would be past the
    /// retry window: the event is given up.
    pub fn next(&self, attempt: u32, age: std::time::Duration) -> Option<std::time::Duration> {
        let index = (attempt.max(1) as usize - 1).min(self.waits.len() - 1);
        let wait = self.waits[index];
        (age + wait <= self.give_up_after).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_reads_as_standard_webhooks_secrets_do() {
        let secret = WebhookSecret::generate();
        let shown = secret.expose();
        assert!(shown.starts_with("whsec_"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&shown["whsec_".len()..])
            .expect("base64");
        assert_eq!(decoded, secret.as_bytes());
        assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
        assert_ne!(WebhookSecret::generate(), secret);
    }

    #[test]
    fn the_signature_is_the_reference_one_and_lists_every_secret() {
        // The reference implementation's own test vector.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        let secret = WebhookSecret::from_bytes(key);
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[&secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let other = WebhookSecret::generate();
        let both = signature(
            &[&secret, &other],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(parts[1].starts_with("v1,"));
    }

    #[test]
    fn only_https_urls_without_credentials_are_endpoints() {
        assert!(parse_endpoint("https://hooks.example.com/verimail", false).is_ok());
        assert_eq!(
            parse_endpoint("http://hooks.example.com/", false),
            Err(EndpointRefusal::NotHttps)
        );
        assert!(parse_endpoint("http://hooks.example.com/", true).is_ok());
        assert_eq!(
            parse_endpoint("ftp://hooks.example.com/", true),
            Err(EndpointRefusal::NotHttps)
        );
        assert_eq!(
            parse_endpoint("https://u:p@hooks.example.com/", false),
            Err(EndpointRefusal::Credentials)
        );
        assert_eq!(
            parse_endpoint("https://hooks.example.com/#x", false),
            Err(EndpointRefusal::Fragment)
        );
        assert!(matches!(
            parse_endpoint("hooks.example.com", false),
            Err(EndpointRefusal::NotAUrl(_))
        ));
    }

    #[test]
    fn addresses_of_this_sides_network_are_refused() {
        for (address, kind) in [
            ("127.0.0.1", "a loopback address"),
            ("::1", "a loopback address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("10.0.0.1", "a private address"),
            ("172.16.5.4", "a private address"),
            ("192.168.1.1", "a private address"),
            ("fd12::1", "a private address"),
            ("169.254.169.254", "a cloud metadata address"),
            ("fd00:ec2::254", "a cloud metadata address"),
            ("169.254.10.1", "a link-local address"),
            ("fe80::1", "a link-local address"),
            ("100.64.0.1", "a shared (carrier-grade NAT) address"),
            ("0.0.0.0", "an unspecified address"),
            ("::", "an unspecified address"),
            ("224.0.0.1", "not a unicast address"),
            ("255.255.255.255", "not a unicast address"),
        ] {
            let ip: IpAddr = address.parse().expect("an address");
            assert_eq!(refused_address(ip), Some(kind), "{address}");
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert_eq!(refused_address(public.parse().expect("an address")), None);
        }
    }

    #[test]
    fn the_last_wait_repeats_until_three_days_are_over() {
        use std::time::Duration;
        let secs = Duration::from_secs;
        let schedule = DeliverySchedule::new(vec![secs(5), secs(30), secs(3600)]).unwrap();
        assert_eq!(schedule.next(1, secs(0)), Some(secs(5)));
        assert_eq!(schedule.next(2, secs(5)), Some(secs(30)));
        assert_eq!(schedule.next(3, secs(40)), Some(secs(3600)));
        assert_eq!(schedule.next(50, secs(3600)), Some(secs(3600)));
        let window = DeliverySchedule::GIVE_UP_AFTER;
        assert_eq!(schedule.next(9, window - secs(3600)), Some(secs(3600)));
        assert_eq!(schedule.next(9, window - secs(3599)), None);
        assert!(DeliverySchedule::new(Vec::new()).is_none());
    }
}
