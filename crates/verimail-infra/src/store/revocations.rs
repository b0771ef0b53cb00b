//! The words of `NOTIFY verimail_revocations`: the stores of tokens, access
//! keys and partners announce a revocation in the same statement as the
//! change, and every intake listens (its `auth::revocation`) and drops the
//! named credential from its cache.

use uuid::Uuid;

/// The channel revocations are announced on.
pub const CHANNEL: &str = "verimail_revocations";

/// What a notification names.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// A token, by its digest (hex).
    Token(Vec<u8>),
    AccessKey(String),
    /// Every credential of a partner (suspended or reactivated).
    Partner,
}

impl Revoked {
    pub fn payload_of_token(digest: &[u8]) -> String {
        format!("token:{}", hex::encode(digest))
    }

    pub fn payload_of_access_key(access_key: &str) -> String {
        format!("key:{access_key}")
    }

    pub fn payload_of_partner(partner_id: Uuid) -> String {
        format!("partner:{partner_id}")
    }

    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, value) = payload.split_once(':')?;
        match kind {
            "token" => hex::decode(value).ok().map(Self::Token),
            "key" => Some(Self::AccessKey(value.to_owned())),
            "partner" => Some(Self::Partner),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let digest = vec![0xab, 0x01];
        assert_eq!(
            Revoked::parse(&Revoked::payload_of_token(&digest)),
            Some(Revoked::Token(digest))
        );
        assert_eq!(
            Revoked::parse(&Revoked::payload_of_access_key("AK1")),
            Some(Revoked::AccessKey("AK1".into()))
        );
        assert_eq!(
            Revoked::parse(&Revoked::payload_of_partner(uuid::Uuid::nil())),
            Some(Revoked::Partner)
        );
        assert_eq!(Revoked::parse("nonsense"), None);
    }
}
