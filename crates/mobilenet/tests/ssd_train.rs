//! Training a small SSD on generated images: the loss falls, the trained detector finds the
//! objects (COCO AP50 on its training images), and a run resumed from its checkpoint is the
//! run that never stopped.

use std::path::Path;

use mobilenet::detect::{coco_evaluate, CocoDataset, DetectorConfig, DetectorFile};
use mobilenet::train::optim::{OptimizerKind, Schedule};
use mobilenet::train::ssd::{DetectionData, SsdRun, SsdTrainOptions};
use mobilenet::Rng;

/// `count` 96×96 images, each with a white and a red square at random places (classes 1, 2),
/// written as PNG files with their COCO annotations.
fn generated(dir: &Path, count: usize) -> CocoDataset {
    std::fs::create_dir_all(dir).expect("should succeed");
    let mut rng = Rng::new(7);
    let (mut images, mut annotations) = (Vec::new(), Vec::new());
    for i in 0..count {
        let mut img = image::RgbImage::from_pixel(96, 96, image::Rgb([40, 60, 40]));
        for (class, color) in [(1u64, [250u8, 250, 250]), (2, [230, 30, 30])] {
            let side = 24 + rng.below(20) as u32;
            let (x, y) = (
                rng.below((96 - side) as usize) as u32,
                rng.below((96 - side) as usize) as u32,
            );
            for py in y..y + side {
                for px in x..x + side {
                    img.put_pixel(px, py, image::Rgb(color));
                }
            }
            let id = annotations.len() + 1;
            annotations.push(
                serde_json::json!({"id": id, "image_id": i + 1, "category_id": class,
                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0}),
            );
        }
        let name = format!("{i}.png");
        img.save(dir.join(&name)).expect("should succeed");
        images.push(serde_json::json!({"id": i + 1, "file_name": name, "width": 96, "height": 96}));
    }
    let json = serde_json::json!({"images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "white"}, {"id": 2, "name": "red"}]});
    let path = dir.join("annotations.json");
    std::fs::write(&path, json.to_string()).expect("should succeed");
    CocoDataset::load(&path).expect("should succeed")
}

fn options(epochs: usize) -> SsdTrainOptions {
    SsdTrainOptions {
        epochs,
        batch_size: 4,
        lr: 0.01,
        schedule: Schedule::Constant,
        optimizer: OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            decoupled: false,
        },
        weight_decay: 0.0,
        bn_decay: 0.9,
        augment: false,
        seed: 1,
        eval_every: 1000,
    }
}

fn detector() -> DetectorFile {
    let mut config = DetectorConfig::ssd300(3, vec!["white".into(), "red".into()]);
    config.name = "tiny".into();
    config.input = 96;
    config.alpha = 0.25;
    config.extra_depths = vec![64, 32];
    DetectorFile::random(config, 5).expect("should succeed")
}

#[test]
fn a_small_detector_learns_and_resumes_exactly() {
    let root = std::env::temp_dir().join(format!("mobilenet-ssd-train-{}", std::process::id()));
    let images = root.join("images");
    let coco = generated(&images, 8);
    let mut data = DetectionData::from_coco(&coco, &images);
    assert_eq!(data.labels, ["white", "red"]);
    let file = detector();

    let mut run = SsdRun::new(&root.join("a"), &file, options(24), 2).expect("should succeed");
    run.run(&mut data, None, &mut |_| {}, &mut |_| {}, &|| false)
        .expect("should succeed");
    let first = run.history[0].loss_boxes + run.history[0].loss_classes;
    let last = run
        .history
        .last()
        .map(|e| e.loss_boxes + e.loss_classes)
        .expect("should succeed");
    assert!(last < 0.5 * first, "loss {first} → {last}");
    let stats = run.evaluate(&coco, &images).expect("should succeed");
    eprintln!(
        "loss {first:.3} → {last:.3}; AP50 {:.3}, mAP {:.3}",
        stats.ap50, stats.ap
    );
    assert!(
        stats.ap50 > 0.3,
        "AP50 on the training images {}",
        stats.ap50
    );
    // The checkpoint's detector file detects as the evaluation did.
    let saved =
        DetectorFile::load(&root.join("a").join("detector.safetensors")).expect("should succeed");
    // It scores with softmax, the loss it was trained with.
    assert_eq!(
        saved.config.score,
        mobilenet::detect::ScoreFunction::Softmax
    );
    let detector = mobilenet::detect::Detector::new(&saved).expect("should succeed");
    let map = mobilenet::detect::category_map(&saved.config.labels, &coco.categories)
        .expect("should succeed");
    let nms = mobilenet::detect::NmsConfig {
        min_score: 0.01,
        ..saved.config.nms
    };
    let results = mobilenet::detect::detect_dataset(
        &mut detector.session(1),
        &coco,
        &images,
        &nms,
        &map,
        &mut |_| {},
    )
    .expect("should succeed");
    assert_eq!(
        coco_evaluate(&coco, &results).expect("should succeed"),
        stats
    );

    // 2 epochs, stop, resume to 4 = 4 epochs straight.
    let mut straight = SsdRun::new(&root.join("b"), &file, options(4), 2).expect("should succeed");
    straight
        .run(&mut data, None, &mut |_| {}, &mut |_| {}, &|| false)
        .expect("should succeed");
    let mut first_half =
        SsdRun::new(&root.join("c"), &file, options(2), 2).expect("should succeed");
    first_half
        .run(&mut data, None, &mut |_| {}, &mut |_| {}, &|| false)
        .expect("should succeed");
    let mut resumed = SsdRun::resume(&root.join("c"), 2).expect("should succeed");
    resumed.options.epochs = 4;
    resumed
        .run(&mut data, None, &mut |_| {}, &mut |_| {}, &|| false)
        .expect("should succeed");
    let losses = |r: &SsdRun| {
        r.history
            .iter()
            .map(|e| (e.loss_boxes, e.loss_classes))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&resumed), losses(&straight));
    assert_eq!(resumed.net.params, straight.net.params);
    std::fs::remove_dir_all(&root).ok();
}
