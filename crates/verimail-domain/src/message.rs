//! The queue message: a versioned boundary between intake and worker.
//! It carries ids only: the code stays sealed in Postgres.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchMessage {
    pub v: u32,
    pub dispatch_id: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a dispatch message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown message version {0}")]
    UnknownVersion(u32),
}

impl DispatchMessage {
    pub const VERSION: u32 = 1;

    pub fn new(dispatch_id: Uuid) -> Self {
        Self {
            v: Self::VERSION,
            dispatch_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising two plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_slice(bytes)?;
        if v != Self::VERSION {
            return Err(DecodeError::UnknownVersion(v));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"v":1,"dispatch_id":"0190f5a2-7c4e-7d2a-9b1e-3f4a5b6c7d8e"}"#;

    #[test]
    fn the_v1_wire_format_is_pinned() {
        let id = Uuid::parse_str("0190f5a2-7c4e-7d2a-9b1e-3f4a5b6c7d8e").expect("uuid");
        assert_eq!(
            String::from_utf8(DispatchMessage::new(id).encode()).expect("utf8"),
            GOLDEN
        );
        assert_eq!(
            DispatchMessage::decode(GOLDEN.as_bytes())
                .expect("decodes")
                .dispatch_id,
            id
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let v2 = r#"{"v":2,"dispatch_id":"0190f5a2-7c4e-7d2a-9b1e-3f4a5b6c7d8e"}"#;
        assert!(matches!(
            DispatchMessage::decode(v2.as_bytes()),
            Err(DecodeError::UnknownVersion(2))
        ));
        assert!(matches!(
            DispatchMessage::decode(b"garbage"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(DispatchMessage::decode(br#"{"v":1}"#).is_err());
    }
}
