//! The dispatch state machine.
//!
//! ```text
//! queued ──claim──▶ sending ──▶ sent ──check──▶ verified
//!   │  ▲              │  ├────▶ failed      (5xx, attempts exhausted, hand-off failed)
//!   │  └── retrying ◀─┘  └────▶ expired     (code expired before it could be sent)
//!   └──▶ superseded (a newer code for the same recipient and partner)
//! ```
//! Every transition is a conditional `UPDATE … WHERE status IN (…)`, so a
//! duplicate message or a second worker cannot move a dispatch twice.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DispatchStatus {
    Queued,
    Sending,
    Retrying,
    Sent,
    Failed,
    Expired,
    Superseded,
    Verified,
}

impl DispatchStatus {
    pub const ALL: [Self; 8] = [
        Self::Queued,
        Self::Sending,
        Self::Retrying,
        Self::Sent,
        Self::Failed,
        Self::Expired,
        Self::Superseded,
        Self::Verified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
            Self::Verified => "verified",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// No worker will touch the dispatch again (its mail is out or never will be).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Sending | Self::Retrying)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_three_states_are_open() {
        for status in DispatchStatus::ALL {
            assert_eq!(DispatchStatus::parse(status.as_str()), Some(status));
        }
        let open: Vec<_> = DispatchStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(
            open,
            [
                DispatchStatus::Queued,
                DispatchStatus::Sending,
                DispatchStatus::Retrying
            ]
        );
    }
}
