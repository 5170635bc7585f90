//! Pipeline stages. Each is a [`Stage`] run on its own thread by the runner; see `pipeline` for
//! windowing and overflow handling.
//!
//! Every stage is listed once, in [`REGISTRY`]: its name (thread name, status, metrics, the key
//! of `[pipeline.overflow]`), its config section, its default overflow policy, when it is on, and
//! how to build it. The daemon builds each pipeline (the main source and every StreamAudio
//! session) from this table and knows no stage by name.
//!
//! **Adding a stage**: a module here implementing [`Stage`], its config section in
//! [`Config`](crate::config::Config), and one [`StageEntry`] in [`REGISTRY`]. Weights that every
//! pipeline should share (rather than load per StreamAudio session) go through
//! [`StageResources::shared`].

pub mod asr;
pub mod level;
pub mod notes;
pub mod sound;
pub mod transcribe;
pub mod vad;
pub mod wake;

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    config::Config,
    pipeline::{OverflowPolicy, Stage, StageSpec},
};

/// A stage could not be built from its config.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage} (config section [{section}]): {reason}")]
pub struct StageBuildError {
    pub stage: &'static str,
    pub section: &'static str,
    pub reason: String,
}

/// Loaded things every pipeline's stages share, created once by the daemon.
#[derive(Debug, Default)]
pub struct StageResources {
    /// The Whisper model (loaded on first use), when transcription is on. The one-shot
    /// Transcribe RPC shares it too, which is why the daemon, not the registry, decides it.
    pub whisper: Option<asr::SharedModel>,
    cache: Mutex<HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>>,
}

impl StageResources {
    pub fn new(whisper: Option<asr::SharedModel>) -> Self {
        Self {
            whisper,
            cache: Mutex::default(),
        }
    }

    /// The `T` stored under `key`, loading it with `load` the first time, so that every
    /// pipeline's stage uses one copy (e.g. a model's weights). A failed load is not cached.
    pub fn shared<T, E>(&self, key: &str, load: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
    {
        let id = (TypeId::of::<T>(), key.to_string());
        // Held across `load` so two sessions starting at once do not load twice.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(&id).and_then(|v| v.clone().downcast::<T>().ok()) {
            return Ok(v);
        }
        let v = Arc::new(load()?);
        cache.insert(id, v.clone());
        Ok(v)
    }
}

/// What a stage's rules and build function see.
#[derive(Debug, Clone, Copy)]
pub struct StageContext<'a> {
    pub config: &'a Config,
    pub resources: &'a StageResources,
}

/// One stage kind in the registry.
#[derive(Debug)]
pub struct StageEntry {
    /// Stage name, as returned by its [`Stage::name`].
    pub name: &'static str,
    /// The config section holding its settings (`[vad]`), for documentation and messages.
    pub section: &'static str,
    /// Used when `[pipeline.overflow]` does not name the stage.
    pub default_overflow: OverflowPolicy,
    /// Whether the stage runs with this config.
    pub enabled: fn(&StageContext<'_>) -> bool,
    /// Builds a fresh instance (one per pipeline); called only when `enabled`.
    pub build: fn(&StageContext<'_>) -> Result<Box<dyn Stage>, String>,
}

/// Every stage, in the order their threads are started.
pub static REGISTRY: &[StageEntry] = &[
    StageEntry {
        name: "vad",
        section: "vad",
        default_overflow: OverflowPolicy::CatchUp { max_lag_ms: 1000 },
        enabled: |cx| cx.config.vad.enabled,
        build: |cx| {
            Ok(Box::new(
                vad::VadStage::new(&cx.config.vad).map_err(|e| e.to_string())?,
            ))
        },
    },
    StageEntry {
        name: "transcribe",
        section: "transcribe",
        // A long decode must not cost the start of the next utterance: drop only when the ring
        // (`pipeline.stage_ring_ms`) is full.
        default_overflow: OverflowPolicy::DropNewest,
        enabled: |cx| cx.resources.whisper.is_some(),
        build: asr::build_transcribe_stage,
    },
    StageEntry {
        name: "wake",
        section: "wake",
        // Always-on and cheap; a phrase heard late is still worth reporting, but not seconds
        // late: skip what it cannot keep up with.
        default_overflow: OverflowPolicy::CatchUp { max_lag_ms: 1000 },
        enabled: wake::enabled,
        build: wake::build,
    },
    StageEntry {
        name: "sound",
        section: "sound",
        // A live detector wants recent audio: skip what it cannot keep up with.
        default_overflow: OverflowPolicy::CatchUp { max_lag_ms: 2000 },
        enabled: sound::enabled,
        build: sound::build,
    },
    StageEntry {
        name: "notes",
        section: "notes",
        // Notes need every frame of a phrase; a stage that fell behind skips to recent audio
        // (its open note is closed at the gap).
        default_overflow: OverflowPolicy::CatchUp { max_lag_ms: 2000 },
        enabled: notes::enabled,
        build: notes::build,
    },
    StageEntry {
        name: "level",
        section: "level",
        default_overflow: OverflowPolicy::CatchUp { max_lag_ms: 500 },
        enabled: |cx| cx.config.level.enabled,
        build: |cx| Ok(Box::new(level::LevelStage::new(&cx.config.level))),
    },
];

/// The registry entry called `name`.
pub fn entry(name: &str) -> Option<&'static StageEntry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// Builds the enabled stages for one pipeline.
pub fn build_stages(cx: &StageContext<'_>) -> Result<Vec<StageSpec>, StageBuildError> {
    REGISTRY
        .iter()
        .filter(|e| (e.enabled)(cx))
        .map(|e| {
            let stage = (e.build)(cx).map_err(|reason| StageBuildError {
                stage: e.name,
                section: e.section,
                reason,
            })?;
            debug_assert_eq!(
                stage.name(),
                e.name,
                "registry name differs from Stage::name"
            );
            Ok(StageSpec {
                stage,
                policy: cx
                    .config
                    .pipeline
                    .overflow_policy(e.name, e.default_overflow),
                ring_ms: cx.config.pipeline.stage_ring_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_match_the_stages() {
        let cfg = Config::default();
        let resources = StageResources::default();
        let cx = StageContext {
            config: &cfg,
            resources: &resources,
        };
        let mut names: Vec<_> = REGISTRY.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for e in REGISTRY.iter().filter(|e| e.name != "transcribe") {
            assert_eq!((e.build)(&cx).unwrap().name(), e.name);
        }
    }

    #[test]
    fn enable_rules_and_overflow_defaults_come_from_the_registry() {
        let mut cfg = Config::default();
        cfg.level.enabled = true;
        // `auto` would find the bundled sound and wake models; this test is about the rules, not
        // models.
        cfg.sound.enabled = crate::stages::asr::Enable::Off;
        cfg.wake.enabled = crate::stages::asr::Enable::Off;
        let resources = StageResources::default();
        let cx = StageContext {
            config: &cfg,
            resources: &resources,
        };
        let specs = build_stages(&cx).unwrap();
        let got: Vec<_> = specs.iter().map(|s| (s.stage.name(), s.policy)).collect();
        assert_eq!(
            got,
            vec![
                ("vad", OverflowPolicy::CatchUp { max_lag_ms: 1000 }),
                ("level", OverflowPolicy::CatchUp { max_lag_ms: 500 }),
            ],
            "no Whisper model: no transcribe stage"
        );
    }

    #[test]
    fn shared_resources_load_once() {
        let r = StageResources::default();
        let mut loads = 0;
        let a = r
            .shared("m", || {
                loads += 1;
                Ok::<_, String>(vec![1u8])
            })
            .unwrap();
        let b = r.shared("m", || Err::<Vec<u8>, _>("must not load again".to_string()));
        assert!(Arc::ptr_eq(&a, &b.unwrap()));
        assert_eq!(loads, 1);
        assert!(r.shared("other", || Err::<Vec<u8>, _>("x")).is_err());
    }
}
