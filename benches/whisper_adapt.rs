//! Whisper adaptation bench: how long `hark-train whisper-adapt` takes on tiny.en with 20
//! examples (the target is 10 minutes on a 2-core machine), and what it buys on voices and
//! sentences it never saw, next to the custom-vocabulary route that needs no training (the same
//! word given as a prompt and as hotwords).
//!
//! For each word set in `benches/adapt/` (`NAME_train.txt`, `NAME_test*.txt`): 20 training clips
//! are synthesised from the training voices (one voice per sentence, engines in turn), test
//! clips from the held-out voices (`train::synth::Voice::held_out`: whole speakers never used
//! for training), the adapter is trained with the defaults, and the base model, the base with a
//! prompt, the base with hotwords and the adapter are scored on the test clips (WER, recall of
//! the word), the adapter both as installed (deciding only the tokens of its word) and deciding
//! every token (`decode_scope` all).
//!
//! `cargo bench --profile dev --config 'profile.dev.opt-level=3' --bench whisper_adapt`
//! (`HARK_ADAPT_SETS=bess` picks sets; `HARK_ADAPT_REPLAY_LOSS=ce` replays with cross-entropy
//! instead of distillation; `HARK_ADAPT_LORA_SCOPE=cross` adapts cross-attention only;
//! `HARK_ADAPT_DECODE_SCOPE=all` trains for decoding every token, at that scope's learning rate;
//! needs tiny.en, the synthesisers and
//! `../shared/data/speech` for the default replay and regression sets).

use std::{path::Path, time::Instant};

use hark::nn::whisper::{DecodeOptions, LoadOptions, WhisperModel, adapter::DecodeScope};
use hark::train::{
    synth::Engine,
    whisper::{self, AdaptOptions, ExamplesOptions},
};

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { hark::nn::prepare_process() };
    let Ok(base_dir) = hark::models::find(hark::models::WHISPER_KIND, "tiny.en", None) else {
        eprintln!("SKIP: tiny.en is not installed (harkd models fetch tiny.en)");
        return;
    };
    if whisper::shared_speech_dir().is_none() {
        eprintln!("SKIP: ../shared/data/speech is absent (default replay and regression sets)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join("hark-bench-adapt");
    let wanted = std::env::var("HARK_ADAPT_SETS").unwrap_or_else(|_| "bess,zorblax".into());
    let mut rows = Vec::new();
    for set in wanted.split(',').filter(|s| !s.is_empty()) {
        // `NAME_train.txt`, and every `NAME_test*.txt` (`_test.txt`, `_test2.txt`, ...).
        let read = |kind: &str| -> Vec<String> {
            let dir = root.join("benches/adapt");
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{set}_{kind}")) && n.ends_with(".txt")
                    })
                })
                .collect();
            files.sort();
            assert!(
                !files.is_empty(),
                "no {set}_{kind}*.txt in {}",
                dir.display()
            );
            files
                .iter()
                .flat_map(|p| {
                    std::fs::read_to_string(p)
                        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (train_text, test_text) = (read("train"), read("test"));
        let word = set[..1].to_uppercase() + &set[1..];
        let synth = |sentences: Vec<String>, per: usize, held_out: bool, out: &str| {
            let out = work.join(out);
            let _ = std::fs::remove_dir_all(&out);
            whisper::make_examples(&ExamplesOptions {
                sentences,
                out: out.clone(),
                per_sentence: per,
                held_out_voices: held_out,
                engines: Engine::ALL.to_vec(),
                seed: 7,
                cache: work.join("cache"),
            })
            .expect("synthesis");
            out
        };
        // 20 training examples, whatever the number of sentences.
        let per = 20usize.div_ceil(train_text.len());
        let train = synth(train_text, per, false, &format!("{set}-train"));
        let test = synth(test_text, 2, true, &format!("{set}-test"));
        let out = work.join(format!("{set}-adapter"));
        let t0 = Instant::now();
        let report = whisper::adapt(&AdaptOptions {
            model: base_dir.clone(),
            examples: train,
            replay: None,
            regression: None,
            freeze: hark::nn::whisper::trainable::Freeze::Encoder,
            lora: 8,
            alpha: None,
            lora_scope: if std::env::var("HARK_ADAPT_LORA_SCOPE").as_deref() == Ok("cross") {
                hark::nn::whisper::trainable::LoraScope::CrossAttention
            } else {
                hark::nn::whisper::trainable::LoraScope::All
            },
            decode_scope: if std::env::var("HARK_ADAPT_DECODE_SCOPE").as_deref() == Ok("all") {
                hark::nn::whisper::adapter::DecodeScope::All
            } else {
                hark::nn::whisper::adapter::DecodeScope::Words
            },
            lr: None,
            steps: 20,
            batch: 8,
            replay_ratio: 0.5,
            replay_loss: if std::env::var("HARK_ADAPT_REPLAY_LOSS").as_deref() == Ok("ce") {
                hark::train::whisper::ReplayLoss::Ce
            } else {
                hark::train::whisper::ReplayLoss::Kl
            },
            holdout: 0.25,
            words: vec![word.clone()],
            augment: 2,
            no_speech_weight: 0.0,
            out: out.clone(),
            force: true,
            max_regression: 0.5,
            seed: 1,
        })
        .expect("adaptation");
        let total = t0.elapsed().as_secs_f32();
        let reg = report
            .sets
            .iter()
            .find(|s| s.0 == "regression")
            .map(|(_, b, a)| (b.wer(), a.wer()))
            .unwrap_or_default();
        println!(
            "{set}: adapted in {total:.0} s (prepare {:.0} s, train {:.0} s, evaluate {:.0} s); \
             regression WER {:.2}% -> {:.2}%; gate: {}",
            report.prepare_s, report.train_s, report.eval_s, reg.0, reg.1, report.gate
        );
        let base = WhisperModel::load(&base_dir).expect("base");
        let adapted = WhisperModel::load(&out).expect("adapter");
        let unscoped = WhisperModel::load_with(
            &out,
            &LoadOptions {
                decode_scope: Some(DecodeScope::All),
                ..Default::default()
            },
        )
        .expect("adapter");
        let clips = whisper::load_clips(&test).expect("test clips");
        let words = vec![set.to_string()];
        let runs: Vec<(&str, &WhisperModel, DecodeOptions)> = vec![
            ("tiny.en", &base, DecodeOptions::default()),
            (
                "tiny.en + prompt",
                &base,
                DecodeOptions {
                    initial_prompt: Some(word.clone()),
                    ..Default::default()
                },
            ),
            (
                "tiny.en + hotwords",
                &base,
                DecodeOptions {
                    hotwords: Some(word.clone()),
                    ..Default::default()
                },
            ),
            ("tiny.en + adapter", &adapted, DecodeOptions::default()),
            (
                "tiny.en + adapter, every token",
                &unscoped,
                DecodeOptions::default(),
            ),
        ];
        for (name, m, opts) in runs {
            let s = whisper::score_set(m, &clips, &words, &opts).expect("scoring");
            // Clips with no text at all: the no-speech gate dropped the window.
            let empty = s.hypotheses.iter().filter(|h| h.trim().is_empty()).count();
            rows.push(format!(
                "| {set} | {name} | {} | {empty} | {:.1}% | {:.0}% ({}/{}) | {total:.0} s |",
                s.clips,
                s.wer(),
                s.recall().unwrap_or(0.0) * 100.0,
                s.target_hits,
                s.target_words
            ));
        }
    }
    println!(
        "\nHeld-out voices and sentences (adaptation time: tiny.en, 20 examples, 2 threads)\n"
    );
    println!("| word | model | clips | empty | WER | recall of the word | adaptation time |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
