//! `mobilenet`: the command-line tool of the mobilenet project.

mod commands;
mod plot;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// MobileNet v1 (Howard et al. 2017): cost accounting, inference, training and int8 deployment.
#[derive(Debug, Parser)]
#[command(name = "mobilenet", version)]
struct Cli {
    /// Without a command: train on the built-in Fashion-MNIST demo data (as `train` with no
    /// options), then classify held-out images with the result
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the layer table with shapes, Mult-Adds and parameters (or the paper's tables)
    Arch(commands::arch::ArchArgs),
    /// Convert TF-slim, Keras or float .tflite weights into a mobilenet model file
    Import(commands::import::ImportArgs),
    /// Classify images with a model file or a quantized .tflite
    Classify(commands::classify::ClassifyArgs),
    /// Measure inference latency, throughput and memory (int8 next to f32 for a .tflite)
    Bench(commands::bench::BenchArgs),
    /// Train or fine-tune on an image data set (default: built-in Fashion-MNIST)
    Train(Box<commands::train::TrainArgs>),
    /// Top-1/top-5, per-class accuracy and confusion matrix of a model on labelled data
    Eval(commands::eval::EvalArgs),
    /// Post-training int8 quantization of a float model into a .tflite file
    Quantize(commands::quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    // `mobilenet classify … | head` should end quietly when the reader goes away, as Unix tools
    // do, instead of panicking on the broken pipe.
    #[cfg(unix)]
    // Safety: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
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
    let result = match command {
        Command::Arch(args) => commands::arch::run(&args),
        Command::Import(args) => commands::import::run(&args),
        Command::Classify(args) => commands::classify::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Train(args) => commands::train::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        Command::Quantize(args) => commands::quantize::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes, outermost first.
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
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
            let text = err.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error");
            eprintln!("{first}");
            ExitCode::from(2)
        }
    }
}
