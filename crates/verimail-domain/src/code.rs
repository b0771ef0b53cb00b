//! Verification codes: generated from a CSPRNG, never printed.

use rand::Rng;

/// A plain verification code. `Debug` hides it; the only way to read it is
/// `expose`, used to seal it and to render the mail.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    pub const DEFAULT_LEN: usize = 6;
    pub const LEN_RANGE: std::ops::RangeInclusive<usize> = 4..=10;

    /// `len` decimal digits from the thread-local CSPRNG (ChaCha, seeded by the OS).
    pub fn generate(len: usize) -> Self {
        let mut rng = rand::thread_rng();
        Self(
            (0..len)
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect(),
        )
    }

    /// Only an opened sealed copy becomes a `Code` again.
    pub(crate) fn from_plain(code: String) -> Self {
        Self(code)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_asked_length_in_digits() {
        for len in Code::LEN_RANGE {
            let code = Code::generate(len);
            assert_eq!(code.expose().len(), len);
            assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn codes_vary_and_debug_hides_them() {
        let codes: std::collections::HashSet<_> = (0..200)
            .map(|_| Code::generate(6).expose().to_owned())
            .collect();
        assert!(codes.len() > 190, "a CSPRNG repeats a 6-digit code rarely");
        let code = Code::generate(6);
        assert!(!format!("{code:?}").contains(code.expose()));
    }
}
