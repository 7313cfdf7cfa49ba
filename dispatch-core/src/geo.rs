//! Geography: validated WGS-84 points, great-circle distance and the travel
//! time estimate used to rank caregivers.

use crate::error::{DispatchError, Result};

/// Mean Earth radius (IUGG), km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A position with latitude in [-90, 90] and longitude in [-180, 180], both finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

impl GeoPoint {
    /// Validates a position; `field` names it in the error (e.g. `"location"`).
    pub fn new(field: &str, lat: f64, lon: f64) -> Result<Self> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(DispatchError::invalid(
                format!("{field}.lat"),
                format!("latitude {lat} is not a finite number in [-90, 90]"),
            ));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(DispatchError::invalid(
                format!("{field}.lon"),
                format!("longitude {lon} is not a finite number in [-180, 180]"),
            ));
        }
        Ok(GeoPoint { lat, lon })
    }

    pub fn lat(&self) -> f64 {
        self.lat
    }

    pub fn lon(&self) -> f64 {
        self.lon
    }

    /// Great-circle distance in metres (haversine).
    pub fn distance_m(&self, other: &GeoPoint) -> f64 {
        let (la1, la2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = la2 - la1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * 1000.0 * a.sqrt().min(1.0).asin()
    }
}

/// How a caregiver travels; decides the speed of the travel estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TravelMode {
    Walk,
    Bike,
    Car,
}

/// Travel-time model: straight-line distance times a detour factor at a
/// constant speed per mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TravelModel {
    pub detour_factor: f64,
    pub walk_kmh: f64,
    pub bike_kmh: f64,
    pub car_kmh: f64,
}

impl Default for TravelModel {
    fn default() -> Self {
        TravelModel { detour_factor: 1.3, walk_kmh: 4.5, bike_kmh: 12.0, car_kmh: 30.0 }
    }
}

impl TravelModel {
    pub fn speed_mps(&self, mode: TravelMode) -> f64 {
        let kmh = match mode {
            TravelMode::Walk => self.walk_kmh,
            TravelMode::Bike => self.bike_kmh,
            TravelMode::Car => self.car_kmh,
        };
        kmh / 3.6
    }

    /// Fastest speed of any mode, m/s: turns a distance into a lower bound on time.
    pub fn max_speed_mps(&self) -> f64 {
        self.walk_kmh.max(self.bike_kmh).max(self.car_kmh) / 3.6
    }

    /// Estimated travel time in seconds for a straight-line distance in metres.
    pub fn eta_s(&self, distance_m: f64, mode: TravelMode) -> f64 {
        distance_m * self.detour_factor / self.speed_mps(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_nan_naming_the_field() {
        let err = GeoPoint::new("location", 91.0, 0.0).unwrap_err();
        assert!(err.to_string().starts_with("location.lat:"), "{err}");
        let err = GeoPoint::new("home", 0.0, f64::NAN).unwrap_err();
        assert!(err.to_string().starts_with("home.lon:"), "{err}");
        assert!(GeoPoint::new("p", -90.0, 180.0).is_ok());
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // Changchun railway station to Changchun Erdao district centre: about 7.4 km.
        let a = GeoPoint::new("a", 43.9066, 125.3156).unwrap();
        let b = GeoPoint::new("b", 43.8650, 125.3860).unwrap();
        let d = a.distance_m(&b);
        assert!((7_000.0..7_800.0).contains(&d), "{d}");
        // One degree of latitude is about 111.2 km.
        let p = GeoPoint::new("p", 0.0, 0.0).unwrap();
        let q = GeoPoint::new("q", 1.0, 0.0).unwrap();
        assert!((p.distance_m(&q) - 111_195.0).abs() < 10.0);
    }

    #[test]
    fn eta_depends_on_mode() {
        let m = TravelModel::default();
        let walk = m.eta_s(1000.0, TravelMode::Walk);
        let car = m.eta_s(1000.0, TravelMode::Car);
        assert!((walk - 1000.0 * 1.3 / (4.5 / 3.6)).abs() < 1e-9);
        assert!(car < walk);
    }
}
