//! Audio pushed from another task (gRPC `StreamAudio`): blocks of f32 arrive over a bounded
//! channel, so a client that sends faster than the pipeline runs is slowed by flow control.

use tokio::sync::mpsc;

use super::{Format, Source, SourceContext, SourceError};

#[derive(Debug)]
pub struct ChannelSource {
    pub name: String,
    pub format: Format,
    pub rx: mpsc::Receiver<Vec<f32>>,
}

impl Source for ChannelSource {
    fn describe(&self) -> String {
        format!(
            "{} ({} Hz, {} ch)",
            self.name, self.format.rate, self.format.channels
        )
    }

    fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let mut writer = ctx.open_segment(self.format, false)?;
        while let Some(block) = self.rx.blocking_recv() {
            if ctx.should_stop() || !writer.write_f32(&block) {
                break;
            }
        }
        Ok(())
    }
}
