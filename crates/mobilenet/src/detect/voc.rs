//! Pascal VOC annotations (one XML file per image: `<filename>`, `<size>`, `<object>`s with
//! `<name>`, `<difficult>` and `<bndbox>`), read into the same [`CocoDataset`] as COCO's JSON.
//!
//! Boxes `xmin, ymin, xmax, ymax` become `[xmin, ymin, xmax − xmin, ymax − ymin]`; objects
//! marked difficult become crowd regions (VOC's evaluation ignores them, training skips them);
//! categories are the object names in sorted order, ids from 1.

use std::path::Path;

use super::coco::{AnnotationError, CocoAnnotation, CocoCategory, CocoDataset, CocoImage};

/// Largest annotation file read (a VOC file is a few KB).
const MAX_XML_BYTES: u64 = 4 << 20;

/// One object as read.
struct Object {
    name: String,
    difficult: bool,
    bbox: [f64; 4],
}

/// Reads every `.xml` file in `dir` (sorted by name) as the images and objects of a data set.
///
/// # Errors
///
/// The folder or a file cannot be read; a file is not XML, lacks a filename, size or box
/// field, or has a box that is not finite or has no area (named by file and object); the
/// checks of [`CocoDataset::load`].
pub fn load_voc(dir: &Path) -> Result<CocoDataset, AnnotationError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AnnotationError::Io { path, source }
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(AnnotationError::Format {
            path: dir.to_path_buf(),
            reason: "no .xml annotation files in the folder".into(),
        });
    }
    let mut parsed = Vec::with_capacity(files.len());
    for path in &files {
        let size = std::fs::metadata(path).map_err(io(path))?.len();
        if size > MAX_XML_BYTES {
            return Err(AnnotationError::Format {
                path: path.clone(),
                reason: format!("{size} bytes is too large for an annotation"),
            });
        }
        let bytes = crate::files::read_regular(path).map_err(io(path))?;
        parsed.push(parse_voc(&bytes, path)?);
    }
    let mut names: Vec<String> = parsed
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(|o| o.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    let categories = names
        .iter()
        .enumerate()
        .map(|(i, name)| CocoCategory {
            id: i as u64 + 1,
            name: name.clone(),
        })
        .collect();
    let (mut images, mut annotations) = (Vec::new(), Vec::new());
    for (i, (image, objects)) in parsed.into_iter().enumerate() {
        let id = i as u64 + 1;
        for o in objects {
            let category = names.iter().position(|n| *n == o.name).unwrap_or(0) as u64 + 1;
            annotations.push(CocoAnnotation {
                id: annotations.len() as u64 + 1,
                image_id: id,
                category_id: category,
                bbox: o.bbox,
                area: None,
                iscrowd: o.difficult,
            });
        }
        images.push(CocoImage { id, ..image });
    }
    let data = CocoDataset {
        images,
        annotations,
        categories,
    };
    let json = serde_json::to_vec(&data).map_err(|e| AnnotationError::Format {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    // The same checks as a COCO file (boxes inside their images, names).
    CocoDataset::from_bytes(&json, dir)
}

/// Annotations from `path`: a COCO instances JSON file, or a folder of Pascal VOC XML files.
///
/// # Errors
///
/// As [`CocoDataset::load`] or [`load_voc`].
pub fn load_annotations(path: &Path) -> Result<CocoDataset, AnnotationError> {
    if path.is_dir() {
        load_voc(path)
    } else {
        CocoDataset::load(path)
    }
}

/// One VOC file: its image (id 0 until numbered) and objects.
fn parse_voc(bytes: &[u8], path: &Path) -> Result<(CocoImage, Vec<Object>), AnnotationError> {
    let bad = |entry: &str, reason: String| AnnotationError::Entry {
        path: path.to_path_buf(),
        entry: entry.to_string(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| AnnotationError::Format {
        path: path.to_path_buf(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let doc = roxmltree::Document::parse(text).map_err(|e| AnnotationError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let root = doc.root_element();
    let child = |node: roxmltree::Node<'_, '_>, tag: &str| {
        node.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    let file_name =
        child(root, "filename").ok_or_else(|| bad("annotation", "no <filename>".into()))?;
    let size = root
        .children()
        .find(|c| c.has_tag_name("size"))
        .ok_or_else(|| bad("annotation", "no <size>".into()))?;
    let dim = |tag: &str| -> Result<u32, AnnotationError> {
        child(size, tag)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 1.0 && *v <= u32::MAX as f64)
            .map(|v| v as u32)
            .ok_or_else(|| {
                bad(
                    "size",
                    format!("<{tag}> is missing or not a positive number"),
                )
            })
    };
    let image = CocoImage {
        id: 0,
        file_name,
        width: dim("width")?,
        height: dim("height")?,
    };
    let mut objects = Vec::new();
    for (i, o) in root
        .children()
        .filter(|c| c.has_tag_name("object"))
        .enumerate()
    {
        let entry = format!("object[{i}]");
        let name = child(o, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(&entry, "no <name>".into()))?;
        let difficult = child(o, "difficult").is_some_and(|d| d == "1");
        let bndbox = o
            .children()
            .find(|c| c.has_tag_name("bndbox"))
            .ok_or_else(|| bad(&entry, "no <bndbox>".into()))?;
        let mut v = [0.0f64; 4];
        for (k, tag) in ["xmin", "ymin", "xmax", "ymax"].iter().enumerate() {
            v[k] = child(bndbox, tag)
                .and_then(|t| t.parse::<f64>().ok())
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(&entry, format!("<{tag}> is missing or not a number")))?;
        }
        objects.push(Object {
            name,
            difficult,
            bbox: [v[0], v[1], v[2] - v[0], v[3] - v[1]],
        });
    }
    Ok((image, objects))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOC: &str = "<annotation><filename>a.jpg</filename>\
        <size><width>100</width><height>80</height><depth>3</depth></size>\
        <object><name>dog</name><difficult>0</difficult>\
        <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>\
        <object><name>cat</name><difficult>1</difficult>\
        <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>\
        </annotation>";

    #[test]
    fn reads_a_folder_and_names_bad_files() {
        let dir = std::env::temp_dir().join(format!("mobilenet-voc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        std::fs::write(dir.join("a.xml"), VOC).expect("write");
        let data = load_voc(&dir).expect("a VOC folder");
        assert_eq!(data.images[0].file_name, "a.jpg");
        assert_eq!((data.images[0].width, data.images[0].height), (100, 80));
        let names: Vec<&str> = data.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cat", "dog"]);
        let dog = &data.annotations[0];
        assert_eq!(
            (dog.category_id, dog.bbox, dog.iscrowd),
            (2, [10.0, 20.0, 40.0, 40.0], false)
        );
        assert!(
            data.annotations[1].iscrowd,
            "difficult objects are ignored like crowds"
        );
        std::fs::write(
            dir.join("b.xml"),
            VOC.replace("<xmax>50</xmax>", "<xmax>500</xmax>"),
        )
        .expect("write");
        let err = load_voc(&dir)
            .expect_err("a box outside its image")
            .to_string();
        assert!(err.contains("outside its 100×80 image"), "{err}");
        std::fs::write(dir.join("b.xml"), VOC.replace("<ymin>20</ymin>", "")).expect("write");
        let err = load_voc(&dir).expect_err("a box without ymin").to_string();
        assert!(err.contains("b.xml: object[0]: <ymin> is missing"), "{err}");
        std::fs::write(dir.join("b.xml"), "<annotation>").expect("write");
        let err = load_voc(&dir).expect_err("not XML").to_string();
        assert!(err.contains("b.xml"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
