//! What a partner account is: its kind (only partners may call the API)
//! and whether it is suspended. Stored as text, kept to these spellings by
//! CHECK constraints.

/// Only partners may call the API; a customer account authenticates and is
/// refused with CBC.99000035.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Partner,
    Customer,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partner => "partner",
            Self::Customer => "customer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Partner, Self::Customer]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A suspended partner authenticates and is refused with CBC.0151.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Suspended,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Suspended]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn suspended_if(suspended: bool) -> Self {
        if suspended {
            Self::Suspended
        } else {
            Self::Active
        }
    }
}
