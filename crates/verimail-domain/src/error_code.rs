//! The one table of CBC error codes: code, HTTP status and client message.

/// Every error the API can answer with (README, "HTTP API").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ParameterError,
    NotPartner,
    CodeNotRecorded,
    HandOffFailed,
    InvalidEmail,
    RateLimited,
    CodeExpired,
    CodeVoid,
    CodeWrong,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Internal,
    Busy,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        Self::ParameterError,
        Self::NotPartner,
        Self::CodeNotRecorded,
        Self::HandOffFailed,
        Self::InvalidEmail,
        Self::RateLimited,
        Self::CodeExpired,
        Self::CodeVoid,
        Self::CodeWrong,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Internal,
        Self::Busy,
    ];

    pub fn code(self) -> &'static str {
        self.row().0
    }

    pub fn http_status(self) -> u16 {
        self.row().1
    }

    /// The default message; handlers may give a more precise one for 4xx.
    pub fn message(self) -> &'static str {
        self.row().2
    }

    fn row(self) -> (&'static str, u16, &'static str) {
        match self {
            Self::ParameterError => ("CBC.0100", 400, "Parameter error."),
            Self::NotPartner => ("CBC.99000035", 400, "The account is not a partner."),
            Self::CodeNotRecorded => (
                "CBC.99004002",
                400,
                "The verification code could not be generated. Try again later.",
            ),
            Self::HandOffFailed => (
                "CBC.99004003",
                400,
                "The verification code could not be sent. Try again later.",
            ),
            Self::InvalidEmail => (
                "CBC.99004004",
                400,
                "The email address is empty or invalid.",
            ),
            Self::RateLimited => (
                "CBC.99004015",
                400,
                "Too many verification codes were sent to this email address. Try again later.",
            ),
            Self::CodeExpired => (
                "CBC.99004008",
                400,
                "The verification code has expired or has already been used.",
            ),
            Self::CodeVoid => (
                "CBC.99004009",
                400,
                "The verification code was entered wrongly too many times. Request a new one.",
            ),
            Self::CodeWrong => ("CBC.99004010", 400, "The verification code is incorrect."),
            Self::Unauthenticated => ("CBC.0154", 401, "Authentication failed."),
            Self::Forbidden => ("CBC.0151", 403, "Access denied."),
            // An unknown dispatch is answered as a parameter error, as Huawei does.
            Self::NotFound => ("CBC.0100", 404, "The dispatch does not exist."),
            Self::MethodNotAllowed => ("CBC.0100", 405, "Method not allowed."),
            Self::Internal => ("CBC.0999", 500, "Internal error. Try again later."),
            // Load shed (too many codes waiting for a worker, or too many
            // connections): the request did nothing; retry after a pause.
            Self::Busy => ("CBC.0999", 503, "The service is busy. Try again later."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_documented_status() {
        let table: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.code(), c.http_status()))
            .collect();
        assert_eq!(
            table,
            [
                ("CBC.0100", 400),
                ("CBC.99000035", 400),
                ("CBC.99004002", 400),
                ("CBC.99004003", 400),
                ("CBC.99004004", 400),
                ("CBC.99004015", 400),
                ("CBC.99004008", 400),
                ("CBC.99004009", 400),
                ("CBC.99004010", 400),
                ("CBC.0154", 401),
                ("CBC.0151", 403),
                ("CBC.0100", 404),
                ("CBC.0100", 405),
                ("CBC.0999", 500),
                ("CBC.0999", 503),
            ]
        );
    }

    #[test]
    fn messages_fit_the_seed_limit() {
        for code in ErrorCode::ALL {
            assert!(code.message().len() <= 1024 && code.code().len() <= 16);
        }
    }
}
