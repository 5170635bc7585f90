//! hark: command-line client for harkd.

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hark::{
    api::{
        client::{Client, ConnectOptions, connect},
        convert::{kinds_from_names, pb_event_json, pb_event_line},
        pb,
    },
    audio::file::Decoder,
    config::default_socket_path,
};

#[derive(Subcommand, Debug)]
enum LexiconCommand {
    /// Set how WORD is said: IPA (`zˈɔːɹblæks`) or, with --arpabet, ARPAbet (`Z AO1 R B L AE0 K S`).
    Set {
        word: String,
        phonemes: String,
        #[arg(long)]
        arpabet: bool,
    },
    /// Print one entry, or every entry.
    Get { word: Option<String> },
    /// Remove an entry.
    Delete { word: String },
}

#[derive(Parser, Debug)]
#[command(name = "hark", version, about = "Client for the hark daemon")]
struct Cli {
    /// Daemon address: unix:PATH or HOST:PORT (default: the daemon's default socket).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// Bearer token for TCP connections.
    #[arg(long, global = true, env = "HARK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) for TLS connections.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Live events from the daemon.
    Subscribe {
        /// Comma-separated kinds, e.g. vad,transcript (default: all; an unknown name lists the
        /// valid ones).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// JSON lines instead of the human-readable view.
        #[arg(long)]
        json: bool,
    },
    /// Daemon status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Input devices on the daemon's machine.
    Devices,
    /// Transcribe an audio file (one-shot, through the daemon's model).
    Transcribe {
        file: PathBuf,
        #[arg(long, default_value = "text", value_parser = ["text", "json", "srt", "vtt"])]
        format: String,
        /// Language code, or "auto" to detect (default: the model's language).
        #[arg(long)]
        language: Option<String>,
        /// transcribe (default) or translate (to English; multilingual models only).
        #[arg(long, default_value = "transcribe", value_parser = ["transcribe", "translate"])]
        task: String,
        /// Custom vocabulary / context text (names, product words).
        #[arg(long)]
        prompt: Option<String>,
        /// Beam size (default: the daemon's transcribe.beam_size, 1 = greedy).
        #[arg(long)]
        beam_size: Option<u32>,
        /// An installed model or adapter to use instead of the active one (compare an adapter
        /// with its base side by side).
        #[arg(long)]
        model: Option<String>,
    },
    /// Swap the daemon's Whisper model (live stream and one-shot default) for an installed
    /// model or adapter, without a restart; no name reloads the active one from disk.
    Reload { model: Option<String> },
    /// Transcribe the notes of a recording (one-shot, through the daemon): a sung or played tune,
    /// or chords with --poly. Prints the notes; can write them as MIDI or play them back as audio.
    Notes {
        file: PathBuf,
        /// Chords and piano (Basic Pitch) instead of one note at a time.
        #[arg(long)]
        poly: bool,
        /// JSON: {"notes":[{"midi","name","cents","start","end","velocity","confidence"}...]}
        /// (times in seconds).
        #[arg(long)]
        json: bool,
        /// Write the notes as a Standard MIDI File.
        #[arg(long, value_name = "OUT.mid")]
        midi: Option<PathBuf>,
        /// Synthesise the transcribed notes into a WAV file (22.05 kHz).
        #[arg(long, value_name = "OUT.wav")]
        render: Option<PathBuf>,
        /// With --render (and --midi): the note sequence reversed in time (each note still
        /// plays forwards).
        #[arg(long)]
        reverse: bool,
    },
    /// Classify the sounds in an audio file (one-shot, through the daemon's sound model): class
    /// scores for the whole clip and the sound events found in it.
    Classify {
        file: PathBuf,
        /// JSON: {"top":[{"class","p"}...], "events":[{"class","p","start","end"}...]}.
        #[arg(long)]
        json: bool,
        /// Classes to print in the text view.
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
    /// Search the utterances the daemon has stored: `hark search "the first books were
    /// printed"` finds that phrase; `hark search first books` finds both words anywhere in an
    /// utterance.
    Search {
        /// What to find. An argument with spaces is a phrase (its words in that order), as is
        /// `"..."` inside one; other words must all match; `-word` or `-"phrase"` excludes;
        /// `word*` is a prefix. Options go first when excluding: `hark search --since 2h --
        /// printing -books`.
        #[arg(required = true)]
        query: Vec<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Utterances of context on each side.
        #[arg(long, default_value_t = 1)]
        context: u32,
        /// Only utterances said at or after this time (local): 2026-12-03, "2026-12-03 14:05",
        /// 14:05, 2h, "3 days", today, yesterday.
        #[arg(long)]
        since: Option<String>,
        /// Only utterances said before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only this stream ("main", "session-3").
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sentence actions of a config file, offline: `hark actions test "set a timer for ten
    /// minutes"` prints the entry that would match and the command that would run (nothing
    /// runs; no daemon needed).
    Actions {
        #[command(subcommand)]
        what: ActionsCommand,
    },
    /// Transcribe every recording in DIR on `harkd worker`s through a NATS JetStream work
    /// queue (uploads, submits, waits with a progress bar, writes one file per recording).
    /// Rerunning skips recordings whose result is already stored. Needs no daemon.
    Batch {
        dir: PathBuf,
        /// NATS server URL(s), comma-separated.
        #[arg(long, env = "HARK_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long, default_value = "json", value_parser = ["json", "srt", "vtt", "text"])]
        format: String,
        /// Where the output files go (default: DIR); named after the recording, with the
        /// format's extension.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Language code, or "auto" to detect (default: the workers' model's language).
        #[arg(long)]
        language: Option<String>,
        /// Custom vocabulary / context text.
        #[arg(long)]
        prompt: Option<String>,
        /// Beam size (default: the workers' transcribe.beam_size).
        #[arg(long)]
        beam_size: Option<u32>,
        /// An installed model or adapter on the workers.
        #[arg(long)]
        model: Option<String>,
        /// Send paths instead of uploading: the workers see DIR at the same path (shared
        /// storage) and were started with `--allow-path`.
        #[arg(long)]
        shared_paths: bool,
        /// Give up after this many seconds (default: wait for every result).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Print text as it would be read aloud (the text-to-speech normaliser: numbers, dates,
    /// currency, units, abbreviations, mathematics), offline.
    Normalize {
        /// The text; `-` reads standard input.
        text: String,
    },
    /// Speak text through the daemon's voice: writes a WAV with -o (`-o -`: standard output),
    /// else plays it on the default output device.
    Say {
        /// The text (or SSML with --ssml); `-` reads standard input.
        text: String,
        /// Output WAV file, or `-` for standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Voice name (see `hark voices`); default: the daemon's tts.voice.
        #[arg(long, default_value = "")]
        voice: String,
        /// The text is an SSML document.
        #[arg(long)]
        ssml: bool,
        /// Speaking rate (1 normal, 0.25..4).
        #[arg(long, default_value_t = 1.0)]
        rate: f32,
        /// Print the phonemes of each word (and where they came from) instead of speaking.
        #[arg(long)]
        phonemes: bool,
    },
    /// The voices the daemon can speak with.
    Voices,
    /// The user pronunciation lexicon: `hark lexicon set WORD PHONEMES`, `get [WORD]`,
    /// `delete WORD`. Changes apply at once, without a restart.
    Lexicon {
        #[command(subcommand)]
        what: LexiconCommand,
    },
    /// Push an audio file through StreamAudio and print the events it produces.
    Stream {
        file: PathBuf,
        /// Send as fast as the daemon accepts instead of at real-time pace.
        #[arg(long)]
        fast: bool,
        #[arg(long)]
        json: bool,
        /// Comma-separated kinds, as for subscribe (default: all).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ActionsCommand {
    /// Dry-run the matcher on some text.
    Test {
        text: String,
        /// The daemon's config file (default: /etc/hark/harkd.toml).
        #[arg(long, default_value = "/etc/hark/harkd.toml")]
        config: PathBuf,
        /// Match as if a wake word had just been heard (default; `--woken false`: only the
        /// `always` entries).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        woken: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `hark actions test`: no daemon involved.
fn actions_test(
    text: &str,
    config: &std::path::Path,
    woken: bool,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = hark::config::Config::load(config)?;
    let matcher = hark::actions::Matcher::new(&cfg.actions).map_err(anyhow::Error::msg)?;
    let m = matcher.best(text, woken);
    if json {
        let v = match &m {
            Some(m) => serde_json::json!({
                "id": m.id, "sentence": m.sentence, "matched": m.matched, "score": m.score,
                "slots": m.slots, "argv": m.argv, "timeout_s": m.timeout_s,
            }),
            None => serde_json::Value::Null,
        };
        println!("{v}");
        return Ok(());
    }
    match m {
        None => println!("no action matches {text:?}"),
        Some(m) => {
            println!(
                "action {:?} (score {:.2}, matched {:?})",
                m.id, m.score, m.matched
            );
            for (k, v) in &m.slots {
                println!("  {k} = {v:?}");
            }
            if m.argv.is_empty() {
                println!("would run: nothing (event only)");
            } else {
                println!("would run (argv, no shell): {:?}", m.argv);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hark: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hark: {}", hark::telemetry::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Actions {
        what:
            ActionsCommand::Test {
                text,
                config,
                woken,
                json,
            },
    } = &cli.command
    {
        return actions_test(text, config, *woken, json.to_owned());
    }
    if let Command::Batch {
        dir,
        nats,
        format,
        out,
        language,
        prompt,
        beam_size,
        model,
        shared_paths,
        timeout,
    } = &cli.command
    {
        let options = pb::TranscribeRequest {
            language: language.clone().unwrap_or_default(),
            prompt: prompt.clone().unwrap_or_default(),
            beam_size: beam_size.unwrap_or(0),
            model: model.clone().unwrap_or_default(),
            ..Default::default()
        };
        return batch(
            dir,
            nats,
            format,
            out.as_deref().unwrap_or(dir),
            hark::fleet::batch::BatchOptions {
                options,
                shared_paths: *shared_paths,
                timeout: timeout.map(Duration::from_secs),
            },
        )
        .await;
    }
    if let Command::Normalize { text } = &cli.command {
        let text = if text == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            text.clone()
        };
        for line in text.lines() {
            println!("{}", hark::tts::normalize(line));
        }
        return Ok(());
    }
    let addr = cli
        .addr
        .clone()
        .unwrap_or_else(|| format!("unix:{}", default_socket_path().display()));
    let opts = ConnectOptions {
        token: cli.token.clone(),
        ca_pem: match &cli.ca {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        },
        tls_domain: None,
        window_bytes: None,
    };
    let mut client = connect(&addr, &opts).await?;
    match cli.command {
        Command::Subscribe { kinds, json } => subscribe(&mut client, &kinds, json).await,
        Command::Status { json } => status(&mut client, json).await,
        Command::Reload { model } => {
            let r = client
                .reload_model(pb::ReloadModelRequest {
                    model: model.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let a = r.active.unwrap_or_default();
            println!(
                "model {} (was {}), loaded in {:.1} s",
                a.description, r.previous, r.load_s
            );
            Ok(())
        }
        Command::Devices => {
            let r = client
                .list_devices(pb::ListDevicesRequest {})
                .await?
                .into_inner();
            if r.devices.is_empty() {
                println!("no input devices");
            }
            for d in r.devices {
                println!(
                    "{} {} ({} Hz, {} ch)",
                    if d.is_default { "*" } else { " " },
                    d.name,
                    d.default_sample_rate,
                    d.channels
                );
            }
            Ok(())
        }
        Command::Transcribe {
            file,
            format,
            language,
            task,
            prompt,
            beam_size,
            model,
        } => {
            let audio =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // The streaming call: segments arrive as they are decoded, and long files show
            // progress on stderr (the first 30 s window reports nothing).
            let mut updates = client
                .transcribe_stream(pb::TranscribeRequest {
                    audio,
                    raw: None,
                    language: language.unwrap_or_default(),
                    task,
                    prompt: prompt.unwrap_or_default(),
                    beam_size: beam_size.unwrap_or(0),
                    hotwords: String::new(),
                    model: model.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let started = std::time::Instant::now();
            let mut shown = false;
            while let Some(u) = updates.message().await? {
                match u.update {
                    Some(pb::transcribe_update::Update::Progress(p)) if p.processed_s > 0.0 => {
                        eprintln!(
                            "progress: {:.0} s of audio transcribed in {:.0} s{}",
                            p.processed_s,
                            started.elapsed().as_secs_f64(),
                            if p.language.is_empty() {
                                String::new()
                            } else {
                                format!(" (language {})", p.language)
                            }
                        );
                        shown = true;
                    }
                    Some(pb::transcribe_update::Update::Done(r)) => {
                        if shown {
                            eprintln!(
                                "progress: done, {:.0} s of audio in {:.1} s",
                                r.duration_s, r.processing_s
                            );
                        }
                        print!("{}", render_transcript(&r, &format));
                        return Ok(());
                    }
                    _ => {}
                }
            }
            anyhow::bail!("the daemon ended the transcription without a result")
        }
        Command::Say {
            text,
            output,
            voice,
            ssml,
            rate,
            phonemes,
        } => {
            let text = if text == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                text
            };
            if phonemes {
                use pb::phonemize_request::Input;
                let r = client
                    .phonemize(pb::PhonemizeRequest {
                        input: Some(if ssml {
                            Input::Ssml(text)
                        } else {
                            Input::Text(text)
                        }),
                    })
                    .await?
                    .into_inner();
                for w in &r.words {
                    println!("{:<20} {:<24} {}", w.word, w.ipa, w.source);
                }
                for s in &r.sentences {
                    println!("{s}");
                }
                return Ok(());
            }
            say(&mut client, text, output, voice, ssml, rate).await
        }
        Command::Voices => {
            let r = client
                .list_voices(pb::ListVoicesRequest {})
                .await?
                .into_inner();
            for v in &r.voices {
                let star = if v.name == r.default_voice { "*" } else { " " };
                println!(
                    "{star} {:<10} {:>6} Hz  {:<8} {}",
                    v.name, v.sample_rate, v.language, v.kind
                );
            }
            Ok(())
        }
        Command::Lexicon { what } => {
            match what {
                LexiconCommand::Set {
                    word,
                    phonemes,
                    arpabet,
                } => {
                    let (ipa, arpa) = if arpabet {
                        (String::new(), phonemes)
                    } else {
                        (phonemes, String::new())
                    };
                    let e = client
                        .set_lexicon_entry(pb::SetLexiconEntryRequest {
                            entry: Some(pb::LexiconEntry {
                                word,
                                ipa,
                                arpabet: arpa,
                            }),
                        })
                        .await?
                        .into_inner();
                    println!("{} {}", e.word, e.ipa);
                }
                LexiconCommand::Get { word } => {
                    let r = client
                        .get_lexicon(pb::GetLexiconRequest {
                            word: word.unwrap_or_default(),
                        })
                        .await?
                        .into_inner();
                    for e in &r.entries {
                        println!("{:<20} {}", e.word, e.ipa);
                    }
                }
                LexiconCommand::Delete { word } => {
                    let r = client
                        .delete_lexicon_entry(pb::DeleteLexiconEntryRequest { word: word.clone() })
                        .await?
                        .into_inner();
                    if !r.deleted {
                        anyhow::bail!("{word:?} is not in the lexicon");
                    }
                }
            }
            Ok(())
        }
        Command::Actions { .. } | Command::Normalize { .. } | Command::Batch { .. } => {
            unreachable!("handled before connecting")
        }
        Command::Notes {
            file,
            poly,
            json,
            midi,
            render,
            reverse,
        } => {
            let audio =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mode = if poly {
                pb::NotesMode::Poly
            } else {
                pb::NotesMode::Unspecified
            };
            let r = client
                .transcribe_notes(pb::TranscribeNotesRequest {
                    audio,
                    raw: None,
                    mode: mode as i32,
                })
                .await?
                .into_inner();
            notes_output(&r, json, midi.as_deref(), render.as_deref(), reverse)
        }
        Command::Classify { file, json, top } => {
            let audio =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let r = client
                .classify(pb::ClassifyRequest { audio, raw: None })
                .await?
                .into_inner();
            print!("{}", render_classify(&r, json, top));
            Ok(())
        }
        Command::Search {
            query,
            limit,
            context,
            since,
            until,
            stream,
            json,
        } => {
            let now = jiff::ZonedDateTime::now();
            let when = |w: &Option<String>| -> anyhow::Result<i64> {
                w.as_deref()
                    .map_or(Ok(0), |w| hark::store::parse_when(w, &now))
                    .map_err(Into::into)
            };
            let r = client
                .search(pb::SearchRequest {
                    query: search_query(&query),
                    limit,
                    context,
                    stream: stream.unwrap_or_default(),
                    since_unix_us: when(&since)?,
                    until_unix_us: when(&until)?,
                })
                .await?
                .into_inner();
            let colour = !json && std::io::stdout().is_terminal();
            for h in &r.hits {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "stream": h.stream, "utterance_id": h.utterance_id, "text": h.text,
                            "highlighted": h.highlighted, "start": h.start_s, "end": h.end_s,
                            "wall_us": h.wall_time_unix_us, "before": h.before, "after": h.after,
                        })
                    );
                } else {
                    print!("{}", render_hit(h, colour));
                }
            }
            if r.hits.is_empty() && !json {
                println!("no matches");
            }
            Ok(())
        }
        Command::Stream {
            file,
            fast,
            json,
            kinds,
        } => stream(&mut client, &file, fast, json, &kinds).await,
    }
}

/// The query text for `hark search`: an argument with spaces (a quoted phrase on the shell
/// line) is sent as a phrase; the others as they are.
fn search_query(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let a = a.trim();
            if a.contains(char::is_whitespace) && !a.contains('"') {
                match a.strip_prefix('-') {
                    Some(rest) => format!("-\"{rest}\""),
                    None => format!("\"{a}\""),
                }
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One search hit for people: when and where it was said (local time, stream, utterance id,
/// seconds into the stream), then the utterance with its matches in bold (in `[ ]` when not
/// printing to a terminal) between its context lines.
fn render_hit(h: &pb::SearchHit, colour: bool) -> String {
    use std::fmt::Write as _;
    let when = jiff::Timestamp::from_microsecond(h.wall_time_unix_us)
        .map(|t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into());
    let text = if colour {
        h.highlighted
            .replace('[', "\x1b[1m")
            .replace(']', "\x1b[0m")
    } else {
        h.highlighted.clone()
    };
    let (dim, reset) = if colour {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    let mut out = format!(
        "{when}  {} #{}  {:.1}-{:.1} s\n",
        h.stream, h.utterance_id, h.start_s, h.end_s
    );
    // Context is indented deeper than the hit, so it reads apart without colour too.
    for b in &h.before {
        let _ = writeln!(out, "      {dim}{b}{reset}");
    }
    let _ = writeln!(out, "  > {text}");
    for a in &h.after {
        let _ = writeln!(out, "      {dim}{a}{reset}");
    }
    out
}

/// Prints (or writes) what `hark notes` asked for.
fn notes_output(
    r: &pb::TranscribeNotesResponse,
    json: bool,
    midi: Option<&std::path::Path>,
    render: Option<&std::path::Path>,
    reverse: bool,
) -> anyhow::Result<()> {
    use hark::notes::{Note, synth};
    let notes: Vec<Note> = r
        .notes
        .iter()
        .map(|n| Note {
            midi: n.midi.min(127) as u8,
            cents: n.cents,
            start: n.start,
            end: n.end,
            velocity: n.velocity.clamp(1, 127) as u8,
            confidence: n.confidence,
        })
        .collect();
    let out_notes = if reverse {
        synth::reverse_in(&notes, r.duration_s)
    } else {
        notes.clone()
    };
    if json {
        let list: Vec<_> = out_notes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "midi": n.midi,
                    "name": hark::stages::notes::note_name(n.midi),
                    "cents": n.cents,
                    "start": n.start,
                    "end": n.end,
                    "velocity": n.velocity,
                    "confidence": n.confidence,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "notes": list }));
    } else {
        for n in &out_notes {
            println!(
                "{:>8.3} {:>8.3}  {:<4} {:>3} {:>+4.0}c  vel {:>3}  p {:.2}",
                n.start,
                n.end,
                hark::stages::notes::note_name(n.midi),
                n.midi,
                n.cents,
                n.velocity,
                n.confidence
            );
        }
        eprintln!("{} notes in {:.2} s", out_notes.len(), r.duration_s);
    }
    if let Some(path) = midi {
        let bytes = if reverse {
            hark::notes::midi::to_smf_bytes(&out_notes)
        } else {
            r.midi.clone()
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = render {
        const RATE: u32 = 22_050;
        let samples = synth::render(&out_notes, RATE, &synth::Voice::default());
        std::fs::write(path, hark::audio::file::wav_bytes(&samples, RATE)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} ({:.2} s{})",
            path.display(),
            samples.len() as f64 / f64::from(RATE),
            if reverse { ", reversed" } else { "" }
        );
    }
    Ok(())
}

/// `hark classify` output: JSON (`top` sorted by p, `events`) or a short text view.
fn render_classify(r: &pb::ClassifyResponse, json: bool, top: usize) -> String {
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            top: &'a [pb::ClassScore],
            events: &'a [pb::Sound],
        }
        // Serialised directly (not through serde_json::Value) so f32 prints short: 0.93.
        let line = serde_json::to_string(&Out {
            top: &r.top,
            events: &r.events,
        })
        .unwrap_or_default();
        return line + "\n";
    }
    let mut s = format!("{:.1} s of audio ({}):\n", r.duration_s, r.model);
    for c in r.top.iter().take(top) {
        s += &format!("  {:<18} {:.3}\n", c.class, c.p);
    }
    if r.events.is_empty() {
        s += "no sound events\n";
    }
    for e in &r.events {
        s += &format!(
            "event {:>7.2}-{:<7.2} {} (p {:.2})\n",
            e.start, e.end, e.class, e.p
        );
    }
    s
}

fn parse_kinds(kinds: &[String]) -> anyhow::Result<Vec<i32>> {
    Ok(kinds_from_names(kinds)?)
}

fn print_event(e: &pb::Event, json: bool) {
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(out, "{}", pb_event_json(e))
    } else {
        writeln!(out, "{}", pb_event_line(e))
    };
    let _ = out.flush();
}

async fn subscribe(client: &mut Client, kinds: &[String], json: bool) -> anyhow::Result<()> {
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            kinds: parse_kinds(kinds)?,
        })
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        print_event(&e, json);
    }
    Ok(())
}

async fn status(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let s = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    if json {
        let stages: Vec<_> = s
            .stages
            .iter()
            .map(|st| {
                serde_json::json!({
                    "name": st.name, "queue_depth": st.queue_depth, "queue_capacity": st.queue_capacity,
                    "dropped_samples": st.dropped_samples, "windows": st.windows_processed,
                    "overflow_policy": st.overflow_policy, "mean_window_us": st.mean_window_us,
                    "cpu_share": st.cpu_share,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "uptime_s": s.uptime_s, "version": s.version, "source": s.source, "device": s.device,
                "source_healthy": s.source_healthy, "samples_processed": s.samples_processed,
                "xruns": s.xruns, "stages": stages, "event_counts": s.event_counts,
                "subscribers": s.subscribers, "sessions": s.sessions,
                "nonfinite_samples": s.nonfinite_samples, "pipeline_failure": s.pipeline_failure,
                "jobs_running": s.jobs_running, "jobs_queued": s.jobs_queued,
                "whisper": s.whisper.as_ref().map(|w| serde_json::json!({
                    "name": w.name, "description": w.description, "loaded": w.loaded,
                    "reloads": w.reloads, "last_reload_error": w.last_reload_error,
                })),
                "export": s.export.as_ref().map(|x| serde_json::json!({
                    "url": x.url, "node": x.node, "connected": x.connected,
                    "published": x.published, "spooled_events": x.spooled_events,
                    "spooled_bytes": x.spooled_bytes, "dropped": x.dropped,
                    "lag_events": x.lag_events, "lag_s": x.lag_s, "last_error": x.last_error,
                })),
            })
        );
        return Ok(());
    }
    println!("harkd {} up {:.1} s", s.version, s.uptime_s);
    println!(
        "source    {}{}{}",
        s.source,
        if s.device.is_empty() {
            String::new()
        } else {
            format!(" [{}]", s.device)
        },
        if s.source_healthy {
            ""
        } else {
            "  (DEVICE LOST)"
        }
    );
    println!(
        "audio     {:.1} s processed, {} xruns, {} non-finite samples replaced",
        s.samples_processed as f64 / 16000.0,
        s.xruns,
        s.nonfinite_samples
    );
    if !s.pipeline_failure.is_empty() {
        println!("FAILED    {}", s.pipeline_failure);
    }
    if let Some(w) = &s.whisper {
        println!(
            "model     {}{}{}",
            w.description,
            if w.loaded { "" } else { " (not loaded yet)" },
            if w.reloads > 0 {
                format!(", {} reloads", w.reloads)
            } else {
                String::new()
            }
        );
        if !w.last_reload_error.is_empty() {
            println!("          last reload refused: {}", w.last_reload_error);
        }
    }
    println!(
        "clients   {} subscribers, {} StreamAudio sessions, {} one-shot jobs running, {} queued",
        s.subscribers, s.sessions, s.jobs_running, s.jobs_queued
    );
    if let Some(x) = &s.export {
        println!(
            "export    NATS {} as {}: {}, {} published, {} spooled ({:.1} kB), {} dropped, lag {} \
             events / {:.1} s{}",
            x.url,
            x.node,
            if x.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            x.published,
            x.spooled_events,
            x.spooled_bytes as f64 / 1e3,
            x.dropped,
            x.lag_events,
            x.lag_s,
            if x.last_error.is_empty() {
                String::new()
            } else {
                format!(" (last error: {})", x.last_error)
            }
        );
    }
    for st in &s.stages {
        println!(
            "stage     {:<10} queue {:>6}/{:<6} dropped {:>8} windows {:>9} {:>8.3} ms/window \
             cpu {:>5.1}%  {}",
            st.name,
            st.queue_depth,
            st.queue_capacity,
            st.dropped_samples,
            st.windows_processed,
            st.mean_window_us / 1e3,
            st.cpu_share * 100.0,
            st.overflow_policy
        );
    }
    let mut counts: Vec<_> = s.event_counts.iter().collect();
    counts.sort();
    for (k, v) in counts {
        println!("events    {k:<16} {v}");
    }
    Ok(())
}

async fn stream(
    client: &mut Client,
    path: &std::path::Path,
    fast: bool,
    json: bool,
    kinds: &[String],
) -> anyhow::Result<()> {
    let mut decoder = Decoder::open(path)?;
    let format = decoder.format();
    let kinds = parse_kinds(kinds)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AudioChunk>(8);
    tx.send(pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(pb::AudioConfig {
            sample_rate: format.rate,
            channels: u32::from(format.channels),
            encoding: pb::AudioEncoding::PcmF32le as i32,
            kinds,
        })),
    })
    .await?;
    // Decode on a blocking thread and pace there, so printing events is never held up.
    let sender = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let started = Instant::now();
        let mut frames = 0u64;
        let mut bytes = Vec::new();
        while let Some(block) = decoder.next_block()? {
            bytes.clear();
            for s in block {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            frames += (block.len() / usize::from(format.channels)) as u64;
            if tx
                .blocking_send(pb::AudioChunk {
                    payload: Some(pb::audio_chunk::Payload::Data(bytes.clone())),
                })
                .is_err()
            {
                break;
            }
            if !fast {
                let due = Duration::from_secs_f64(frames as f64 / f64::from(format.rate));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(())
    });
    let mut events = client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(e) = events.message().await? {
        print_event(&e, json);
        if matches!(e.kind, Some(pb::event::Kind::SourceEnded(_))) {
            break;
        }
    }
    sender.await??;
    Ok(())
}

fn timestamp(t: f64, sep: char) -> String {
    let ms = (t.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Renders a transcription as text, JSON, SRT or WebVTT.
fn render_transcript(r: &pb::TranscribeResponse, format: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    match format {
        "json" => {
            let v = serde_json::json!({
                "text": r.text,
                "language": r.language,
                "segments": r.segments.iter().map(|seg| serde_json::json!({
                    "start": seg.start_s, "end": seg.end_s, "text": seg.text,
                    "words": seg.words.iter().map(|w| serde_json::json!({
                        "word": w.word, "start": w.start_s, "end": w.end_s, "p": w.p,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            let _ = writeln!(s, "{v}");
        }
        "srt" => {
            for (i, seg) in r.segments.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{}\n{} --> {}\n{}\n",
                    i + 1,
                    timestamp(seg.start_s, ','),
                    timestamp(seg.end_s, ','),
                    seg.text
                );
            }
        }
        "vtt" => {
            s.push_str("WEBVTT\n\n");
            for seg in &r.segments {
                let _ = writeln!(
                    s,
                    "{} --> {}\n{}\n",
                    timestamp(seg.start_s, '.'),
                    timestamp(seg.end_s, '.'),
                    seg.text
                );
            }
        }
        _ => {
            let _ = writeln!(s, "{}", r.text);
        }
    }
    s
}

/// `hark batch`: see the command's help.
async fn batch(
    dir: &std::path::Path,
    url: &str,
    format: &str,
    out: &std::path::Path,
    opts: hark::fleet::batch::BatchOptions,
) -> anyhow::Result<()> {
    use hark::fleet::{self, batch::BatchEvent};
    let files = fleet::batch::list_recordings(dir)?;
    if files.is_empty() {
        anyhow::bail!(
            "no recordings in {} ({})",
            dir.display(),
            hark::audio::file::EXTENSIONS.join(", ")
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let client = fleet::connect(url, "hark batch", Duration::from_secs(10)).await?;
    let queue = fleet::queue::Queue::open(client).await?;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ext = if format == "text" { "txt" } else { format };
    let (mut submitted, mut skipped, mut transcribed) = (0usize, 0usize, 0usize);
    let (mut failed, mut audio_s) = (Vec::new(), 0.0);
    let mut write_error = None;
    let mut finish = |path: &std::path::Path, r: &pb::BatchResult| {
        bar.inc(1);
        let Some(resp) = &r.response else {
            failed.push(format!("{}: {}", path.display(), r.error));
            return;
        };
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let target = out.join(format!("{stem}.{ext}"));
        if let Err(e) = std::fs::write(&target, render_transcript(resp, format)) {
            write_error = Some(anyhow::anyhow!("writing {}: {e}", target.display()));
        }
    };
    let started = Instant::now();
    fleet::batch::run(&queue, &files, &opts, |e| match e {
        BatchEvent::Submitted { path, .. } => {
            submitted += 1;
            bar.set_message(format!(
                "submitted {submitted}: {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
        BatchEvent::AlreadyDone { path, result } => {
            skipped += 1;
            finish(path, result);
        }
        BatchEvent::Done { path, result } => {
            transcribed += usize::from(result.response.is_some());
            audio_s += result.response.as_ref().map_or(0.0, |r| r.duration_s);
            bar.set_message(format!(
                "{} by {}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                result.worker
            ));
            finish(path, result);
        }
    })
    .await?;
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} recordings: {} transcribed now, {} already done (skipped), {} failed; {:.1} s of \
         audio transcribed in {:.1} s ({:.1}x real time); output in {}",
        files.len(),
        transcribed,
        skipped,
        failed.len(),
        audio_s,
        wall,
        audio_s / wall.max(1e-9),
        out.display()
    );
    if let Some(e) = write_error {
        return Err(e);
    }
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("failed: {f}");
        }
        anyhow::bail!("{} of {} recordings failed", failed.len(), files.len());
    }
    Ok(())
}

/// `hark say`: streams the synthesis into a WAV file, standard output, or the speakers.
async fn say(
    client: &mut Client,
    text: String,
    output: Option<PathBuf>,
    voice: String,
    ssml: bool,
    rate: f32,
) -> anyhow::Result<()> {
    use pb::{synthesize_request::Input, synthesize_response::Payload};
    let mut stream = client
        .synthesize(pb::SynthesizeRequest {
            input: Some(if ssml {
                Input::Ssml(text)
            } else {
                Input::Text(text)
            }),
            voice,
            rate,
            encoding: pb::AudioEncoding::PcmF32le as i32,
            sample_rate: 0,
            seed: 0,
        })
        .await?
        .into_inner();
    let mut sample_rate = 0u32;
    let mut samples: Vec<f32> = Vec::new();
    #[cfg(feature = "mic")]
    let mut player: Option<hark::audio::playback::Player> = None;
    while let Some(msg) = stream.message().await? {
        match msg.payload {
            Some(Payload::Config(c)) => {
                sample_rate = c.sample_rate;
                if output.is_none() {
                    #[cfg(feature = "mic")]
                    {
                        player = Some(hark::audio::playback::Player::open(sample_rate)?);
                    }
                    #[cfg(not(feature = "mic"))]
                    anyhow::bail!("this build has no audio output (feature mic); use -o FILE");
                }
            }
            Some(Payload::Sentence(s)) if !s.text.is_empty() => eprintln!("{}", s.text),
            Some(Payload::Data(bytes)) => {
                let chunk: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                #[cfg(feature = "mic")]
                if let Some(p) = player.as_mut() {
                    p.push(&chunk);
                    continue;
                }
                samples.extend_from_slice(&chunk);
            }
            _ => {}
        }
    }
    #[cfg(feature = "mic")]
    if let Some(p) = player {
        p.finish();
        return Ok(());
    }
    let Some(path) = output else {
        return Ok(());
    };
    anyhow::ensure!(sample_rate > 0, "the daemon sent no audio format");
    let wav = hark::audio::file::wav_bytes(&samples, sample_rate)?;
    if path.as_os_str() == "-" {
        std::io::stdout().write_all(&wav)?;
    } else {
        std::fs::write(&path, &wav).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} ({:.2} s at {sample_rate} Hz)",
            path.display(),
            samples.len() as f64 / f64::from(sample_rate)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitle_formats() {
        let r = pb::TranscribeResponse {
            text: "hello there".into(),
            segments: vec![pb::TranscriptSegment {
                start_s: 61.5,
                end_s: 3725.042,
                text: "hello there".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            render_transcript(&r, "srt"),
            "1\n00:01:01,500 --> 01:02:05,042\nhello there\n\n"
        );
        assert!(
            render_transcript(&r, "vtt").starts_with("WEBVTT\n\n00:01:01.500 --> 01:02:05.042\n")
        );
        let j: serde_json::Value = serde_json::from_str(&render_transcript(&r, "json")).unwrap();
        assert_eq!(j["segments"][0]["start"], 61.5);
    }
}
