//! Microphone capture through cpal. The data callback only converts and copies into the segment's
//! ring ([`CaptureWriter`]): no allocation, lock, log or syscall. Errors reported by cpal mark the
//! stream as failed; [`supervise`] then reopens it with backoff.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use super::{
    Format, Source, SourceContext, SourceError,
    supervise::{Backoff, Device, supervise},
};

/// An input device as listed by `harkd devices`.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub is_default: bool,
    pub default_rate: u32,
    pub channels: u16,
}

/// Lists input devices of the default host.
pub fn list_devices() -> Result<Vec<DeviceInfo>, SourceError> {
    let host = cpal::default_host();
    let default_name = host.default_input_device().map(|d| d.to_string());
    let devices = host
        .input_devices()
        .map_err(|e| SourceError::Device(e.to_string()))?;
    Ok(devices
        .map(|d| {
            let name = d.to_string();
            let (default_rate, channels) = d
                .default_input_config()
                .map(|c| (c.sample_rate(), c.channels()))
                .unwrap_or((0, 0));
            DeviceInfo {
                is_default: default_name.as_deref() == Some(name.as_str()),
                name,
                default_rate,
                channels,
            }
        })
        .collect())
}

fn find_device(name: Option<&str>) -> Result<cpal::Device, SourceError> {
    let host = cpal::default_host();
    let Some(name) = name else {
        return host
            .default_input_device()
            .ok_or_else(|| SourceError::Device("no default input device".into()));
    };
    let devices: Vec<cpal::Device> = host
        .input_devices()
        .map_err(|e| SourceError::Device(e.to_string()))?
        .collect();
    let lower = name.to_lowercase();
    // Exact name first, then a case-insensitive substring, so "USB" picks "USB Audio Device".
    devices
        .iter()
        .find(|d| d.to_string() == name)
        .or_else(|| {
            devices
                .iter()
                .find(|d| d.to_string().to_lowercase().contains(&lower))
        })
        .cloned()
        .ok_or_else(|| {
            SourceError::Device(format!(
                "no input device named {name:?} (see `harkd devices`)"
            ))
        })
}

/// Microphone source (cargo feature `mic`).
#[derive(Debug)]
pub struct MicSource {
    device: Option<String>,
    resolved: String,
    backoff: Backoff,
}

impl MicSource {
    /// Resolves the device now so that a wrong name fails at startup.
    /// A device not present yet is waited for (see [`supervise`]), not an error: a USB
    /// microphone may be plugged in after the daemon starts.
    pub fn new(device: Option<String>) -> Result<Self, SourceError> {
        let resolved = match find_device(device.as_deref()) {
            Ok(d) => d.to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "Input device not found yet; harkd will wait for it.");
                device.clone().unwrap_or_else(|| "default".into())
            }
        };
        Ok(Self {
            device,
            resolved,
            backoff: Backoff::default(),
        })
    }
}

impl Source for MicSource {
    fn describe(&self) -> String {
        format!("mic:{}", self.resolved)
    }

    fn device_name(&self) -> Option<String> {
        Some(self.resolved.clone())
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let dev = CpalDevice {
            name: self.device.clone(),
        };
        supervise(dev, &ctx, self.backoff, Duration::from_millis(100))
    }
}

struct CpalDevice {
    name: Option<String>,
}

struct OpenStream {
    _stream: cpal::Stream,
    failed: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
}

impl Device for CpalDevice {
    type Stream = OpenStream;

    fn open(&mut self, ctx: &SourceContext) -> Result<OpenStream, SourceError> {
        let device = find_device(self.name.as_deref())?;
        let supported = device
            .default_input_config()
            .map_err(|e| SourceError::Device(e.to_string()))?;
        let config = supported.config();
        let format = Format {
            rate: config.sample_rate,
            channels: config.channels,
        };
        let mut writer = ctx.open_segment(format, true)?;
        let failed = Arc::new(AtomicBool::new(false));
        let reason = Arc::new(Mutex::new(String::new()));
        let (f, r) = (failed.clone(), reason.clone());
        // The error callback is not on the real-time path; a lock here is fine.
        let on_error = move |e: cpal::Error| {
            if let Ok(mut s) = r.lock() {
                *s = e.to_string();
            }
            f.store(true, Ordering::Release);
        };
        let dev_err = |e: cpal::Error| SourceError::Device(e.to_string());
        let stream = match supported.sample_format() {
            cpal::SampleFormat::F32 => device.build_input_stream(
                config,
                move |d: &[f32], _: &cpal::InputCallbackInfo| {
                    writer.write_f32(d);
                },
                on_error,
                None,
            ),
            cpal::SampleFormat::I16 => device.build_input_stream(
                config,
                move |d: &[i16], _: &cpal::InputCallbackInfo| {
                    writer.write_i16(d);
                },
                on_error,
                None,
            ),
            cpal::SampleFormat::U16 => device.build_input_stream(
                config,
                move |d: &[u16], _: &cpal::InputCallbackInfo| {
                    writer.write_u16(d);
                },
                on_error,
                None,
            ),
            cpal::SampleFormat::I32 => device.build_input_stream(
                config,
                move |d: &[i32], _: &cpal::InputCallbackInfo| {
                    writer.write_i32(d);
                },
                on_error,
                None,
            ),
            other => {
                return Err(SourceError::Device(format!(
                    "unsupported device sample format {other:?}"
                )));
            }
        }
        .map_err(dev_err)?;
        stream.play().map_err(dev_err)?;
        Ok(OpenStream {
            _stream: stream,
            failed,
            reason,
        })
    }

    fn failure(&self, stream: &OpenStream) -> Option<String> {
        stream.failed.load(Ordering::Acquire).then(|| {
            stream
                .reason
                .lock()
                .map(|s| s.clone())
                .unwrap_or_else(|_| "device error".into())
        })
    }
}
