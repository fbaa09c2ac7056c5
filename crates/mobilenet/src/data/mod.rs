//! Training data: image folders, CIFAR-10 binary batches, Fashion-MNIST IDX files; the paper's
//! light augmentation; and a loader that decodes and augments batches on worker threads ahead of
//! the training step.

mod augment;
mod fingerprint;
mod idx;
mod loader;
mod split;

pub use augment::{prepare, Augment};
pub use fingerprint::Fingerprint;
pub use loader::{Batch, Loader};
pub use split::{shuffle, Holdout};

use idx::{parse_idx, read_idx};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::Rng;

/// A data set that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The contents are not what the format says.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image of the data set does not decode.
    #[error(transparent)]
    Image(#[from] crate::ImageError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the images of a data set come from.
#[derive(Debug)]
enum Source {
    /// Decoded 8-bit images held in memory, `[count, h, w, channels]` (channels 1 or 3).
    Pixels {
        height: u32,
        width: u32,
        channels: u32,
        pixels: Vec<u8>,
    },
    /// Image files, decoded when loaded.
    Files(Vec<PathBuf>),
}

impl Source {
    /// The bytes of image `j` held in memory (`None` for image files).
    fn raw(&self, j: usize) -> Option<&[u8]> {
        match self {
            Source::Pixels {
                height,
                width,
                channels,
                pixels,
            } => {
                let n = *height as usize * *width as usize * *channels as usize;
                Some(&pixels[j * n..(j + 1) * n])
            }
            Source::Files(_) => None,
        }
    }
}

/// A labelled image data set; cheap to clone and to take subsets of.
#[derive(Clone, Debug)]
pub struct Dataset {
    classes: Arc<Vec<String>>,
    source: Arc<Source>,
    labels: Arc<Vec<usize>>,
    /// Indices into `source` of the images in this (sub)set.
    indices: Arc<Vec<usize>>,
    /// Whether batches leave out images that do not decode instead of failing.
    skip_bad: bool,
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

impl Dataset {
    fn new(classes: Vec<String>, source: Source, labels: Vec<usize>) -> Dataset {
        let n = labels.len();
        Dataset {
            classes: Arc::new(classes),
            source: Arc::new(source),
            labels: Arc::new(labels),
            indices: Arc::new((0..n).collect()),
            skip_bad: false,
        }
    }

    /// This set with images that cannot be read or decoded left out of its batches (each one
    /// reported in [`Batch::skipped`]) instead of failing the batch: large real folders hold a
    /// few broken files. Which images are left out depends only on the files, so a run stays
    /// reproducible.
    pub fn skipping_bad_images(mut self, skip: bool) -> Dataset {
        self.skip_bad = skip;
        self
    }

    /// Whether batches leave out images that do not decode.
    pub fn skips_bad_images(&self) -> bool {
        self.skip_bad
    }

    /// Fashion-MNIST from its IDX image and label files (gzipped or not).
    pub fn fashion_mnist(images: &Path, labels: &Path) -> Result<Dataset, DataError> {
        Dataset::from_idx(read_idx(images, 3)?, images, read_idx(labels, 1)?, labels)
    }

    /// The 10,000-image Fashion-MNIST test set built into the binary (MIT, Zalando SE), the
    /// default data of `mobilenet train`.
    pub fn builtin_fashion_mnist() -> Dataset {
        const IMAGES: &[u8] = include_bytes!("../../data/fashion-mnist/t10k-images-idx3-ubyte.gz");
        const LABELS: &[u8] = include_bytes!("../../data/fashion-mnist/t10k-labels-idx1-ubyte.gz");
        let (ip, lp) = (
            Path::new("<built-in images>"),
            Path::new("<built-in labels>"),
        );
        // The embedded files are checked by a test; they cannot be malformed at run time.
        match (parse_idx(IMAGES, ip, 3), parse_idx(LABELS, lp, 1)) {
            (Ok(img), Ok(lab)) => Dataset::from_idx(img, ip, lab, lp).unwrap_or_else(|e| {
                unreachable!("the built-in Fashion-MNIST files are valid: {e}")
            }),
            _ => unreachable!("the built-in Fashion-MNIST files are valid gzipped IDX"),
        }
    }

    fn from_idx(
        (ishape, pixels): (Vec<usize>, Vec<u8>),
        ip: &Path,
        (lshape, labels): (Vec<usize>, Vec<u8>),
        lp: &Path,
    ) -> Result<Dataset, DataError> {
        let per_image = ishape[1] as u64 * ishape[2] as u64;
        if per_image == 0 || per_image > crate::preprocess::max_image_pixels() {
            return Err(DataError::Format {
                path: ip.to_path_buf(),
                reason: format!(
                    "images of {}×{} pixels (up to {} are read)",
                    ishape[1],
                    ishape[2],
                    crate::preprocess::max_image_pixels()
                ),
            });
        }
        if ishape[0] != lshape[0] {
            return Err(DataError::Format {
                path: lp.to_path_buf(),
                reason: format!("{} labels for {} images", lshape[0], ishape[0]),
            });
        }
        let labels: Vec<usize> = labels.into_iter().map(usize::from).collect();
        // MNIST and Fashion-MNIST have ten classes; a larger label is a corrupt file, not
        // a reason to grow the classifier.
        let classes = FASHION_MNIST_CLASSES.len();
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(DataError::Format {
                path: lp.to_path_buf(),
                reason: format!(
                    "label {l} of image {i} is not a class (0..={})",
                    classes - 1
                ),
            });
        }
        let names = FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect();
        Ok(Dataset::new(
            names,
            Source::Pixels {
                height: ishape[1] as u32,
                width: ishape[2] as u32,
                channels: 1,
                pixels,
            },
            labels,
        ))
    }

    /// CIFAR-10 binary batches: 3073-byte records (label, 1024 R, 1024 G, 1024 B), 32×32.
    pub fn cifar10_binary(files: &[PathBuf]) -> Result<Dataset, DataError> {
        const RECORD: usize = 1 + 3 * 1024;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for path in files {
            let bytes = crate::files::read_regular(path).map_err(io_err(path))?;
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                return Err(DataError::Format {
                    path: path.clone(),
                    reason: format!(
                        "{} bytes is not a whole number of 3073-byte CIFAR records",
                        bytes.len()
                    ),
                });
            }
            for rec in bytes.chunks_exact(RECORD) {
                if rec[0] >= 10 {
                    return Err(DataError::Format {
                        path: path.clone(),
                        reason: format!("label {} is not a CIFAR-10 class", rec[0]),
                    });
                }
                labels.push(rec[0] as usize);
                // Planar RGB → interleaved.
                for i in 0..1024 {
                    pixels.extend_from_slice(&[rec[1 + i], rec[1025 + i], rec[2049 + i]]);
                }
            }
        }
        let classes = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
        Ok(Dataset::new(
            classes,
            Source::Pixels {
                height: 32,
                width: 32,
                channels: 3,
                pixels,
            },
            labels,
        ))
    }

    /// An image folder: one sub-folder per class (sorted by name = label order), image files
    /// (JPEG, PNG, BMP, WebP) inside; the layout of ImageNet and Stanford Dogs.
    pub fn image_folder(root: &Path) -> Result<Dataset, DataError> {
        // Hidden folders (`.git`, `.ipynb_checkpoints`) are not classes.
        let mut classes: Vec<(String, PathBuf)> = std::fs::read_dir(root)
            .map_err(io_err(root))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(DataError::Format {
                path: root.to_path_buf(),
                reason: "no class sub-folders".into(),
            });
        }
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut empty = Vec::new();
        for (label, (name, dir)) in classes.iter().enumerate() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        matches!(
                            e.to_ascii_lowercase().as_str(),
                            "jpg" | "jpeg" | "png" | "bmp" | "webp"
                        )
                    })
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                empty.push(name.as_str());
            }
            labels.extend(std::iter::repeat_n(label, entries.len()));
            files.extend(entries);
        }
        if files.is_empty() {
            return Err(DataError::Format {
                path: root.to_path_buf(),
                reason: "the class folders hold no JPEG, PNG, BMP or WebP files".into(),
            });
        }
        // A class without images would still get an output the model can never learn, and
        // every label after it would shift if the folder were dropped: refuse, like
        // torchvision's ImageFolder.
        if !empty.is_empty() {
            return Err(DataError::Format {
                path: root.to_path_buf(),
                reason: format!(
                    "class folder{} {} hold{} no JPEG, PNG, BMP or WebP files (remove {} or \
                     add images)",
                    if empty.len() == 1 { "" } else { "s" },
                    empty.join(", "),
                    if empty.len() == 1 { "s" } else { "" },
                    if empty.len() == 1 { "it" } else { "them" },
                ),
            });
        }
        Ok(Dataset::new(
            classes.into_iter().map(|(n, _)| n).collect(),
            Source::Files(files),
            labels,
        ))
    }

    /// Opens a data set by looking at `path`: a folder of `*.bin` CIFAR batches, a folder with
    /// Fashion-MNIST/MNIST IDX files (`<prefix>-images-idx3-ubyte[.gz]` and labels), or an
    /// image folder.
    pub fn open(path: &Path) -> Result<Dataset, DataError> {
        if path.is_file() && path.extension().is_some_and(|e| e == "bin") {
            return Dataset::cifar10_binary(&[path.to_path_buf()]);
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let named = |needle: &str| -> Option<PathBuf> {
            let mut found: Vec<&PathBuf> = entries
                .iter()
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.contains(needle))
                })
                .collect();
            found.sort();
            found.first().map(|p| (*p).clone())
        };
        if let (Some(images), Some(labels)) =
            (named("images-idx3-ubyte"), named("labels-idx1-ubyte"))
        {
            return Dataset::fashion_mnist(&images, &labels);
        }
        let mut bins: Vec<PathBuf> = entries
            .iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "bin"))
            .cloned()
            .collect();
        if !bins.is_empty() {
            bins.sort();
            return Dataset::cifar10_binary(&bins);
        }
        Dataset::image_folder(path)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> usize {
        self.labels[self.indices[i]]
    }

    /// Where image `i` comes from, for reports: its file, or `#n` (its position in the IDX or
    /// CIFAR file).
    pub fn describe(&self, i: usize) -> String {
        match &*self.source {
            Source::Files(files) => files[self.indices[i]].display().to_string(),
            Source::Pixels { .. } => format!("#{}", self.indices[i]),
        }
    }

    /// Image `i` as 8-bit RGB (grayscale replicated to three channels).
    pub fn image(&self, i: usize) -> Result<RgbImage, DataError> {
        let j = self.indices[i];
        match &*self.source {
            Source::Pixels {
                height,
                width,
                channels,
                ..
            } => {
                let px = self.source.raw(j).unwrap_or_default();
                Ok(if *channels == 1 {
                    RgbImage::from_fn(*width, *height, |x, y| {
                        let v = px[(y * width + x) as usize];
                        image::Rgb([v, v, v])
                    })
                } else {
                    RgbImage::from_raw(*width, *height, px.to_vec())
                        .unwrap_or_else(|| unreachable!("the slice holds w·h·3 bytes"))
                })
            }
            Source::Files(files) => Ok(crate::preprocess::load_image(&files[j])?),
        }
    }

    /// Calls `f` with image `i`; an image file counts against the decoding budget meanwhile
    /// (see [`load_image_with`](crate::preprocess::load_image_with)).
    pub fn with_image<T>(&self, i: usize, f: impl FnOnce(&RgbImage) -> T) -> Result<T, DataError> {
        match &*self.source {
            Source::Files(files) => Ok(crate::preprocess::load_image_with(
                &files[self.indices[i]],
                f,
            )?),
            Source::Pixels { .. } => Ok(f(&self.image(i)?)),
        }
    }

    /// The images at `positions` (indices into this set).
    pub fn subset(&self, positions: &[usize]) -> Dataset {
        Dataset {
            indices: Arc::new(positions.iter().map(|&p| self.indices[p]).collect()),
            ..self.clone()
        }
    }

    /// A seeded random split into (train, held-out) with `held_out` images in the second part.
    pub fn split(&self, held_out: usize, seed: u64) -> (Dataset, Dataset) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        shuffle(&mut order, &mut Rng::new(seed));
        let held_out = held_out.min(self.len());
        let (test, train) = order.split_at(held_out);
        (self.subset(train), self.subset(test))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_fashion_mnist_is_the_10k_test_set() {
        let d = Dataset::builtin_fashion_mnist();
        assert_eq!(d.len(), 10_000);
        assert_eq!(d.classes().len(), 10);
        let mut counts = [0usize; 10];
        for i in 0..d.len() {
            counts[d.label(i)] += 1;
        }
        assert_eq!(counts, [1000; 10]);
        let img = d.image(0).unwrap();
        assert_eq!(img.dimensions(), (28, 28));
        // The first test image is an ankle boot (label 9).
        assert_eq!(d.label(0), 9);
    }

    #[test]
    fn split_is_disjoint_and_seeded() {
        let d = Dataset::builtin_fashion_mnist();
        let (a, b) = d.split(1000, 7);
        assert_eq!((a.len(), b.len()), (9000, 1000));
        let mut all: Vec<usize> = a.indices.iter().chain(b.indices.iter()).copied().collect();
        all.sort();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
        let (_, b2) = d.split(1000, 7);
        assert_eq!(b.indices, b2.indices);
    }

    #[test]
    fn malformed_idx_and_cifar_files_are_named() {
        let dir = std::env::temp_dir().join(format!("mobilenet-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("x-images-idx3-ubyte");
        let lab = dir.join("x-labels-idx1-ubyte");
        std::fs::write(
            &img,
            [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3],
        )
        .unwrap();
        std::fs::write(&lab, [0, 0, 8, 1, 0, 0, 0, 2, 1, 0]).unwrap();
        let err = Dataset::fashion_mnist(&img, &lab).unwrap_err().to_string();
        assert!(
            err.contains("x-images-idx3-ubyte: IDX data holds 3 bytes, the header says 8"),
            "{err}"
        );
        let bin = dir.join("data_batch.bin");
        std::fs::write(&bin, vec![0u8; 3072]).unwrap();
        let err = Dataset::cifar10_binary(std::slice::from_ref(&bin))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data_batch.bin: 3072 bytes is not a whole number"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_class_folders_are_refused_and_hidden_folders_ignored() {
        let dir = std::env::temp_dir().join(format!("mobilenet-classes-{}", std::process::id()));
        for class in ["ant", "bee", ".ipynb_checkpoints"] {
            std::fs::create_dir_all(dir.join(class)).expect("dir");
            RgbImage::new(4, 4)
                .save(dir.join(class).join("x.png"))
                .expect("png");
        }
        let d = Dataset::image_folder(&dir).expect("two classes");
        assert_eq!(d.classes(), ["ant", "bee"]);
        std::fs::create_dir_all(dir.join("cat")).expect("dir");
        let err = Dataset::image_folder(&dir).unwrap_err().to_string();
        assert!(
            err.contains("class folder cat holds no JPEG, PNG, BMP or WebP files"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn cifar_records_are_deinterleaved() {
        let dir = std::env::temp_dir().join(format!("mobilenet-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rec = vec![7u8];
        rec.extend(std::iter::repeat_n(10u8, 1024));
        rec.extend(std::iter::repeat_n(20u8, 1024));
        rec.extend(std::iter::repeat_n(30u8, 1024));
        let bin = dir.join("one.bin");
        std::fs::write(&bin, &rec).unwrap();
        let d = Dataset::open(&dir).unwrap();
        assert_eq!((d.len(), d.label(0)), (1, 7));
        assert_eq!(d.image(0).unwrap().get_pixel(5, 5).0, [10, 20, 30]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
