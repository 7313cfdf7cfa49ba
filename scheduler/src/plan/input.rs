//! CSV input (`elders.csv`, `caregivers.csv`): parse, then validate. Every bad
//! row is reported with file, line, column and reason; nothing is returned on
//! half-read data.

use super::calendar::Month;
use super::model::*;
use crate::error::InputIssue;
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Columns of `elders.csv`, in the issue's order.
pub const ELDER_COLUMNS: [&str; 11] = [
    "id",
    "name",
    "lat",
    "lon",
    "category",
    "visits_per_month",
    "service_min",
    "days",
    "window",
    "skill",
    "preferred_caregiver",
];
/// Columns of `caregivers.csv`, in the issue's order.
pub const CAREGIVER_COLUMNS: [&str; 9] =
    ["id", "name", "lat", "lon", "days", "shift", "max_visits_per_day", "skills", "mode"];

/// Everything the planner needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    /// Planned month.
    pub month: Month,
    /// Holidays (days of the month, sorted, unique).
    pub holidays: Vec<u32>,
    /// Elders, in file order. Invariant: unique ids; preferred caregivers exist.
    pub elders: Vec<Elder>,
    /// Caregivers, in file order. Invariant: unique ids.
    pub caregivers: Vec<Caregiver>,
}

impl PlanInput {
    /// Builds an input from already-typed rows, checking the cross-row rules
    /// (unique ids, known preferred caregivers, coordinates, windows).
    pub fn new(month: Month, mut holidays: Vec<u32>, elders: Vec<Elder>, caregivers: Vec<Caregiver>) -> Result<Self> {
        holidays.sort_unstable();
        holidays.dedup();
        if let Some(&h) = holidays.iter().find(|&&h| h == 0 || h > month.days()) {
            return Err(Error::BadDate(format!("{}-{h:02}", month.to_text())));
        }
        let mut issues = Vec::new();
        let mut seen = HashSet::new();
        for (i, c) in caregivers.iter().enumerate() {
            let line = i as u64 + 2;
            if !seen.insert(c.id.clone()) {
                issues.push(issue("caregivers", line, "id", format!("duplicate caregiver id {:?}", c.id.0)));
            }
            check_point(c.base, "caregivers", line, &mut issues);
        }
        let mut seen_e = HashSet::new();
        for (i, e) in elders.iter().enumerate() {
            let line = i as u64 + 2;
            if !seen_e.insert(e.id.clone()) {
                issues.push(issue("elders", line, "id", format!("duplicate elder id {:?}", e.id.0)));
            }
            check_point(e.at, "elders", line, &mut issues);
            if let Some(p) = &e.preferred {
                if !seen.contains(p) {
                    issues.push(issue("elders", line, "preferred_caregiver", format!("unknown caregiver {:?}", p.0)));
                }
            }
            if let Some(w) = e.window {
                if w.duration() < e.service {
                    issues.push(issue(
                        "elders",
                        line,
                        "window",
                        format!("window {} is shorter than the service", w.to_text()),
                    ));
                }
            }
        }
        if !issues.is_empty() {
            return Err(Error::Input(issues));
        }
        Ok(PlanInput { month, holidays, elders, caregivers })
    }

    /// Days in the month.
    pub fn days(&self) -> u32 {
        self.month.days()
    }

    /// Is day `d` a holiday?
    pub fn is_holiday(&self, d: u32) -> bool {
        self.holidays.binary_search(&d).is_ok()
    }
}

fn issue(file: &str, line: u64, column: &str, reason: String) -> InputIssue {
    InputIssue { file: file.to_string(), line, column: column.to_string(), reason }
}

fn check_point(p: GeoPoint, file: &str, line: u64, issues: &mut Vec<InputIssue>) {
    if !(-90.0..=90.0).contains(&p.lat) || !p.lat.is_finite() {
        issues.push(issue(file, line, "lat", format!("latitude {} out of range [-90, 90]", p.lat)));
    }
    if !(-180.0..=180.0).contains(&p.lon) || !p.lon.is_finite() {
        issues.push(issue(file, line, "lon", format!("longitude {} out of range [-180, 180]", p.lon)));
    }
}

/// Reads both files and validates them together.
pub fn load(elders: &Path, caregivers: &Path, month: Month, holidays: Vec<u32>) -> Result<PlanInput> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| Error::Io { path: p.to_path_buf(), source });
    let (et, ct) = (read(elders)?, read(caregivers)?);
    let name =
        |p: &Path| p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
    parse(&et, &name(elders), &ct, &name(caregivers), month, holidays)
}

/// Parses both CSV texts (file names are used in issues). Collects every issue
/// of both files before failing.
pub fn parse(
    elders_csv: &str,
    elders_file: &str,
    caregivers_csv: &str,
    caregivers_file: &str,
    month: Month,
    holidays: Vec<u32>,
) -> Result<PlanInput> {
    let mut issues = Vec::new();
    let cgs = parse_caregivers(caregivers_csv, caregivers_file, &mut issues);
    let els = parse_elders(elders_csv, elders_file, &mut issues);
    // Cross-row checks on raw ids, so a duplicate is found even when one of
    // the rows is otherwise invalid.
    let mut ids: HashMap<String, u64> = HashMap::new();
    for (line, id) in raw_ids(caregivers_csv, &CAREGIVER_COLUMNS) {
        if let Some(first) = ids.insert(id.clone(), line) {
            issues.push(issue(
                caregivers_file,
                line,
                "id",
                format!("duplicate caregiver id {id:?} (first on line {first})"),
            ));
            ids.insert(id, first);
        }
    }
    let mut eids: HashMap<String, u64> = HashMap::new();
    for (line, id) in raw_ids(elders_csv, &ELDER_COLUMNS) {
        if let Some(first) = eids.insert(id.clone(), line) {
            issues.push(issue(elders_file, line, "id", format!("duplicate elder id {id:?} (first on line {first})")));
            eids.insert(id, first);
        }
    }
    for (line, e) in &els {
        if let Some(p) = &e.preferred {
            if !ids.contains_key(&p.0) {
                issues.push(issue(elders_file, *line, "preferred_caregiver", format!("unknown caregiver {:?}", p.0)));
            }
        }
    }
    if !issues.is_empty() {
        issues.sort_by(|a, b| (a.file.as_str(), a.line).cmp(&(b.file.as_str(), b.line)));
        return Err(Error::Input(issues));
    }
    PlanInput::new(month, holidays, els.into_iter().map(|x| x.1).collect(), cgs.into_iter().map(|x| x.1).collect())
}

/// (line, id) of every readable row, valid or not.
fn raw_ids(text: &str, columns: &[&str]) -> Vec<(u64, String)> {
    let mut sink = Vec::new();
    records(text, "", columns, &mut sink)
        .into_iter()
        .filter_map(|(l, f)| f.get("id").filter(|s| !s.is_empty()).map(|id| (l, id.clone())))
        .collect()
}

/// Reads the records of one CSV text, checking the header. Returns (line, fields by column).
fn records<'h>(
    text: &str,
    file: &str,
    columns: &'h [&'h str],
    issues: &mut Vec<InputIssue>,
) -> Vec<(u64, HashMap<&'h str, String>)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rdr =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header: Vec<String> = match rdr.headers() {
        Ok(h) => h.iter().map(|s| s.to_string()).collect(),
        Err(e) => {
            issues.push(issue(file, 1, "-", format!("unreadable header: {e}")));
            return Vec::new();
        }
    };
    let mut idx = Vec::new();
    let mut missing = false;
    for c in columns {
        match header.iter().position(|h| h == c) {
            Some(i) => idx.push(i),
            None => {
                issues.push(issue(file, 1, c, format!("missing column {c:?}")));
                missing = true;
            }
        }
    }
    if missing {
        return Vec::new();
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                issues.push(issue(file, line, "-", format!("unreadable row: {e}")));
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        if rec.len() != header.len() {
            issues.push(issue(file, line, "-", format!("expected {} fields, found {}", header.len(), rec.len())));
            continue;
        }
        let m = columns.iter().zip(&idx).map(|(c, &i)| (*c, rec.get(i).unwrap_or("").to_string())).collect();
        out.push((line, m));
    }
    out
}

struct Row<'a> {
    file: &'a str,
    line: u64,
    f: &'a HashMap<&'a str, String>,
    bad: bool,
}

impl<'a> Row<'a> {
    fn get(&self, c: &str) -> &str {
        self.f.get(c).map(|s| s.as_str()).unwrap_or("")
    }
    fn fail(&mut self, issues: &mut Vec<InputIssue>, c: &str, reason: String) {
        self.bad = true;
        issues.push(issue(self.file, self.line, c, reason));
    }
    fn required(&mut self, issues: &mut Vec<InputIssue>, c: &str) -> String {
        let v = self.get(c).to_string();
        if v.is_empty() {
            self.fail(issues, c, format!("{c} is empty"));
        }
        v
    }
    fn float(&mut self, issues: &mut Vec<InputIssue>, c: &str, lo: f64, hi: f64) -> f64 {
        let v = self.get(c).to_string();
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && (lo..=hi).contains(&x) => x,
            Ok(x) => {
                self.fail(issues, c, format!("{c} {x} out of range [{lo}, {hi}]"));
                0.0
            }
            Err(_) => {
                self.fail(issues, c, format!("{c} {v:?} is not a number"));
                0.0
            }
        }
    }
    fn int(&mut self, issues: &mut Vec<InputIssue>, c: &str, lo: u32, hi: u32) -> u32 {
        let v = self.get(c).to_string();
        match v.parse::<u32>() {
            Ok(x) if (lo..=hi).contains(&x) => x,
            _ => {
                self.fail(issues, c, format!("{c} {v:?} is not an integer in {lo}..={hi}"));
                lo
            }
        }
    }
}

fn parse_caregivers(text: &str, file: &str, issues: &mut Vec<InputIssue>) -> Vec<(u64, Caregiver)> {
    let mut out = Vec::new();
    for (line, f) in records(text, file, &CAREGIVER_COLUMNS, issues) {
        let mut r = Row { file, line, f: &f, bad: false };
        let id = r.required(issues, "id");
        let name = r.get("name").to_string();
        let lat = r.float(issues, "lat", -90.0, 90.0);
        let lon = r.float(issues, "lon", -180.0, 180.0);
        let days = Weekdays::parse(r.get("days")).unwrap_or_else(|e| {
            r.fail(issues, "days", e);
            Weekdays::ALL
        });
        if days.0 == 0 {
            r.fail(issues, "days", "no working day".into());
        }
        let shift_s = r.required(issues, "shift");
        let shift = TimeWindow::parse(&shift_s).unwrap_or_else(|e| {
            if !shift_s.is_empty() {
                r.fail(issues, "shift", e);
            }
            TimeWindow { open: 0, close: 1 }
        });
        let max_visits_per_day = r.int(issues, "max_visits_per_day", 1, 100);
        let skills: Vec<String> =
            r.get("skills").split(';').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        let mode = match r.get("mode").to_ascii_lowercase().as_str() {
            "walk" => Mode::Walk,
            "bike" => Mode::Bike,
            "car" => Mode::Car,
            other => {
                let other = other.to_string();
                r.fail(issues, "mode", format!("mode {other:?} is not walk|bike|car"));
                Mode::Walk
            }
        };
        if !r.bad {
            out.push((
                line,
                Caregiver {
                    id: CaregiverId(id),
                    name,
                    base: GeoPoint { lat, lon },
                    days,
                    shift,
                    max_visits_per_day,
                    skills,
                    mode,
                },
            ));
        }
    }
    out
}

fn parse_category(s: &str) -> Result<Category, String> {
    Ok(match s.trim() {
        "empty_nest" => Category::EmptyNest,
        "living_alone" => Category::LivingAlone,
        "left_behind" => Category::LeftBehind,
        "disabled" => Category::Disabled,
        "special_family" => Category::SpecialFamily,
        "other" => Category::Other,
        x => return Err(format!("unknown category {x:?}")),
    })
}

fn parse_elders(text: &str, file: &str, issues: &mut Vec<InputIssue>) -> Vec<(u64, Elder)> {
    let mut out = Vec::new();
    for (line, f) in records(text, file, &ELDER_COLUMNS, issues) {
        let mut r = Row { file, line, f: &f, bad: false };
        let id = r.required(issues, "id");
        let name = r.get("name").to_string();
        let lat = r.float(issues, "lat", -90.0, 90.0);
        let lon = r.float(issues, "lon", -180.0, 180.0);
        let mut categories = Vec::new();
        let cats = r.get("category").to_string();
        for c in cats.split(';').filter(|s| !s.trim().is_empty()) {
            match parse_category(c) {
                Ok(c) => categories.push(c),
                Err(e) => r.fail(issues, "category", e),
            }
        }
        let visits = r.int(issues, "visits_per_month", 1, 31);
        let service_min = r.int(issues, "service_min", 1, 24 * 60);
        let days = Weekdays::parse(r.get("days")).unwrap_or_else(|e| {
            r.fail(issues, "days", e);
            Weekdays::ALL
        });
        if days.0 == 0 {
            r.fail(issues, "days", "no allowed day".into());
        }
        let w = r.get("window").to_string();
        let window = if w.is_empty() {
            None
        } else {
            match TimeWindow::parse(&w) {
                Ok(tw) if tw.duration() < service_min as i64 * 60 => {
                    r.fail(issues, "window", format!("window {w} is shorter than the {service_min}-minute service"));
                    None
                }
                Ok(tw) => Some(tw),
                Err(e) => {
                    r.fail(issues, "window", e);
                    None
                }
            }
        };
        let skill = Some(r.get("skill").to_string()).filter(|s| !s.is_empty());
        let preferred = Some(r.get("preferred_caregiver").to_string()).filter(|s| !s.is_empty()).map(CaregiverId);
        if !r.bad {
            out.push((
                line,
                Elder {
                    id: ElderId(id),
                    name,
                    at: GeoPoint { lat, lon },
                    categories,
                    visits_per_month: visits,
                    service: service_min as i64 * 60,
                    days,
                    window,
                    skill,
                    preferred,
                },
            ));
        }
    }
    out
}

/// Writes elders as `elders.csv` text (the issue's columns).
pub fn elders_to_csv(elders: &[Elder]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(ELDER_COLUMNS);
    for e in elders {
        let cats: Vec<&str> = e
            .categories
            .iter()
            .map(|c| match c {
                Category::EmptyNest => "empty_nest",
                Category::LivingAlone => "living_alone",
                Category::LeftBehind => "left_behind",
                Category::Disabled => "disabled",
                Category::SpecialFamily => "special_family",
                Category::Other => "other",
            })
            .collect();
        let days = if e.days == Weekdays::ALL { String::new() } else { e.days.to_text() };
        let _ = w.write_record([
            e.id.0.clone(),
            e.name.clone(),
            format!("{:.6}", e.at.lat),
            format!("{:.6}", e.at.lon),
            cats.join(";"),
            e.visits_per_month.to_string(),
            (e.service / 60).to_string(),
            days,
            e.window.map(|w| w.to_text()).unwrap_or_default(),
            e.skill.clone().unwrap_or_default(),
            e.preferred.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Writes caregivers as `caregivers.csv` text.
pub fn caregivers_to_csv(cgs: &[Caregiver]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(CAREGIVER_COLUMNS);
    for c in cgs {
        let mode = match c.mode {
            Mode::Walk => "walk",
            Mode::Bike => "bike",
            Mode::Car => "car",
        };
        let _ = w.write_record([
            c.id.0.clone(),
            c.name.clone(),
            format!("{:.6}", c.base.lat),
            format!("{:.6}", c.base.lon),
            c.days.to_text(),
            c.shift.to_text(),
            c.max_visits_per_day.to_string(),
            c.skills.join(";"),
            mode.to_string(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CG: &str = "id,name,lat,lon,days,shift,max_visits_per_day,skills,mode\nC01,王芳,30.27,120.15,Mon-Fri,08:30-17:30,8,nursing;dementia,bike\n";

    fn month() -> Month {
        Month { year: 2026, month: 12 }
    }

    #[test]
    fn good_files_parse_with_chinese_text() {
        let el = "id,name,lat,lon,category,visits_per_month,service_min,days,window,skill,preferred_caregiver\nE001,张三,30.28,120.16,empty_nest;living_alone,2,30,Mon;Wed;Fri,09:00-11:00,nursing,C01\nE002,\"李四, 老人\",30.26,120.14,other,1,45,,,,\n";
        let p = parse(el, "elders.csv", CG, "caregivers.csv", month(), vec![25]).expect("valid");
        assert_eq!(p.elders.len(), 2);
        assert_eq!(p.elders[1].name, "李四, 老人");
        assert_eq!(p.elders[0].window, Some(TimeWindow { open: 9 * 3600, close: 11 * 3600 }));
        assert_eq!(p.elders[0].service, 1800);
        assert_eq!(p.caregivers[0].skills, vec!["nursing", "dementia"]);
    }

    #[test]
    fn every_bad_row_is_reported_with_line_and_column() {
        let el = "id,name,lat,lon,category,visits_per_month,service_min,days,window,skill,preferred_caregiver\n\
E001,a,95.0,120.16,empty_nest,2,30,,,,\n\
E002,b,30.1,120.1,martian,2,30,,,,\n\
E003,c,30.1,120.1,other,0,30,,,,\n\
E004,d,30.1,120.1,other,1,30,Funday,,,\n\
E005,e,30.1,120.1,other,1,90,,09:00-10:00,,\n\
E006,f,30.1,120.1,other,1,30,,,,C99\n\
E001,g,30.1,120.1,other,1,30,,,,\n\
E008,h,30.1\n";
        let err = parse(el, "elders.csv", CG, "caregivers.csv", month(), vec![]).expect_err("invalid");
        let Error::Input(issues) = err else { panic!("expected input error") };
        let has =
            |line: u64, col: &str| issues.iter().any(|i| i.line == line && i.column == col && i.file == "elders.csv");
        assert!(has(2, "lat"), "{issues:?}");
        assert!(has(3, "category"));
        assert!(has(4, "visits_per_month"));
        assert!(has(5, "days"));
        assert!(has(6, "window"));
        assert!(has(7, "preferred_caregiver"));
        assert!(has(8, "id"));
        assert!(has(9, "-"));
        assert_eq!(issues.len(), 8, "{issues:?}");
    }

    #[test]
    fn missing_column_and_bad_caregiver_rows() {
        let cg = "id,name,lat,lon,days,shift,max_visits_per_day,skills\nC01,a,30,120,Mon-Fri,08:00-17:00,8,\n";
        let el = "id,name,lat,lon,category,visits_per_month,service_min,days,window,skill,preferred_caregiver\n";
        let Err(Error::Input(issues)) = parse(el, "elders.csv", cg, "caregivers.csv", month(), vec![]) else {
            panic!()
        };
        assert_eq!(issues[0].column, "mode");
        let cg2 =
            "id,name,lat,lon,days,shift,max_visits_per_day,skills,mode\nC01,a,30,120,Mon-Fri,17:00-08:00,8,,jet\n";
        let Err(Error::Input(issues)) = parse(el, "elders.csv", cg2, "caregivers.csv", month(), vec![]) else {
            panic!()
        };
        assert!(issues.iter().any(|i| i.column == "shift" && i.line == 2));
        assert!(issues.iter().any(|i| i.column == "mode" && i.line == 2));
    }

    #[test]
    fn csv_round_trip() {
        let el = "id,name,lat,lon,category,visits_per_month,service_min,days,window,skill,preferred_caregiver\nE001,张三,30.28,120.16,empty_nest;living_alone,2,30,Mon;Wed;Fri,09:00-11:00,nursing,C01\n";
        let p = parse(el, "elders.csv", CG, "caregivers.csv", month(), vec![]).expect("valid");
        let p2 = parse(&elders_to_csv(&p.elders), "e", &caregivers_to_csv(&p.caregivers), "c", month(), vec![])
            .expect("valid");
        assert_eq!(p, p2);
    }
}
