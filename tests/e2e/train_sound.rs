//! `hark-train sound` and `hark-train eval sound` as a user runs them, on a tiny synthetic data
//! set in UrbanSound8K's layout (WAV at 22.05 kHz stereo, as the original set has): the CNN
//! must learn a tone-vs-noise task, write every promised file, load in the daemon's classifier,
//! and give the same weights for the same seed.

use std::{path::Path, process::Command};

use hark::nn::sound::SoundClassifier;

fn hark_train() -> &'static str {
    env!("CARGO_BIN_EXE_hark-train")
}

/// Two classes: a 2 s tone at a random-ish pitch ("beep", id 1), or noise ("hiss", id 0).
fn write_dataset(root: &Path) {
    let rate = 22_050u32;
    let mut csv = String::from("slice_file_name,fsID,start,end,salience,fold,classID,class\n");
    for fold in 1..=2u32 {
        let dir = root.join(format!("audio/fold{fold}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..10u32 {
            let class = i % 2;
            let name = format!("{fold}{i:02}-{class}-0-0.wav");
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(dir.join(&name), spec).unwrap();
            let f = 300.0 + 97.0 * (i + 7 * fold) as f32;
            let mut seed = 12345u32.wrapping_mul(i + 31 * fold);
            for n in 0..rate * 2 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let noise = ((seed >> 16) as f32 / 32768.0 - 1.0) * 0.3;
                let v = if class == 1 {
                    0.4 * (2.0 * std::f32::consts::PI * f * n as f32 / rate as f32).sin()
                } else {
                    noise
                };
                let s = (v * 32767.0) as i16;
                w.write_sample(s).unwrap();
                w.write_sample(s).unwrap();
            }
            w.finalize().unwrap();
            let label = if class == 1 { "beep" } else { "hiss" };
            csv.push_str(&format!("{name},{i},0,2,1,{fold},{class},{label}\n"));
        }
    }
    std::fs::create_dir_all(root.join("metadata")).unwrap();
    std::fs::write(root.join("metadata/UrbanSound8K.csv"), csv).unwrap();
}

fn train(data: &Path, out: &Path) -> std::process::Output {
    Command::new(hark_train())
        .args([
            "sound",
            "--arch",
            "cnn",
            "--channels",
            "4,8",
            "--epochs",
            "12",
        ])
        .args([
            "--train-folds",
            "1",
            "--test-fold",
            "2",
            "--seed",
            "7",
            "--batch",
            "8",
        ])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run hark-train")
}

#[test]
fn hark_train_sound_learns_a_toy_task_and_writes_a_loadable_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy");
    write_dataset(&data);
    let out = tmp.path().join("model");
    let r = train(&data, &out);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    for f in [
        "model.safetensors",
        "config.json",
        "hark-model.json",
        "MODEL_CARD.md",
        "metrics.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("CC BY-NC") && card.contains("| beep |"),
        "{card}"
    );
    // The daemon's loader takes the directory as written.
    let model = SoundClassifier::load(&out).unwrap();
    assert_eq!(model.labels(), ["hiss", "beep"]);

    // eval prints the held-out accuracy; tones vs noise is easy, so it must be near perfect.
    let ev = Command::new(hark_train())
        .args(["eval", "sound", "--fold", "2", "--json", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "held-out accuracy {acc}: {v}");
    assert_eq!(v["confusion"].as_array().unwrap().len(), 2);

    // Same seed, same weights.
    let out2 = tmp.path().join("model2");
    assert!(train(&data, &out2).status.success());
    let same = std::fs::read(out.join("model.safetensors")).unwrap()
        == std::fs::read(out2.join("model.safetensors")).unwrap();
    assert!(same, "training is not deterministic for a fixed --seed");
}

#[test]
fn hark_train_rejects_a_missing_data_set_and_overlapping_folds() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Command::new(hark_train())
        .args(["sound", "--arch", "cnn", "--data"])
        .arg(tmp.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("UrbanSound8K.csv"), "{err}");
    let data = tmp.path().join("toy");
    write_dataset(&data);
    let r = Command::new(hark_train())
        .args([
            "sound",
            "--train-folds",
            "1,2",
            "--test-fold",
            "2",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("test fold"));
}
