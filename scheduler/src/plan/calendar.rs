//! The planned month: `YYYY-MM`, weekdays, holidays. Pure Gregorian arithmetic.

use crate::{Error, Result};

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Month {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month 1..=12.
    pub month: u32,
}

impl Month {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Month> {
        let bad = || Error::BadMonth(s.to_string());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 1900 {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    /// Number of days.
    pub fn days(&self) -> u32 {
        match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ => {
                let leap = (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0;
                if leap {
                    29
                } else {
                    28
                }
            }
        }
    }

    /// Weekday of day `d` (1-based), 0 = Monday .. 6 = Sunday.
    pub fn weekday(&self, d: u32) -> u8 {
        // Sakamoto's algorithm (0 = Sunday).
        const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
        let mut y = self.year;
        if self.month < 3 {
            y -= 1;
        }
        let w = (y + y / 4 - y / 100 + y / 400 + T[(self.month - 1) as usize] + d as i32).rem_euclid(7);
        ((w + 6) % 7) as u8
    }

    /// `YYYY-MM-DD` of day `d`.
    pub fn date(&self, d: u32) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, d)
    }

    /// Parses `YYYY-MM-DD` inside this month, returning the day.
    pub fn parse_date(&self, s: &str) -> Result<u32> {
        let bad = || Error::BadDate(s.to_string());
        let s = s.trim();
        let prefix = format!("{:04}-{:02}-", self.year, self.month);
        let d = s.strip_prefix(&prefix).ok_or_else(bad)?;
        if d.len() != 2 {
            return Err(bad());
        }
        let d: u32 = d.parse().map_err(|_| bad())?;
        if d == 0 || d > self.days() {
            return Err(bad());
        }
        Ok(d)
    }

    /// Parses a comma-separated holiday list (dates outside this month are an error).
    pub fn parse_holidays(&self, s: &str) -> Result<Vec<u32>> {
        let mut v: Vec<u32> =
            s.split(',').filter(|t| !t.trim().is_empty()).map(|t| self.parse_date(t)).collect::<Result<_>>()?;
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// `YYYY-MM`.
    pub fn to_text(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

/// Minimum days between consecutive visits (rule 2): floor(D / (2 v)).
pub fn min_gap(days_in_month: u32, visits: u32) -> u32 {
    days_in_month / (2 * visits.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_and_lengths() {
        let m = Month::parse("2026-12").expect("valid");
        assert_eq!(m.days(), 31);
        assert_eq!(m.weekday(1), 1); // 2026-12-01 is a Tuesday
        assert_eq!(m.weekday(25), 4); // Friday
        assert_eq!(Month::parse("2024-02").map(|m| m.days()).ok(), Some(29));
        assert_eq!(Month::parse("2100-02").map(|m| m.days()).ok(), Some(28));
        assert!(Month::parse("2026-13").is_err());
        assert_eq!(m.parse_holidays("2026-12-25, 2026-12-31").ok(), Some(vec![25, 31]));
        assert!(m.parse_holidays("2027-01-01").is_err());
        assert_eq!(min_gap(31, 4), 3);
        assert_eq!(min_gap(30, 2), 7);
    }
}
