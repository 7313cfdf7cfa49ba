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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatch {
    pub offer_timeout_s: Option<f64>,
    pub merge_window_s: Option<f64>,
    pub max_radius_km: Option<f64>,
    pub max_offers: Option<u32>,
    pub tick_ms: Option<u64>,
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
        if let Some(s) = d.offer_timeout_s {
            if !(s.is_finite() && (1.0..=3600.0).contains(&s)) {
                bail!("dispatch.offer_timeout_s: {s} is not between 1 and 3600");
            }
            dispatch.offer_timeout_ms = (s * 1000.0) as i64;
        }
        if let Some(s) = d.merge_window_s {
            if !(s.is_finite() && (0.0..=86_400.0).contains(&s)) {
                bail!("dispatch.merge_window_s: {s} is not between 0 and 86400");
            }
            dispatch.merge_window_ms = (s * 1000.0) as i64;
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
        let tick_ms = d.tick_ms.unwrap_or(500);
        if !(10..=60_000).contains(&tick_ms) {
            bail!("dispatch.tick_ms: {tick_ms} is not between 10 and 60000");
        }
        Ok(Config {
            listen,
            data_dir: raw.data_dir.clone().unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DATA_DIR)),
            dispatch,
            tick_ms,
        })
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
        let raw: RawConfig = toml::from_str("[dispatch]\nmax_radius_km = -1").unwrap();
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("dispatch.max_radius_km"));
        assert!(toml::from_str::<RawConfig>("lisen = \"x\"").is_err(), "unknown keys are errors");
        let raw = RawConfig { listen: Some("nowhere".into()), ..Default::default() };
        assert!(Config::from_raw(&raw).unwrap_err().to_string().starts_with("listen:"));
    }
}
