//! Knowledge distillation's teacher: loaded and checked against the student, and run on the
//! student's own batches for its softened probabilities.

use super::failure::TrainFailure;
use super::options::Distillation;
use crate::classifier::{Classifier, Runner};

/// The teacher's probabilities at `temperature` for the first `n` images of a batch of
/// student inputs (`res`² NHWC, normalised by `pre`): the inputs are turned back into the
/// pixels they came from and resized to the teacher's resolution.
pub(super) fn soft_targets(
    teacher: &dyn Classifier,
    runner: &mut dyn Runner,
    images: &[f32],
    n: usize,
    (res, pre): (usize, &crate::preprocess::Preprocessing),
    temperature: f32,
) -> Vec<f32> {
    let (scale, offset) = pre.norm.affine();
    let mut pixels = Vec::with_capacity(n * teacher.pixels_len());
    for img in images.chunks_exact(res * res * 3).take(n) {
        let rgb = image::RgbImage::from_fn(res as u32, res as u32, |x, y| {
            let i = (y as usize * res + x as usize) * 3;
            image::Rgb([0, 1, 2].map(|c| {
                ((img[i + c] - offset[c]) / scale[c])
                    .round()
                    .clamp(0.0, 255.0) as u8
            }))
        });
        pixels.extend(teacher.pixels(&rgb));
    }
    runner.load(&pixels);
    runner.run();
    let classes = teacher.classes().unwrap_or(0);
    let mut probs = vec![0.0; runner.batch() * classes];
    runner.probabilities(&mut probs);
    probs.truncate(n * classes);
    crate::train::head::soften(&mut probs, classes, temperature);
    probs
}

/// A loaded teacher held between the check and the run (its own `Debug`: a model is not
/// printed).
pub(super) struct Teacher(pub(super) Box<dyn Classifier>);

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Teacher")
    }
}

/// The teacher of a distilled run, checked against the student's class count.
pub(super) fn load_teacher(
    d: &Distillation,
    classes: Option<usize>,
) -> Result<Box<dyn Classifier>, TrainFailure> {
    let mut teacher = crate::classifier::load(&d.teacher)?;
    if teacher.classes() != classes {
        return Err(TrainFailure::Options(format!(
            "{}: the teacher has {} classes, the student {}",
            d.teacher.display(),
            teacher.classes().unwrap_or(0),
            classes.unwrap_or(0)
        )));
    }
    // The student's batch is already cropped: the teacher only resizes it.
    teacher.set_crop(1.0);
    Ok(teacher)
}
