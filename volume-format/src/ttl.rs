//! Time to live as SeaweedFS stores it: two bytes, a count and a unit.

/// Stored TTL units (`needle.Empty` .. `needle.Year` in SeaweedFS).
pub mod unit {
    /// No TTL.
    pub const EMPTY: u8 = 0;
    /// Minutes.
    pub const MINUTE: u8 = 1;
    /// Hours.
    pub const HOUR: u8 = 2;
    /// Days.
    pub const DAY: u8 = 3;
    /// Weeks.
    pub const WEEK: u8 = 4;
    /// Months (30 days).
    pub const MONTH: u8 = 5;
    /// Years (365 days).
    pub const YEAR: u8 = 6;
}

/// Stored size of a TTL.
pub const TTL_SIZE_BYTES: usize = 2;

/// A TTL as stored: SeaweedFS keeps unknown units as they are, so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ttl {
    /// How many units.
    pub count: u8,
    /// One of [`mod@unit`]; other values are kept but mean no TTL.
    pub unit: u8,
}

impl Ttl {
    /// No TTL.
    pub const EMPTY: Ttl = Ttl { count: 0, unit: 0 };

    /// Read the two stored bytes.
    pub const fn from_bytes(bytes: [u8; TTL_SIZE_BYTES]) -> Ttl {
        Ttl { count: bytes[0], unit: bytes[1] }
    }

    /// The two stored bytes.
    pub const fn to_bytes(self) -> [u8; TTL_SIZE_BYTES] {
        [self.count, self.unit]
    }

    /// Whether this TTL expires anything (a count and a known unit).
    pub const fn is_set(self) -> bool {
        self.count != 0 && self.unit >= unit::MINUTE && self.unit <= unit::YEAR
    }

    /// The TTL in seconds, 0 for none or an unknown unit.
    pub const fn seconds(self) -> u64 {
        let unit_seconds: u64 = match self.unit {
            unit::MINUTE => 60,
            unit::HOUR => 3_600,
            unit::DAY => 86_400,
            unit::WEEK => 7 * 86_400,
            unit::MONTH => 30 * 86_400,
            unit::YEAR => 365 * 86_400,
            _ => 0,
        };
        self.count as u64 * unit_seconds
    }
}

impl std::fmt::Display for Ttl {
    /// SeaweedFS's readable form (`3m`, `4h`, `5d`, `6w`, `7M`, `8y`), empty for none.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let suffix = match self.unit {
            unit::MINUTE => "m",
            unit::HOUR => "h",
            unit::DAY => "d",
            unit::WEEK => "w",
            unit::MONTH => "M",
            unit::YEAR => "y",
            _ => return Ok(()),
        };
        if self.count == 0 {
            return Ok(());
        }
        write!(f, "{}{}", self.count, suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_display() {
        let ttl = Ttl::from_bytes([5, unit::DAY]);
        assert_eq!(ttl.to_bytes(), [5, unit::DAY]);
        assert_eq!(ttl.to_string(), "5d");
        assert_eq!(ttl.seconds(), 5 * 86_400);
        assert!(ttl.is_set());
        assert_eq!(Ttl::EMPTY.to_string(), "");
        assert!(!Ttl::from_bytes([3, 9]).is_set());
    }
}
