//! `hark-train wake` and `hark-train eval wake` as a user runs them, kept small (espeak-ng
//! voices only, three epochs): every promised file is written, the daemon's loader accepts the
//! model, it is small, the held-out evaluation audio it writes is what `eval wake` reads, and
//! bad arguments fail with a clear message. Quality is the shipped model's business (its card
//! and `cargo bench --bench wake`).

use std::{path::Path, process::Command};

use hark::nn::wake::WakeModel;

fn hark_train() -> &'static str {
    env!("CARGO_BIN_EXE_hark-train")
}

fn espeak() -> bool {
    let ok = Command::new("espeak-ng").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIP: espeak-ng is not installed (apt-get install espeak-ng)");
    }
    ok
}

/// Ten seconds of pink-ish noise as a WAV, the only "real" background.
fn noise_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("noise");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    for f in 0..6 {
        let mut w = hound::WavWriter::create(dir.join(format!("n{f}.wav")), spec).unwrap();
        let (mut seed, mut acc) = (977u32 + f, 0f32);
        for _ in 0..16_000 * 10 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            acc = 0.97 * acc + ((seed >> 16) as f32 / 32768.0 - 1.0) * 0.05;
            w.write_sample((acc * 32767.0) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    dir
}

#[test]
fn hark_train_wake_writes_a_small_loadable_model_and_its_evaluation() {
    if !espeak() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let noise = noise_dir(tmp.path());
    let out = tmp.path().join("models/hey-jarvis");
    let eval = tmp.path().join("eval");
    let o = Command::new(hark_train())
        .args(["wake", "--phrase", "Hey Jarvis", "--engines", "espeak"])
        .args(["--max-voices", "12", "--renditions", "1", "--epochs", "3"])
        .arg("--noise")
        .arg(&noise)
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .arg("--eval-dir")
        .arg(&eval)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("held-out evaluation") && text.contains("false accepts per hour"),
        "{text}"
    );
    for f in [
        "model.safetensors",
        "config.json",
        "MODEL_CARD.md",
        "evaluation.json",
        "hark-model.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing: {text}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hark-model.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["kind"], "wake");
    assert_eq!(manifest["name"], "hey-jarvis");
    let m = WakeModel::load(&out).expect("the daemon's loader accepts it");
    assert_eq!(m.config.phrase, "hey jarvis");
    assert!(
        (0.5..=1.0).contains(&m.config.threshold),
        "{}",
        m.config.threshold
    );
    let bytes = std::fs::metadata(out.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(bytes < 1_000_000, "{bytes} bytes");

    let positives = std::fs::read_dir(eval.join("positives"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wav")
        })
        .count();
    assert!(positives > 0);
    let o = Command::new(hark_train())
        .args(["eval", "wake", "--json", "--model"])
        .arg(&out)
        .arg("--positives")
        .arg(eval.join("positives"))
        .arg("--negatives")
        .arg(eval.join("negatives"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["positives"].as_u64(), Some(positives as u64));
    assert!(v["negative_hours"].as_f64().unwrap() > 0.0);
    assert!(!v["curve"].as_array().unwrap().is_empty());

    let o = Command::new(hark_train())
        .args([
            "wake",
            "--phrase",
            "hey jarvis",
            "--engines",
            "morse",
            "--out",
        ])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown engine"));
    let o = Command::new(hark_train())
        .args(["eval", "wake", "--model"])
        .arg(tmp.path().join("none"))
        .arg("--positives")
        .arg(eval.join("positives"))
        .arg("--negatives")
        .arg(eval.join("negatives"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json"));
}
