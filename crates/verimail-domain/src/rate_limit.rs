//! The per-recipient send limit: sends per rolling hour and per rolling day.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_hour: u32,
    pub per_day: u32,
}

impl RateLimit {
    pub const DEFAULT: Self = Self {
        per_hour: 15,
        per_day: 60,
    };

    /// `"15/60"`: sends per recipient per rolling hour / per rolling day.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (hour, day) = s.split_once('/').ok_or("expected HOUR/DAY, like 15/60")?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| "expected HOUR/DAY, like 15/60".to_owned())
        };
        let limit = Self {
            per_hour: parse(hour)?,
            per_day: parse(day)?,
        };
        if limit.per_hour == 0 || limit.per_day < limit.per_hour {
            return Err("need 0 < HOUR <= DAY".into());
        }
        Ok(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_refuse_nonsense() {
        assert_eq!(RateLimit::parse("15/60"), Ok(RateLimit::DEFAULT));
        for bad in ["15", "a/b", "0/10", "20/10", "-1/5"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
