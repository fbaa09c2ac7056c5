//! COCO instances annotations (the `instances_*.json` files): images, boxes, categories, read
//! and checked so that a bad entry is named with its file and index.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading annotations: the file and what is wrong with which entry.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("{path}: not COCO instances JSON: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// One entry is invalid.
    #[error("{path}: {entry}: {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// Which entry, e.g. `annotations[12] (id 9034)`.
        entry: String,
        /// What is wrong.
        reason: String,
    },
}

/// One image of the data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    /// Image id.
    pub id: u64,
    /// File name, relative to the images folder.
    pub file_name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    /// Annotation id.
    pub id: u64,
    /// The image it is in.
    pub image_id: u64,
    /// Its category.
    pub category_id: u64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// Object area (COCO: of the segmentation; evaluation's size ranges use it). Box area when
    /// absent.
    #[serde(default)]
    pub area: Option<f64>,
    /// A crowd region: matching it neither helps nor hurts.
    #[serde(default, deserialize_with = "flag", serialize_with = "flag_out")]
    pub iscrowd: bool,
}

/// One category.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    /// Category id (COCO: 1–90 with gaps).
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// A COCO instances file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoDataset {
    /// The images.
    pub images: Vec<CocoImage>,
    /// The objects.
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    /// The categories.
    pub categories: Vec<CocoCategory>,
}

fn flag_out<S: serde::Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(u8::from(*v))
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(u64),
    }
    Ok(match Flag::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Int(n) => n != 0,
    })
}

/// How far a box may reach past the image's edge (COCO's boxes are float pixel coordinates
/// that touch the edge exactly, up to rounding).
const EDGE_SLACK: f64 = 1.0;

impl CocoDataset {
    /// Reads and checks a COCO instances file.
    ///
    /// # Errors
    ///
    /// The file cannot be read or parsed; an image, annotation or category is invalid: a
    /// duplicate id, an annotation of an unknown image or category, a box that is not finite,
    /// has no area, or lies outside its image; an empty category name.
    pub fn load(path: &Path) -> Result<CocoDataset, AnnotationError> {
        let bytes = crate::files::read_regular(path).map_err(|source| AnnotationError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        CocoDataset::from_bytes(&bytes, path)
    }

    /// As [`CocoDataset::load`], from bytes (`path` names them in messages).
    ///
    /// # Errors
    ///
    /// As [`CocoDataset::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<CocoDataset, AnnotationError> {
        let data: CocoDataset =
            serde_json::from_slice(bytes).map_err(|e| AnnotationError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        data.check(path)?;
        Ok(data)
    }

    fn check(&self, path: &Path) -> Result<(), AnnotationError> {
        let entry = |kind: &str, i: usize, id: u64, reason: String| AnnotationError::Entry {
            path: path.to_path_buf(),
            entry: format!("{kind}[{i}] (id {id})"),
            reason,
        };
        let mut images = HashMap::new();
        for (i, img) in self.images.iter().enumerate() {
            if img.width == 0 || img.height == 0 {
                return Err(entry(
                    "images",
                    i,
                    img.id,
                    "width and height must be positive".into(),
                ));
            }
            if img.file_name.is_empty()
                || Path::new(&img.file_name).is_absolute()
                || img.file_name.contains("..")
            {
                return Err(entry(
                    "images",
                    i,
                    img.id,
                    format!(
                        "file_name {:?} is not a relative path inside the images folder",
                        img.file_name
                    ),
                ));
            }
            if images.insert(img.id, img).is_some() {
                return Err(entry("images", i, img.id, "duplicate image id".into()));
            }
        }
        let mut categories = HashSet::new();
        for (i, c) in self.categories.iter().enumerate() {
            if c.name.trim().is_empty() {
                return Err(entry("categories", i, c.id, "empty name".into()));
            }
            if !categories.insert(c.id) {
                return Err(entry("categories", i, c.id, "duplicate category id".into()));
            }
        }
        let mut ids = HashSet::new();
        for (i, a) in self.annotations.iter().enumerate() {
            let bad = |reason: String| entry("annotations", i, a.id, reason);
            if !ids.insert(a.id) {
                return Err(bad("duplicate annotation id".into()));
            }
            let Some(img) = images.get(&a.image_id) else {
                return Err(bad(format!("image_id {} is not in images", a.image_id)));
            };
            if !categories.contains(&a.category_id) {
                return Err(bad(format!(
                    "category_id {} is not in categories",
                    a.category_id
                )));
            }
            let [x, y, w, h] = a.bbox;
            if a.bbox.iter().any(|v| !v.is_finite()) || w <= 0.0 || h <= 0.0 {
                return Err(bad(format!(
                    "bbox {:?} must be finite with positive width and height",
                    a.bbox
                )));
            }
            let (iw, ih) = (img.width as f64, img.height as f64);
            if x < -EDGE_SLACK
                || y < -EDGE_SLACK
                || x + w > iw + EDGE_SLACK
                || y + h > ih + EDGE_SLACK
            {
                return Err(bad(format!(
                    "bbox {:?} lies outside its {}×{} image {:?}",
                    a.bbox, img.width, img.height, img.file_name
                )));
            }
            if a.area.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(bad("area must be finite and not negative".into()));
            }
        }
        Ok(())
    }

    /// The annotation's area as evaluation uses it: `area`, or the box's when absent.
    pub fn area(a: &CocoAnnotation) -> f64 {
        a.area.unwrap_or(a.bbox[2] * a.bbox[3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CocoDataset, AnnotationError> {
        CocoDataset::from_bytes(text.as_bytes(), Path::new("ann.json"))
    }

    const OK: &str = r#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0}]}"#;

    #[test]
    fn reads_and_names_bad_entries() {
        let d = parse(OK).expect("should succeed");
        assert_eq!(CocoDataset::area(&d.annotations[0]), 16.0);
        let cases = [
            (
                OK.replace("\"image_id\": 1", "\"image_id\": 2"),
                "annotations[0] (id 7): image_id 2",
            ),
            (
                OK.replace("[1, 1, 4, 4]", "[8, 1, 4, 4]"),
                "outside its 10×8 image",
            ),
            (OK.replace("[1, 1, 4, 4]", "[1, 1, 0, 4]"), "positive width"),
            (
                OK.replace("\"category_id\": 3", "\"category_id\": 4"),
                "category_id 4",
            ),
            (OK.replace("\"a.jpg\"", "\"../a.jpg\""), "images[0] (id 1)"),
            (
                OK.replace("\"width\": 10", "\"width\": -1"),
                "not COCO instances JSON",
            ),
            (OK[..40].to_string(), "not COCO instances JSON"),
        ];
        for (text, want) in cases {
            let err = parse(&text).expect_err("should fail").to_string();
            assert!(err.starts_with("ann.json: ") && err.contains(want), "{err}");
        }
        // No annotations at all is a valid (empty) data set.
        let empty = r#"{"images": [], "categories": [{"id": 1, "name": "x"}]}"#;
        assert!(parse(empty).expect("should succeed").annotations.is_empty());
    }
}
