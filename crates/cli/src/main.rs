//! `mobilenet`: the command-line tool of the mobilenet project.

mod commands;
mod draw;
mod plot;
mod serve;
mod table;

use std::process::ExitCode;

/// Large allocations (training's activations, the batches) on transparent huge pages: one
/// page fault per 2 MB instead of per 4 KB (see `mobilenet_kernels::hugepages`).
#[global_allocator]
static ALLOC: mobilenet::HugePages = mobilenet::HugePages;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// MobileNet v1 (Howard et al. 2017): cost accounting, inference, training and int8 deployment.
#[derive(Debug, Parser)]
#[command(name = "mobilenet", version)]
struct Cli {
    /// Without a command: train on the built-in Fashion-MNIST demo data (as `train` with no
    /// options), then classify held-out images with the result
    #[command(subcommand)]
    command: Option<Command>,
    /// Largest image decoded, in pixels (default 100 million: 300 MB as RGB); larger images are
    /// refused from their header
    #[arg(long, global = true, value_name = "PIXELS", value_parser = clap::value_parser!(u64).range(1..))]
    max_image_pixels: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the layer table with shapes, Mult-Adds and parameters (or the paper's tables)
    Arch(commands::arch::ArchArgs),
    /// Convert TF-slim, Keras, timm, .tflite or ONNX weights into a mobilenet model file
    Import(commands::import::ImportArgs),
    /// Classify images with a model file or a quantized .tflite
    Classify(commands::classify::ClassifyArgs),
    /// Find objects in images with an SSD detector file (boxes, scores, labels)
    Detect(commands::detect::DetectArgs),
    /// Measure inference latency, throughput and memory (int8 next to f32 for a .tflite)
    Bench(commands::bench::BenchArgs),
    /// Train or fine-tune on an image data set (default: built-in Fashion-MNIST)
    Train(Box<commands::train::TrainArgs>),
    /// Top-1/top-5, per-class accuracy and confusion matrix of a model on labelled data
    Eval(commands::eval::EvalArgs),
    /// Train an SSD detector on COCO-annotated images (from an ImageNet backbone)
    TrainDetect(Box<commands::train_detect::TrainDetectArgs>),
    /// COCO box mAP (as pycocotools computes it) of a detector on an annotated image folder
    EvalDetect(commands::eval_detect::EvalDetectArgs),
    /// Post-training int8 quantization of a float model into a .tflite file
    Quantize(commands::quantize::QuantizeArgs),
    /// Write a float model as a file another runtime loads (float .tflite or ONNX)
    Export(commands::export::ExportArgs),
    /// Serve classifiers and detectors over HTTP (JSON API, batching, metrics, a web page)
    Serve(serve::ServeArgs),
    /// Time every α × resolution here and pick the most accurate under a latency budget
    Pick(commands::pick::PickArgs),
}

fn main() -> ExitCode {
    // `mobilenet classify … | head` should end quietly when the reader goes away, as Unix tools
    // do, instead of panicking on the broken pipe.
    #[cfg(unix)]
    // Safety: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // glibc gives blocks from 128 KB up their own mappings and returns freed memory to the
    // kernel; a training step allocates and frees such blocks by the dozen (packed weights,
    // gradient parts, dZ blocks), and every page of each came back as a fault and a zeroed
    // page: 1,850 faults a CIFAR step, 7% of its time. Kept in the process instead, freed
    // blocks are reused (231k → 29k faults an epoch of the 8,000-image subset; peak memory
    // unchanged). Blocks of 64 MB and more (whole activations) keep their own mappings.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only sets two of the allocator's thresholds, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(err) => return usage_error(err),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    if let Some(pixels) = cli.max_image_pixels {
        mobilenet::preprocess::set_max_image_pixels(pixels);
    }
    // Which train flags were given on the command line (a resumed run refuses most of them).
    let train_matches = matches.subcommand_matches("train");
    let command = match cli.command {
        Some(c) => c,
        None => {
            println!("mobilenet: no command given, running the built-in demo (`mobilenet --help` lists the commands)");
            let default = Cli::parse_from(["mobilenet", "train"]);
            default
                .command
                .unwrap_or_else(|| unreachable!("train parses"))
        }
    };
    // Train and eval can leave out the images that do not decode; their error says so.
    let skips_bad_images = matches!(command, Command::Train(_) | Command::Eval(_));
    let result = match command {
        Command::Arch(args) => commands::arch::run(&args),
        Command::Import(args) => commands::import::run(&args),
        Command::Classify(args) => commands::classify::run(&args),
        Command::Detect(args) => commands::detect::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Train(args) => commands::train::run(&args, train_matches),
        Command::Eval(args) => commands::eval::run(&args),
        Command::EvalDetect(args) => commands::eval_detect::run(&args),
        Command::TrainDetect(args) => commands::train_detect::run(&args),
        Command::Quantize(args) => commands::quantize::run(&args),
        Command::Export(args) => commands::export::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Pick(args) => commands::pick::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes, outermost first; a cause the message
            // already quotes (`path: {source}`) is not repeated.
            let mut line = String::new();
            for cause in err.chain().map(ToString::to_string) {
                if !line.contains(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            if skips_bad_images && undecodable_image(&err) {
                line.push_str(" (--skip-bad-images leaves out the files that do not decode)");
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` is an image that does not decode, as the data pipeline, evaluation or
/// training report it.
fn undecodable_image(err: &anyhow::Error) -> bool {
    use mobilenet::data::DataError;
    use mobilenet::train::trainer::TrainFailure;
    use mobilenet::ImageError;
    err.chain().any(|cause| {
        let data =
            cause
                .downcast_ref::<DataError>()
                .or(match cause.downcast_ref::<TrainFailure>() {
                    Some(TrainFailure::Data(d)) => Some(d),
                    _ => None,
                });
        let image = cause.downcast_ref::<ImageError>().or(match data {
            Some(DataError::Image(i)) => Some(i),
            _ => None,
        });
        matches!(image, Some(ImageError::Decode { .. }))
    })
}

/// Help and version go to stdout as clap renders them; real usage errors are cut to their
/// first line (clap appends usage and a "For more information" hint), exit code 2.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can only fail on a closed stdout; nothing useful to do then.
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // The message runs to the usage block; a missing-argument error lists the
            // arguments on the lines after its first (which alone said nothing useful).
            let text = err.to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let line = if message.is_empty() {
                "error".to_string()
            } else {
                message.join(" ")
            };
            eprintln!("{line}");
            ExitCode::from(2)
        }
    }
}

/// Whether two paths name one existing file (the same path, or a link to it).
pub(crate) fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
            return true;
        }
    }
    let _ = (ma, mb);
    matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// `--requant`: how a quantized model's integer engine turns its sums into bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RequantArg {
    /// TFLite's fixed-point arithmetic: byte-exact with TFLite's reference kernels
    #[default]
    Tflite,
    /// XNNPACK's single-precision form: faster, byte-exact with TFLite running its default
    /// XNNPACK delegate
    Xnnpack,
}

impl From<RequantArg> for mobilenet::int8::Requantization {
    fn from(r: RequantArg) -> Self {
        match r {
            RequantArg::Tflite => mobilenet::int8::Requantization::Tflite,
            RequantArg::Xnnpack => mobilenet::int8::Requantization::Xnnpack,
        }
    }
}

/// `--precision`: the arithmetic of the f32 engine's GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PrecisionArg {
    /// f32 throughout
    #[default]
    F32,
    /// bf16 activations and weights in the 1×1 convolutions and classifier, summed in f32
    /// (AVX512-BF16)
    Bf16,
}

impl From<PrecisionArg> for mobilenet::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => mobilenet::Precision::F32,
            PrecisionArg::Bf16 => mobilenet::Precision::Bf16,
        }
    }
}

/// `--threads N` (0: all cores). More threads than cores are capped, with a note: the pool's
/// workers spin between steps, and more of them than cores only contend (1,000 hung a run).
pub(crate) fn threads_arg(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("{e}: a number of threads, 0 for all cores"))?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > cores {
        eprintln!("note: --threads {n} is more than the {cores} cores here: using {cores}");
        return Ok(cores);
    }
    Ok(n)
}
