//! Proof of place: a transaction's `pop` (the position its sender claims) against the
//! city's geofence.
//!
//! A city serves one `city_id` (admission refuses others first, `wrong_city`), so its
//! engine holds that city's fence only. The default engine, [`Geofence`], accepts a
//! position inside the fence or on its edge, refuses one outside (400
//! `pop_outside_city`), and, when the city requires it, a transaction without `pop` (400
//! `pop_required`). With no fence configured it checks nothing. `pop` is part of the
//! signed transaction, so a position cannot be changed on the way; whether the sender
//! really stood there is the client's claim (see the README's rules left).

use geo::{Intersects, MultiPolygon, Point};

use crate::config::{PlaceEngineName, PopConfig};
use crate::messages::{Pop, TxValidationError};

/// What the engine made of a transaction's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceVerdict {
    /// The position is inside the fence.
    Inside,
    /// No position, and none required.
    Absent,
    /// Not checked: no fence, or the engine is off.
    Unchecked,
}

impl PlaceVerdict {
    /// The `outcome` label of `citychain_pop_checks_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaceVerdict::Inside => "inside",
            PlaceVerdict::Absent => "absent",
            PlaceVerdict::Unchecked => "unchecked",
        }
    }
}

/// Decides whether a transaction's position may be admitted by this city.
pub trait PlaceEngine: Send + Sync + std::fmt::Debug {
    /// Checks `pop` (if any) of a transaction for this city.
    fn check(&self, pop: Option<&Pop>) -> Result<PlaceVerdict, TxValidationError>;
}

/// Builds the engine `[pop]` names for the city `city`.
pub fn build(config: &PopConfig, city: &str) -> Result<Box<dyn PlaceEngine>, String> {
    Ok(match config.engine {
        PlaceEngineName::Off => Box::new(Off),
        PlaceEngineName::Geofence => Box::new(Geofence {
            city: city.to_owned(),
            fence: config.load_fence()?,
            require: config.require,
        }),
    })
}

/// The default engine: inside the fence (or on its edge) passes.
#[derive(Debug)]
pub struct Geofence {
    city: String,
    fence: Option<MultiPolygon<f64>>,
    require: bool,
}

impl Geofence {
    pub fn new(city: impl Into<String>, fence: Option<MultiPolygon<f64>>, require: bool) -> Self {
        Self {
            city: city.into(),
            fence,
            require,
        }
    }
}

impl PlaceEngine for Geofence {
    fn check(&self, pop: Option<&Pop>) -> Result<PlaceVerdict, TxValidationError> {
        let Some(pop) = pop else {
            return if self.require {
                Err(TxValidationError::PopRequired {
                    city: self.city.clone(),
                })
            } else {
                Ok(PlaceVerdict::Absent)
            };
        };
        if !(-90.0..=90.0).contains(&pop.lat) || !(-180.0..=180.0).contains(&pop.lon) {
            return Err(TxValidationError::InvalidField(format!(
                "pop: lat must be within ±90 and lon within ±180 (got {}, {})",
                pop.lat, pop.lon
            )));
        }
        let Some(fence) = &self.fence else {
            return Ok(PlaceVerdict::Unchecked);
        };
        // GeoJSON order: x is the longitude.
        if fence.intersects(&Point::new(pop.lon, pop.lat)) {
            Ok(PlaceVerdict::Inside)
        } else {
            Err(TxValidationError::PopOutsideCity {
                city: self.city.clone(),
                lat: pop.lat,
                lon: pop.lon,
            })
        }
    }
}

/// Checks nothing.
#[derive(Debug)]
pub struct Off;

impl PlaceEngine for Off {
    fn check(&self, _pop: Option<&Pop>) -> Result<PlaceVerdict, TxValidationError> {
        Ok(PlaceVerdict::Unchecked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_fence;

    /// Two squares, the second with a hole: (0..10, 0..10) and (20..30, 0..10) minus
    /// (24..26, 4..6).
    fn fence() -> MultiPolygon<f64> {
        parse_fence(
            r#"{"type":"MultiPolygon","coordinates":[
                [[[0,0],[10,0],[10,10],[0,10],[0,0]]],
                [[[20,0],[30,0],[30,10],[20,10],[20,0]],[[24,4],[26,4],[26,6],[24,6],[24,4]]]]}"#,
        )
        .unwrap()
    }

    fn at(lon: f64, lat: f64) -> Pop {
        Pop { lat, lon }
    }

    #[test]
    fn inside_either_polygon_or_on_an_edge_passes_outside_and_in_a_hole_fail() {
        let engine = Geofence::new("tokyo", Some(fence()), false);
        for inside in [at(5.0, 5.0), at(25.0, 2.0), at(0.0, 5.0), at(10.0, 10.0)] {
            assert_eq!(
                engine.check(Some(&inside)),
                Ok(PlaceVerdict::Inside),
                "{inside:?}"
            );
        }
        for outside in [
            at(15.0, 5.0),
            at(25.0, 5.0),
            at(-0.001, 5.0),
            at(5.0, 10.001),
        ] {
            let err = engine.check(Some(&outside)).unwrap_err();
            assert_eq!(err.code(), "pop_outside_city", "{outside:?}");
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains("tokyo"), "{err}");
        }
    }

    #[test]
    fn latitude_and_longitude_are_not_swapped() {
        // A thin fence along the equator: (lon 0..50, lat 0..1).
        let thin =
            parse_fence(r#"{"type":"Polygon","coordinates":[[[0,0],[50,0],[50,1],[0,1],[0,0]]]}"#)
                .unwrap();
        let engine = Geofence::new("x", Some(thin), false);
        assert!(engine.check(Some(&at(40.0, 0.5))).is_ok());
        assert!(engine.check(Some(&at(0.5, 40.0))).is_err());
    }

    #[test]
    fn require_refuses_a_missing_pop_and_without_a_fence_nothing_is_checked() {
        let required = Geofence::new("paris", Some(fence()), true);
        assert_eq!(required.check(None).unwrap_err().code(), "pop_required");
        let optional = Geofence::new("paris", Some(fence()), false);
        assert_eq!(optional.check(None), Ok(PlaceVerdict::Absent));
        let unfenced = Geofence::new("paris", None, false);
        assert_eq!(
            unfenced.check(Some(&at(100.0, 50.0))),
            Ok(PlaceVerdict::Unchecked)
        );
        assert_eq!(
            Off.check(Some(&at(100.0, 50.0))),
            Ok(PlaceVerdict::Unchecked)
        );
    }

    #[test]
    fn impossible_coordinates_are_invalid_not_outside() {
        let engine = Geofence::new("tokyo", Some(fence()), false);
        for bad in [at(181.0, 0.0), at(0.0, -90.5)] {
            assert_eq!(
                engine.check(Some(&bad)).unwrap_err().code(),
                "invalid_field"
            );
        }
    }

    #[test]
    fn the_example_fences_hold_their_city_centres_and_not_their_neighbours() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fences");
        let engine = |city: &str| {
            let config = PopConfig {
                fence_file: Some(dir.join(format!("{city}.geojson"))),
                ..PopConfig::default()
            };
            build(&config, city).unwrap()
        };
        let tokyo = engine("tokyo");
        assert!(tokyo.check(Some(&at(139.7671, 35.6812))).is_ok());
        assert!(tokyo.check(Some(&at(135.5023, 34.6937))).is_err(), "osaka");
        let paris = engine("paris");
        assert!(paris.check(Some(&at(2.3522, 48.8566))).is_ok());
        assert!(paris.check(Some(&at(139.7671, 35.6812))).is_err());
    }
}
