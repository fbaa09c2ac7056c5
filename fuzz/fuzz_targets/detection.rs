//! The detection readers on arbitrary bytes: COCO instances JSON, and a TF.js weights manifest
//! whose shards are the input's tail. An error naming the file, or a value whose checks hold;
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mobilenet::detect::tfjs::parse_manifest;
use mobilenet::detect::{coco_evaluate, CocoDataset, CocoResult};

fuzz_target!(|data: &[u8]| {
    if let Ok(coco) = CocoDataset::from_bytes(data, Path::new("fuzz.json")) {
        // Annotations that load evaluate: their own boxes as detections.
        let results: Vec<CocoResult> = coco
            .annotations
            .iter()
            .map(|a| CocoResult {
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                score: 0.5,
            })
            .collect();
        coco_evaluate(&coco, &results).expect("loaded annotations evaluate");
    }
    // First byte: where the manifest ends and the shard bytes begin.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len()) / 256;
    let (manifest, shard) = rest.split_at(cut);
    let _ = parse_manifest(manifest, Path::new("fuzz-manifest.json"), &mut |_| Ok(shard.to_vec()));
});
