//! `[pop]`: proof of place, the city's geofence (see `engines::pop`).

use std::path::{Path, PathBuf};

use geo::{MultiPolygon, Polygon};
use serde::{Deserialize, Serialize};

/// The proof-of-place engines a city can run (`[pop] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaceEngineName {
    /// A transaction's `pop` must fall inside the city's fence (on its edge counts).
    #[default]
    Geofence,
    /// `pop` is carried and stored, never checked.
    Off,
}

/// `[pop]`: where the city is. A transaction that carries `pop` is checked against the
/// fence; with `require`, one without `pop` is refused. With no fence, `pop` is not
/// checked (and `require` is a config error).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopConfig {
    pub engine: PlaceEngineName,
    /// Refuse transactions without `pop` (400 `pop_required`).
    pub require: bool,
    /// A GeoJSON file (Polygon, MultiPolygon, Feature or FeatureCollection of those):
    /// the city's fence. A relative path is relative to the config file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_file: Option<PathBuf>,
    /// The fence inline, as GeoJSON text (instead of `fence_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
}

/// Most vertices a fence may have: point-in-polygon is linear in them, and it runs on every
/// transaction that carries `pop`.
pub const MAX_FENCE_VERTICES: usize = 100_000;

impl PopConfig {
    /// The fence, read and parsed: `None` when none is configured.
    pub fn load_fence(&self) -> Result<Option<MultiPolygon<f64>>, String> {
        let text = match (&self.fence, &self.fence_file) {
            (Some(_), Some(_)) => {
                return Err("[pop] give fence or fence_file, not both".into());
            }
            (Some(text), None) => text.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("[pop] fence_file {}: {e}", path.display()))?,
            (None, None) => return Ok(None),
        };
        parse_fence(&text)
            .map(Some)
            .map_err(|e| format!("[pop] fence: {e}"))
    }

    /// Makes a relative `fence_file` relative to `dir` (the config file's directory).
    pub(super) fn resolve_paths(&mut self, dir: &Path) {
        if let Some(path) = &self.fence_file
            && path.is_relative()
        {
            self.fence_file = Some(dir.join(path));
        }
    }

    pub(super) fn problems(&self) -> Vec<String> {
        if self.engine == PlaceEngineName::Off {
            return Vec::new();
        }
        match self.load_fence() {
            Err(e) => vec![e],
            Ok(None) if self.require => {
                vec!["[pop] require = true needs a fence (fence or fence_file)".into()]
            }
            Ok(_) => Vec::new(),
        }
    }
}

/// Parses GeoJSON into the polygons of a fence: every geometry must be a Polygon or a
/// MultiPolygon, with coordinates in range (GeoJSON order: longitude, latitude).
pub fn parse_fence(text: &str) -> Result<MultiPolygon<f64>, String> {
    let json: geojson::GeoJson = text.parse().map_err(|e| format!("not GeoJSON: {e}"))?;
    let collection = geo::GeometryCollection::<f64>::try_from(&json)
        .map_err(|e| format!("not a geometry: {e}"))?;
    let mut polygons: Vec<Polygon<f64>> = Vec::new();
    for geometry in collection {
        match geometry {
            geo::Geometry::Polygon(p) => polygons.push(p),
            geo::Geometry::MultiPolygon(m) => polygons.extend(m),
            other => {
                return Err(format!(
                    "a fence is made of Polygons and MultiPolygons, not {}",
                    geometry_name(&other)
                ));
            }
        }
    }
    if polygons.is_empty() {
        return Err("no polygon in it".into());
    }
    let mut vertices = 0;
    for polygon in &polygons {
        for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
            vertices += ring.0.len();
            if let Some(c) = ring
                .0
                .iter()
                .find(|c| !(-180.0..=180.0).contains(&c.x) || !(-90.0..=90.0).contains(&c.y))
            {
                return Err(format!(
                    "position [{}, {}] is not a longitude and latitude",
                    c.x, c.y
                ));
            }
        }
        if polygon.exterior().0.len() < 4 {
            return Err("a polygon's ring needs at least 4 positions".into());
        }
    }
    if vertices > MAX_FENCE_VERTICES {
        return Err(format!(
            "{vertices} positions (at most {MAX_FENCE_VERTICES})"
        ));
    }
    Ok(MultiPolygon(polygons))
}

fn geometry_name(g: &geo::Geometry<f64>) -> &'static str {
    match g {
        geo::Geometry::Point(_) => "a Point",
        geo::Geometry::Line(_) | geo::Geometry::LineString(_) => "a LineString",
        geo::Geometry::MultiPoint(_) => "a MultiPoint",
        geo::Geometry::MultiLineString(_) => "a MultiLineString",
        geo::Geometry::GeometryCollection(_) => "a GeometryCollection",
        _ => "another geometry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}"#;

    #[test]
    fn fences_parse_from_each_geojson_shape() {
        assert_eq!(parse_fence(SQUARE).unwrap().0.len(), 1);
        let multi = r#"{"type":"MultiPolygon","coordinates":[
            [[[0,0],[1,0],[1,1],[0,0]]], [[[5,5],[6,5],[6,6],[5,5]]]]}"#;
        assert_eq!(parse_fence(multi).unwrap().0.len(), 2);
        let collection = format!(
            r#"{{"type":"FeatureCollection","features":[
                {{"type":"Feature","properties":{{"name":"a"}},"geometry":{SQUARE}}},
                {{"type":"Feature","properties":null,"geometry":{SQUARE}}}]}}"#
        );
        assert_eq!(parse_fence(&collection).unwrap().0.len(), 2);
    }

    #[test]
    fn what_is_not_a_fence_is_refused_with_the_reason() {
        for (text, why) in [
            ("{", "not GeoJSON"),
            (r#"{"type":"Point","coordinates":[1,2]}"#, "not a Point"),
            (
                r#"{"type":"Polygon","coordinates":[[[0,0],[200,0],[1,1],[0,0]]]}"#,
                "not a longitude",
            ),
            (
                r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
                "at least 4",
            ),
            (
                r#"{"type":"FeatureCollection","features":[]}"#,
                "no polygon",
            ),
        ] {
            let err = parse_fence(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn require_needs_a_fence_and_off_checks_nothing() {
        let required = PopConfig {
            require: true,
            ..PopConfig::default()
        };
        assert!(required.problems()[0].contains("needs a fence"));
        let both = PopConfig {
            fence: Some(SQUARE.into()),
            fence_file: Some("x.geojson".into()),
            ..PopConfig::default()
        };
        assert!(both.problems()[0].contains("not both"));
        let missing = PopConfig {
            fence_file: Some("/nonexistent/fence.geojson".into()),
            ..PopConfig::default()
        };
        assert!(missing.problems()[0].contains("/nonexistent/fence.geojson"));
        let off = PopConfig {
            engine: PlaceEngineName::Off,
            fence: Some("{".into()),
            ..PopConfig::default()
        };
        assert!(off.problems().is_empty());
        let mut relative = PopConfig {
            fence_file: Some("fences/tokyo.geojson".into()),
            ..PopConfig::default()
        };
        relative.resolve_paths(Path::new("/etc/citychain"));
        assert_eq!(
            relative.fence_file.unwrap(),
            Path::new("/etc/citychain/fences/tokyo.geojson")
        );
    }
}
