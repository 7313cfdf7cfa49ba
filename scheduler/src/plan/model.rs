//! Validated domain types of the monthly planner: ids, weekdays, windows,
//! elders, caregivers. Times are integer seconds after midnight (style rule 9).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Seconds after midnight.
pub type Secs = i64;

/// An elder's id as written in `elders.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ElderId(pub String);

/// A caregiver's id as written in `caregivers.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CaregiverId(pub String);

impl fmt::Display for ElderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for CaregiverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A WGS84 point in degrees. Invariant: lat in [-90, 90], lon in [-180, 180].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

/// Travel mode of a caregiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On foot.
    Walk,
    /// Bicycle or e-bike.
    Bike,
    /// Car.
    Car,
}

impl Mode {
    /// Index into per-mode tables.
    pub fn index(self) -> usize {
        match self {
            Mode::Walk => 0,
            Mode::Bike => 1,
            Mode::Car => 2,
        }
    }
}

/// Elder category (`;`-separated in the CSV).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// 空巢
    EmptyNest,
    /// 独居
    LivingAlone,
    /// 留守
    LeftBehind,
    /// 失能
    Disabled,
    /// 计划生育特殊家庭
    SpecialFamily,
    /// Other.
    Other,
}

/// A set of weekdays; bit 0 = Monday .. bit 6 = Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Weekdays(pub u8);

impl Weekdays {
    /// Every day of the week.
    pub const ALL: Weekdays = Weekdays(0x7f);
    /// Names, Monday first.
    pub const NAMES: [&'static str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

    /// Does the set contain weekday `wd` (0 = Monday)?
    pub fn contains(self, wd: u8) -> bool {
        wd < 7 && self.0 & (1 << wd) != 0
    }

    /// Parses `Mon-Fri`, `Mon;Wed;Fri`, `Mon-Wed;Sat`; empty = every day.
    pub fn parse(s: &str) -> Result<Weekdays, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Weekdays::ALL);
        }
        let day = |t: &str| -> Result<u8, String> {
            let t = t.trim();
            Self::NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(t))
                .map(|p| p as u8)
                .ok_or_else(|| format!("unknown weekday {t:?} (use Mon..Sun)"))
        };
        let mut bits = 0u8;
        for part in s.split(';') {
            if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (day(a)?, day(b)?);
                if a > b {
                    return Err(format!("weekday range {part:?} runs backwards"));
                }
                for d in a..=b {
                    bits |= 1 << d;
                }
            } else {
                bits |= 1 << day(part)?;
            }
        }
        Ok(Weekdays(bits))
    }

    /// `Mon;Wed;Fri`-style text.
    pub fn to_text(self) -> String {
        (0..7).filter(|&d| self.contains(d)).map(|d| Self::NAMES[d as usize]).collect::<Vec<_>>().join(";")
    }
}

/// A daily interval `[open, close]` in seconds after midnight. Invariant: `0 <= open < close <= 86400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    /// Opening, seconds after midnight.
    pub open: Secs,
    /// Closing, seconds after midnight.
    pub close: Secs,
}

impl TimeWindow {
    /// Parses `HH:MM-HH:MM` (24:00 allowed as a close).
    pub fn parse(s: &str) -> Result<TimeWindow, String> {
        let (a, b) = s.trim().split_once('-').ok_or_else(|| format!("window {s:?} is not HH:MM-HH:MM"))?;
        let hm = |t: &str| -> Result<Secs, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(|| format!("time {t:?} is not HH:MM"))?;
            let h: i64 = h.parse().map_err(|_| format!("bad hour in {t:?}"))?;
            let m: i64 = m.parse().map_err(|_| format!("bad minute in {t:?}"))?;
            if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
                return Err(format!("time {t:?} out of range"));
            }
            Ok(h * 3600 + m * 60)
        };
        let (open, close) = (hm(a)?, hm(b)?);
        if open >= close {
            return Err(format!("window {s:?} is empty (closes before it opens)"));
        }
        Ok(TimeWindow { open, close })
    }

    /// Length in seconds (> 0 by the invariant).
    pub fn duration(&self) -> Secs {
        self.close - self.open
    }

    /// `HH:MM-HH:MM`.
    pub fn to_text(&self) -> String {
        format!("{}-{}", hhmm(self.open), hhmm(self.close))
    }
}

/// `HH:MM` of seconds after midnight.
pub fn hhmm(s: Secs) -> String {
    format!("{:02}:{:02}", s / 3600, (s % 3600) / 60)
}

/// One elder to visit (a validated row of `elders.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Elder {
    /// Id.
    pub id: ElderId,
    /// Name (free text, may be Chinese).
    pub name: String,
    /// Home.
    pub at: GeoPoint,
    /// Categories.
    pub categories: Vec<Category>,
    /// In-person visits required this month (>= 1).
    pub visits_per_month: u32,
    /// Service duration per visit, seconds (> 0).
    pub service: Secs,
    /// Allowed weekdays.
    pub days: Weekdays,
    /// Service window; `None` = any time in the caregiver's shift.
    pub window: Option<TimeWindow>,
    /// Required skill tag.
    pub skill: Option<String>,
    /// Preferred caregiver (soft).
    pub preferred: Option<CaregiverId>,
}

/// One caregiver (a validated row of `caregivers.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caregiver {
    /// Id.
    pub id: CaregiverId,
    /// Name.
    pub name: String,
    /// Where each working day starts and ends.
    pub base: GeoPoint,
    /// Working weekdays.
    pub days: Weekdays,
    /// Daily shift.
    pub shift: TimeWindow,
    /// Maximum stops per working day (>= 1).
    pub max_visits_per_day: u32,
    /// Skill tags.
    pub skills: Vec<String>,
    /// Travel mode.
    pub mode: Mode,
}

impl Caregiver {
    /// Has the caregiver the elder's required skill (if any)?
    pub fn qualifies_for(&self, e: &Elder) -> bool {
        e.skill.as_ref().is_none_or(|s| self.skills.iter().any(|k| k == s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_parse_forms() {
        assert_eq!(Weekdays::parse("Mon-Fri").map(|w| w.0), Ok(0b0011111));
        assert_eq!(Weekdays::parse("Mon;Wed;Fri").map(|w| w.0), Ok(0b0010101));
        assert_eq!(Weekdays::parse("").map(|w| w.0), Ok(0x7f));
        assert!(Weekdays::parse("Fri-Mon").is_err());
        assert!(Weekdays::parse("Funday").is_err());
    }

    #[test]
    fn windows_parse_and_reject_impossible() {
        assert_eq!(TimeWindow::parse("08:30-17:00"), Ok(TimeWindow { open: 30600, close: 61200 }));
        assert!(TimeWindow::parse("17:00-08:30").is_err());
        assert!(TimeWindow::parse("25:00-26:00").is_err());
        assert!(TimeWindow::parse("0830").is_err());
    }
}
