//! The training data readers on an arbitrary folder: the input is a little archive of files
//! (name, contents) written into a fresh folder, which `Dataset::open` then reads as an image
//! folder, CIFAR-10 `.bin` batches or (gzipped) IDX files. An error, never a panic; a data set
//! that opens yields its images (or named errors) through the batch loader.
//!
//! Archive: repeated `[name length: u8][name][contents length: u16 LE][contents]`; names may
//! hold `/` (sub-folders); `..`, empty and hidden components are dropped.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use mobilenet::data::{Augment, Dataset, Loader};
use mobilenet::preprocess::Preprocessing;

fn unpack(mut data: &[u8], root: &Path) {
    let mut files = 0;
    while files < 64 {
        let Some((&n, rest)) = data.split_first() else {
            return;
        };
        let n = n as usize;
        if rest.len() < n + 2 {
            return;
        }
        let (name, rest) = rest.split_at(n);
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        let (contents, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        let name = String::from_utf8_lossy(name);
        let parts: Vec<&str> = name
            .split('/')
            .filter(|p| !p.is_empty() && !p.starts_with('.') && !p.contains('\0'))
            .collect();
        let Some((file, dirs)) = parts.split_last() else {
            continue;
        };
        let dir: PathBuf = dirs.iter().fold(root.to_path_buf(), |d, p| d.join(p));
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(file), contents);
            files += 1;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir().join(format!("mobilenet-fuzz-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp folder");
    unpack(data, &root);
    if let Ok(set) = Dataset::open(&root) {
        let _ = set.fingerprint();
        let n = set.len().min(8);
        for skip in [false, true] {
            let set = set.clone().skipping_bad_images(skip);
            let order: Vec<usize> = (0..n).collect();
            let loader = Loader::new(
                &set,
                order,
                4,
                0,
                8,
                Augment::PadCropFlip { pad: 2 },
                Preprocessing::default(),
                1,
                1,
            );
            for batch in loader {
                if let Ok(b) = batch {
                    assert_eq!(b.images.len(), b.labels.len() * 8 * 8 * 3);
                    assert!(b.labels.iter().all(|&l| l < set.classes().len()));
                }
            }
        }
    }
});
