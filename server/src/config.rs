//! Server configuration: parsed from a TOML file (`RawConfig`), overridden by
//! environment variables and flags (resolved by clap), then validated into
//! `Config`, which is passed down by reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The file format, every field optional. Example:
///
/// ```toml
/// listen = "127.0.0.1:50051"
/// data_dir = "/var/lib/anxin"
/// log_format = "json"
/// otlp_endpoint = "http://127.0.0.1:4317"
/// [dispatch]
/// offer_timeout_s = 60
/// merge_window_s = 120
/// max_radius_km = 30
/// max_offers = 5
/// tick_ms = 500
/// wide_radius_km = 60      # first rung of the escalation ladder
/// routine_lane = 4096      # routine alarms taken in at once; more are DEFERRED
/// urgent_lane = 8192       # urgent alarms taken in at once; more wait
/// max_deferred = 100000    # beyond it routine alarms get RESOURCE_EXHAUSTED
/// retain_closed_s = 600    # closed incidents stay in memory this long, then are read from the store
/// max_closed_in_memory = 100000  # and at most this many (the oldest leave first)
/// key_window_s = 86400     # a retried idempotency key within this is a duplicate; later, a new alarm
/// kpi_log_s = 60           # the KPIs go to the log this often (0: never)
/// arrival_realert_s = 300  # an overdue arrival is alerted again this often...
/// arrival_escalate_s = 900 # ...and escalated this long after it became overdue
/// on_scene_alert_s = 7200  # an incident on scene this long alerts the console...
/// on_scene_realert_s = 1800  # ...and again this often until it is closed
/// skill_slack_s = 180      # a caregiver with the elder's required skill is offered first unless
///                          # another would arrive this much sooner (0: nearest only)
/// [planning]
/// service_min = 30          # visit length for registry elders
/// max_visits_per_day = 8    # for registry caregivers that set none
/// utc_offset_h = 8          # the office's time zone (China Standard Time)
/// max_queued_jobs = 8
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub dispatch: RawDispatch,
    #[serde(default)]
    pub planning: RawPlanning,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlanning {
    pub service_min: Option<u32>,
    pub max_visits_per_day: Option<u32>,
    pub utc_offset_h: Option<i32>,
    pub max_queued_jobs: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatch {
    pub offer_timeout_s: Option<f64>,
    pub merge_window_s: Option<f64>,
    pub max_radius_km: Option<f64>,
    pub max_offers: Option<u32>,
    pub tick_ms: Option<u64>,
    pub wide_radius_km: Option<f64>,
    pub routine_lane: Option<usize>,
    pub urgent_lane: Option<usize>,
    pub max_deferred: Option<usize>,
    pub retain_closed_s: Option<f64>,
    pub max_closed_in_memory: Option<usize>,
    pub key_window_s: Option<f64>,
    pub kpi_log_s: Option<u64>,
    pub arrival_realert_s: Option<f64>,
    pub arrival_escalate_s: Option<f64>,
    pub on_scene_alert_s: Option<f64>,
    pub on_scene_realert_s: Option<f64>,
    pub skill_slack_s: Option<f64>,
}

impl RawConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<RawConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated configuration of `anxin serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub dispatch: dispatch_core::DispatchConfig,
    /// How often timers (offer expiry, arrival overdue) are checked.
    pub tick_ms: u64,
    /// How often the KPIs are written to the log (0: never).
    pub kpi_log_s: u64,
    pub planning: PlanningConfig,
}

/// Settings of the planning service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanningConfig {
    /// Minutes per visit for elders planned from the registry (which has no such field).
    pub service_min: u32,
    /// Stops per day for registry caregivers whose `max_visits_per_day` is 0.
    pub max_visits_per_day: u32,
    /// Offset of the office's time zone from UTC, hours: decides "today" for re-planning.
    pub utc_offset_h: i32,
    /// Planning jobs waiting or running at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_queued_jobs: usize,
}

impl Default for PlanningConfig {
    fn default() -> Self {
        PlanningConfig { service_min: 30, max_visits_per_day: 8, utc_offset_h: 8, max_queued_jobs: 8 }
    }
}

impl PlanningConfig {
    fn from_raw(p: &RawPlanning) -> anyhow::Result<PlanningConfig> {
        let mut c = PlanningConfig::default();
        if let Some(m) = p.service_min {
            if !(1..=480).contains(&m) {
                bail!("planning.service_min: {m} is not between 1 and 480");
            }
            c.service_min = m;
        }
        if let Some(n) = p.max_visits_per_day {
            if !(1..=100).contains(&n) {
                bail!("planning.max_visits_per_day: {n} is not between 1 and 100");
            }
            c.max_visits_per_day = n;
        }
        if let Some(h) = p.utc_offset_h {
            if !(-12..=14).contains(&h) {
                bail!("planning.utc_offset_h: {h} is not between -12 and 14");
            }
            c.utc_offset_h = h;
        }
        if let Some(n) = p.max_queued_jobs {
            if !(1..=1000).contains(&n) {
                bail!("planning.max_queued_jobs: {n} is not between 1 and 1000");
            }
            c.max_queued_jobs = n;
        }
        Ok(c)
    }
}

impl Config {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:50051";
    pub const DEFAULT_DATA_DIR: &'static str = "./anxin-data";

    /// Validates `raw` after flags and environment were merged into it.
    pub fn from_raw(raw: &RawConfig) -> anyhow::Result<Config> {
        let listen_s = raw.listen.as_deref().unwrap_or(Self::DEFAULT_LISTEN);
        let listen: SocketAddr =
            listen_s.parse().with_context(|| format!("listen: {listen_s:?} is not an address like 127.0.0.1:50051"))?;
        let mut dispatch = dispatch_core::DispatchConfig::default();
        let d = &raw.dispatch;
        if let Some(ms) = millis("offer_timeout_s", d.offer_timeout_s, 1.0, 3600.0, "")? {
            dispatch.offer_timeout_ms = ms;
        }
        if let Some(ms) = millis("merge_window_s", d.merge_window_s, 0.0, 86_400.0, "")? {
            dispatch.merge_window_ms = ms;
        }
        if let Some(km) = d.max_radius_km {
            if !(km.is_finite() && km > 0.0 && km <= 500.0) {
                bail!("dispatch.max_radius_km: {km} is not in (0, 500]");
            }
            dispatch.max_radius_m = km * 1000.0;
        }
        if let Some(n) = d.max_offers {
            if n == 0 {
                bail!("dispatch.max_offers: must be at least 1");
            }
            dispatch.max_offers = n;
        }
        if let Some(km) = d.wide_radius_km {
            if !(km.is_finite() && km > 0.0 && km <= 1000.0) {
                bail!("dispatch.wide_radius_km: {km} is not in (0, 1000]");
            }
            dispatch.wide_radius_m = km * 1000.0;
        }
        if let Some(n) = d.routine_lane {
            dispatch.routine_lane = n;
        }
        if let Some(n) = d.urgent_lane {
            if n == 0 {
                bail!("dispatch.urgent_lane: must be at least 1 (urgent alarms wait for room, they are never refused)");
            }
            dispatch.urgent_lane = n;
        }
        if let Some(n) = d.max_deferred {
            dispatch.max_deferred = n;
        }
        if let Some(ms) = millis("retain_closed_s", d.retain_closed_s, 0.0, 86_400.0 * 30.0, "")? {
            dispatch.retain_closed_ms = ms;
        }
        if let Some(n) = d.max_closed_in_memory {
            dispatch.max_closed_in_memory = n;
        }
        let hint = " (gateways retry within minutes)";
        if let Some(ms) = millis("key_window_s", d.key_window_s, 60.0, 86_400.0 * 30.0, hint)? {
            dispatch.key_window_ms = ms;
        }
        if let Some(ms) = millis("arrival_realert_s", d.arrival_realert_s, 10.0, 86_400.0, "")? {
            dispatch.arrival_realert_ms = ms;
        }
        if let Some(ms) = millis("arrival_escalate_s", d.arrival_escalate_s, 0.0, 86_400.0, "")? {
            dispatch.arrival_escalate_ms = ms;
        }
        if let Some(ms) = millis("on_scene_alert_s", d.on_scene_alert_s, 60.0, 7.0 * 86_400.0, "")? {
            dispatch.on_scene_alert_ms = ms;
        }
        if let Some(ms) = millis("on_scene_realert_s", d.on_scene_realert_s, 10.0, 86_400.0, "")? {
            dispatch.on_scene_realert_ms = ms;
        }
        if let Some(s) = seconds("skill_slack_s", d.skill_slack_s, 0.0, 3600.0, "")? {
            dispatch.skill_slack_s = s;
        }
        let tick_ms = d.tick_ms.unwrap_or(500);
        if !(10..=60_000).contains(&tick_ms) {
            bail!("dispatch.tick_ms: {tick_ms} is not between 10 and 60000");
        }
        let kpi_log_s = d.kpi_log_s.unwrap_or(60);
        if kpi_log_s > 86_400 {
            bail!("dispatch.kpi_log_s: {kpi_log_s} is not between 0 and 86400");
        }
        Ok(Config {
            listen,
            data_dir: raw.data_dir.clone().unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DATA_DIR)),
            dispatch,
            tick_ms,
            kpi_log_s,
            planning: PlanningConfig::from_raw(&raw.planning)?,
        })
    }
}

/// [`seconds`], in milliseconds.
fn millis(name: &str, s: Option<f64>, lo: f64, hi: f64, hint: &str) -> anyhow::Result<Option<i64>> {
    Ok(seconds(name, s, lo, hi, hint)?.map(|s| (s * 1000.0) as i64))
}

/// The seconds setting `dispatch.{name}`, if set, checked to lie in
/// `lo..=hi` (`hint` ends the error).
fn seconds(name: &str, s: Option<f64>, lo: f64, hi: f64, hint: &str) -> anyhow::Result<Option<f64>> {
    match s {
        Some(s) if !(s.is_finite() && (lo..=hi).contains(&s)) => {
            bail!("dispatch.{name}: {s} is not between {lo} and {hi}{hint}")
        }
        s => Ok(s),
    }
}

pub fn log_format(raw: &RawConfig) -> anyhow::Result<LogFormat> {
    match raw.log_format.as_deref().unwrap_or("text") {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => bail!("log_format: {other:?} is neither \"text\" nor \"json\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = Config::from_raw(&RawConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.data_dir, PathBuf::from("./anxin-data"));
        let raw: RawConfig = toml::from_str("listen = \"127.0.0.1:7\"\n[dispatch]\noffer_timeout_s = 30").unwrap();
        let c = Config::from_raw(&raw).unwrap();
        assert_eq!((c.listen.port(), c.dispatch.offer_timeout_ms), (7, 30_000));
        assert_eq!(c.kpi_log_s, 60);
        let raw: RawConfig = toml::from_str("[dispatch]\nkpi_log_s = 0").unwrap();
        assert_eq!(Config::from_raw(&raw).unwrap().kpi_log_s, 0, "0 turns the KPI log off");
        let raw: RawConfig = toml::from_str("[dispatch]\nkpi_log_s = 100000").unwrap();
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("dispatch.kpi_log_s"));
        for (toml, message) in [
            ("offer_timeout_s = 0.5", "dispatch.offer_timeout_s: 0.5 is not between 1 and 3600"),
            ("retain_closed_s = -1", "dispatch.retain_closed_s: -1 is not between 0 and 2592000"),
            (
                "key_window_s = 10",
                "dispatch.key_window_s: 10 is not between 60 and 2592000 (gateways retry within minutes)",
            ),
        ] {
            let raw: RawConfig = toml::from_str(&format!("[dispatch]\n{toml}")).unwrap();
            assert_eq!(Config::from_raw(&raw).unwrap_err().to_string(), message);
        }
        let raw: RawConfig = toml::from_str("[dispatch]\nkey_window_s = 3600").unwrap();
        assert_eq!(Config::from_raw(&raw).unwrap().dispatch.key_window_ms, 3_600_000);
        let raw: RawConfig = toml::from_str("[dispatch]\non_scene_alert_s = 3600\non_scene_realert_s = 600").unwrap();
        let d = Config::from_raw(&raw).unwrap().dispatch;
        assert_eq!((d.on_scene_alert_ms, d.on_scene_realert_ms), (3_600_000, 600_000));
        let raw: RawConfig = toml::from_str("[dispatch]\narrival_realert_s = 0").unwrap();
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("dispatch.arrival_realert_s"));
        let raw: RawConfig = toml::from_str("[dispatch]\nskill_slack_s = 60").unwrap();
        assert_eq!(Config::from_raw(&raw).unwrap().dispatch.skill_slack_s, 60.0);
        let raw: RawConfig = toml::from_str("[dispatch]\nskill_slack_s = -1").unwrap();
        assert_eq!(
            Config::from_raw(&raw).unwrap_err().to_string(),
            "dispatch.skill_slack_s: -1 is not between 0 and 3600"
        );
        let raw: RawConfig = toml::from_str("[dispatch]\nmax_radius_km = -1").unwrap();
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("dispatch.max_radius_km"));
        assert!(toml::from_str::<RawConfig>("lisen = \"x\"").is_err(), "unknown keys are errors");
        let raw: RawConfig = toml::from_str("[planning]\nservice_min = 0").unwrap();
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("planning.service_min"));
        let raw = RawConfig { listen: Some("nowhere".into()), ..Default::default() };
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("listen:"));
    }
}
