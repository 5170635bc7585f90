//! Wake word and sentence actions end to end, over a real socket, with the shipped
//! `models/hey-jarvis` and tiny.en: "Hey Jarvis. Set a timer for ten minutes." pushed through
//! StreamAudio gives a `wake` event at the phrase's end, then an `action` whose program runs
//! with the slot value as one argument. Also `hark actions test` and `harkd validate` on
//! action configs.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use crate::{
    harness::{Daemon, load_16k, repo, tiny_en},
    stream_file,
};
use hark::api::pb;
use pb::event::Kind;

/// Where "Hey Jarvis." ends in the fixture (seconds; from the script that made it).
const PHRASE_END_S: f64 = 1.76;

fn shipped_wake_model() -> bool {
    let ok = repo().join("models/hey-jarvis/model.safetensors").is_file();
    if !ok {
        eprintln!("SKIP: no models/hey-jarvis (train it with `hark-train wake`)");
    }
    ok
}

/// A program that writes its arguments, one per line, to `out`.
fn recorder(dir: &Path, out: &Path) -> String {
    let script = dir.join("record.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hey_jarvis_then_a_sentence_gives_wake_then_action_and_runs_the_program() {
    if !shipped_wake_model() || !tiny_en() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("argv.txt");
    let program = recorder(dir.path(), &out);
    let config = format!(
        "[transcribe]\nenabled = \"on\"\n[store]\nenabled = false\n[sound]\nenabled = \"off\"\n\
         [wake]\nenabled = \"on\"\n\
         [[actions.commands]]\nid = \"timer\"\n\
         sentences = [\"set a timer for {{minutes:number}} minutes\"]\n\
         run = [\"{program}\", \"{{minutes}}\"]\n"
    );
    let daemon = Daemon::start(&["--source", "none"], Some(&config));
    let audio = load_16k(&repo().join("tests/fixtures/hey_jarvis_timer.flac"));
    let events = stream_file(&daemon, audio, 0.0).await.expect("StreamAudio");
    let wakes: Vec<&pb::Wake> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Wake(w)) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(wakes.len(), 1, "{events:#?}\n{}", daemon.log_text());
    let w = wakes[0];
    assert_eq!(w.phrase, "hey jarvis");
    // Sent within 300 ms of the phrase's end (stream time), not before most of it was heard.
    assert!(
        w.end > PHRASE_END_S - 0.3 && w.end <= PHRASE_END_S + 0.3,
        "wake at {} s, phrase ends at {PHRASE_END_S} s",
        w.end
    );
    let pos = |k: &str| {
        events.iter().position(|e| match &e.kind {
            Some(Kind::Wake(_)) => k == "wake",
            Some(Kind::Action(_)) => k == "action",
            _ => false,
        })
    };
    let action = events.iter().find_map(|e| match &e.kind {
        Some(Kind::Action(a)) => Some(a),
        _ => None,
    });
    let Some(action) = action else {
        panic!("no action event: {events:#?}\n{}", daemon.log_text());
    };
    assert!(pos("wake") < pos("action"));
    assert_eq!(action.id, "timer");
    assert_eq!(action.slots.get("minutes").map(String::as_str), Some("10"));
    assert!(action.ran, "{action:?}");
    // The program ran with the slot value as its one argument.
    let mut got = String::new();
    for _ in 0..100 {
        got = std::fs::read_to_string(&out).unwrap_or_default();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, "10\n");
}

#[test]
fn actions_test_dry_runs_the_matcher_and_validate_reports_bad_actions() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("harkd.toml");
    std::fs::write(
        &conf,
        "[[actions.commands]]\nid = \"lights\"\nsentences = [\"turn {state:on|off} the {room} lights\"]\n\
         run = [\"/usr/bin/logger\", \"{room}\", \"{state}\"]\n",
    )
    .unwrap();
    let hark = env!("CARGO_BIN_EXE_hark");
    let o = std::process::Command::new(hark)
        .args([
            "actions",
            "test",
            "Turn off the `living room`; lights",
            "--json",
            "--config",
        ])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["id"], "lights");
    assert_eq!(
        v["argv"],
        serde_json::json!(["/usr/bin/logger", "living room", "off"])
    );

    std::fs::write(
        &conf,
        "[[actions.commands]]\nid = \"t\"\nsentences = [\"start a timer\"]\nrun = [\"/bin/echo\", \"{minutes}\"]\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_harkd"))
        .args(["validate", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("unknown slot") && text.contains("minutes"),
        "{text}"
    );
}
