//! The dispatch state machine: the one place state names and state sets are
//! spelled. SQL receives them as bound parameters (`status = ANY($n)`), so
//! adding or renaming a state touches this file and a migration only.
//!
//! ```text
//! queued ──claim──▶ sending ──▶ sent ──check──▶ verified
//!   │  ▲              │  ├────▶ failed      (5xx, attempts exhausted, hand-off failed)
//!   │  └── retrying ◀─┘  └────▶ expired     (code expired before it could be sent)
//!   └──▶ superseded (a newer code for the same recipient and partner)
//! ```
//! Every transition is a conditional `UPDATE … WHERE status = ANY(…)`, so a
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

    /// A worker may still act on these: exactly the dispatches that hold a
    /// sealed code (every move out of this set wipes it), which is what the
    /// sweeper's partial index `dispatches_unsent` selects
    /// (migrations/0010, 0012; `tests/api/schema.rs` checks the correspondence).
    pub const OPEN: [Self; 3] = [Self::Queued, Self::Sending, Self::Retrying];

    /// Waiting for a worker: claimable now, and voided by a newer code.
    pub const WAITING: [Self; 2] = [Self::Queued, Self::Retrying];

    /// The code may still be entered at `/check` (if it has not expired).
    pub const CHECKABLE: [Self; 4] = [Self::Queued, Self::Sending, Self::Retrying, Self::Sent];

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
        !Self::OPEN.contains(&self)
    }

    pub fn is_checkable(self) -> bool {
        Self::CHECKABLE.contains(&self)
    }
}

impl std::fmt::Display for DispatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for DispatchStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Stored as `text` (checked by a CHECK constraint), so the SQL type is
/// text's. Behind the `sqlx` feature so the domain builds without any I/O.
#[cfg(feature = "sqlx")]
mod sql {
    use super::DispatchStatus;
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type};

    impl Type<Postgres> for DispatchStatus {
        fn type_info() -> PgTypeInfo {
            <&str as Type<Postgres>>::type_info()
        }

        fn compatible(ty: &PgTypeInfo) -> bool {
            <&str as Type<Postgres>>::compatible(ty)
        }
    }

    impl PgHasArrayType for DispatchStatus {
        fn array_type_info() -> PgTypeInfo {
            <&str as PgHasArrayType>::array_type_info()
        }

        fn array_compatible(ty: &PgTypeInfo) -> bool {
            <&str as PgHasArrayType>::array_compatible(ty)
        }
    }

    impl Encode<'_, Postgres> for DispatchStatus {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <&str as Encode<Postgres>>::encode(self.as_str(), buf)
        }
    }

    impl<'r> Decode<'r, Postgres> for DispatchStatus {
        fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
            let name = <&str as Decode<Postgres>>::decode(value)?;
            Self::parse(name).ok_or_else(|| format!("unknown dispatch status {name:?}").into())
        }
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
        assert_eq!(open, DispatchStatus::OPEN);
        assert_eq!(DispatchStatus::parse("QUEUED"), None);
    }

    #[test]
    fn the_named_sets_nest_as_the_machine_says() {
        use DispatchStatus::*;
        for waiting in DispatchStatus::WAITING {
            assert!(DispatchStatus::OPEN.contains(&waiting));
        }
        for open in DispatchStatus::OPEN {
            assert!(
                open.is_checkable(),
                "{open}: a code on its way can be checked"
            );
        }
        for status in [Failed, Expired, Superseded, Verified] {
            assert!(!status.is_checkable(), "{status}");
        }
        assert!(Sent.is_checkable());
    }
}
