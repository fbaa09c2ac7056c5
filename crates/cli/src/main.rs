//! `mobilenet`: the command-line tool of the mobilenet project.

mod commands;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// MobileNet v1 (Howard et al. 2017): cost accounting, inference and training.
#[derive(Debug, Parser)]
#[command(name = "mobilenet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the layer table with shapes, Mult-Adds and parameters (or the paper's tables)
    Arch(commands::arch::ArchArgs),
    /// Convert TF-slim or Keras weights into a mobilenet model file
    Import(commands::import::ImportArgs),
    /// Classify images with a model file
    Classify(commands::classify::ClassifyArgs),
    /// Measure inference latency, throughput and memory
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let result = match cli.command {
        Command::Arch(args) => commands::arch::run(&args),
        Command::Import(args) => commands::import::run(&args),
        Command::Classify(args) => commands::classify::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
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
