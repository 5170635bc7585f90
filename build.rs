//! Generates the gRPC code for `proto/hark/v1/hark.proto` plus a descriptor set for reflection.
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no system package.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // serde on the generated types: JSON lines of events (`hark subscribe --json`) are these
    // messages serialised, so a new event kind gets its JSON from its proto message alone. The
    // `Event.kind` oneof is internally tagged: `{"kind":"level","rms_dbfs":..}`. Field renames
    // below keep the keys clients already parse.
    tonic_prost_build::configure()
        // Malformed requests (truncated protobuf, invalid UTF-8) are the caller's error:
        // INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::api::codec::StrictCodec")
        .message_attribute(
            ".hark.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(
            ".hark.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .enum_attribute(
            ".hark.v1.Event.kind",
            "#[serde(tag = \"kind\", rename_all = \"snake_case\")]",
        )
        .field_attribute(
            ".hark.v1.Transcript.start_s",
            "#[serde(rename = \"start\")]",
        )
        .field_attribute(".hark.v1.Transcript.end_s", "#[serde(rename = \"end\")]")
        // Positions in samples are in the common `sample` key and in seconds in start/end.
        .field_attribute(
            ".hark.v1.Transcript.start_sample",
            "#[serde(skip_serializing)]",
        )
        .field_attribute(
            ".hark.v1.Transcript.end_sample",
            "#[serde(skip_serializing)]",
        )
        .field_attribute(".hark.v1.Utterance.start_s", "#[serde(rename = \"start\")]")
        .field_attribute(".hark.v1.Utterance.end_s", "#[serde(rename = \"end\")]")
        .field_attribute(
            ".hark.v1.Utterance.start_sample",
            "#[serde(skip_serializing)]",
        )
        .field_attribute(
            ".hark.v1.Utterance.end_sample",
            "#[serde(skip_serializing)]",
        )
        .field_attribute(".hark.v1.Word.start_s", "#[serde(rename = \"start\")]")
        .field_attribute(".hark.v1.Word.end_s", "#[serde(rename = \"end\")]")
        .field_attribute(
            ".hark.v1.SpeechEnded.start_sample",
            "#[serde(rename(serialize = \"start_t\"), \
             serialize_with = \"crate::api::convert::serialize_samples_as_seconds\")]",
        )
        .file_descriptor_set_path(out.join("hark_descriptor.bin"))
        .compile_protos(&["proto/hark/v1/hark.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
