//! Travel model behind a trait so that a road-network matrix (e.g. an OSRM
//! `table` response) can replace the default haversine model.

use super::model::{GeoPoint, Mode, Secs};

/// Mean Earth radius used by the issue, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Travel time between two points for a travel mode.
pub trait TravelModel: Send + Sync {
    /// Travel time in minutes (exact, as the validator recomputes it).
    fn minutes(&self, mode: Mode, from: GeoPoint, to: GeoPoint) -> f64;

    /// Travel time in whole seconds, rounded up, used inside the search so
    /// that plans are conservative: `seconds/60 >= minutes`.
    fn seconds(&self, mode: Mode, from: GeoPoint, to: GeoPoint) -> Secs {
        (self.minutes(mode, from, to) * 60.0 - 1e-9).ceil().max(0.0) as Secs
    }
}

/// Great-circle distance in km.
pub fn haversine_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The model: haversine x detour factor / speed x 60.
#[derive(Debug, Clone, PartialEq)]
pub struct Haversine {
    /// Detour factor (default 1.3).
    pub detour: f64,
    /// Speeds in km/h for walk, bike, car (default 4.5, 12, 30).
    pub speed_kmh: [f64; 3],
}

impl Default for Haversine {
    fn default() -> Self {
        Haversine { detour: 1.3, speed_kmh: [4.5, 12.0, 30.0] }
    }
}

impl TravelModel for Haversine {
    fn minutes(&self, mode: Mode, from: GeoPoint, to: GeoPoint) -> f64 {
        haversine_km(from, to) * self.detour / self.speed_kmh[mode.index()] * 60.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_by_bike() {
        let a = GeoPoint { lat: 30.0, lon: 120.0 };
        let b = GeoPoint { lat: 31.0, lon: 120.0 };
        let km = haversine_km(a, b);
        assert!((km - 111.195).abs() < 0.01, "{km}");
        let m = Haversine::default().minutes(Mode::Bike, a, b);
        assert!((m - km * 1.3 / 12.0 * 60.0).abs() < 1e-9);
        let s = Haversine::default().seconds(Mode::Bike, a, b);
        assert!(s as f64 >= m * 60.0 - 1e-6 && (s as f64) < m * 60.0 + 1.0);
        assert_eq!(Haversine::default().seconds(Mode::Walk, a, a), 0);
    }
}
