//! Image decoding and preprocessing on arbitrary bytes: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenet::preprocess::{decode_image, Preprocessing};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data, Path::new("fuzz.img")) {
        if u64::from(img.width()) * u64::from(img.height()) <= 1 << 20 {
            let mut out = vec![0.0; 32 * 32 * 3];
            Preprocessing::default().apply(&img, 32, &mut out);
        }
    }
});
