//! The JetStream side of batch transcription, shared by the worker and `hark batch`: stream,
//! bucket and consumer names and settings, job ids, and result look-ups.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, object_store, stream};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use super::FleetError;
use crate::api::pb;

/// Work-queue stream of transcription jobs.
pub const JOBS_STREAM: &str = "HARK_JOBS";
/// Subject jobs are published on.
pub const JOBS_SUBJECT: &str = "hark.jobs.transcribe";
/// Stream of results, one message per job.
pub const RESULTS_STREAM: &str = "HARK_RESULTS";
/// Prefix of result subjects (`hark.results.<job id>`).
pub const RESULTS_PREFIX: &str = "hark.results";
/// Object store bucket of uploaded recordings.
pub const AUDIO_BUCKET: &str = "hark-audio";
/// Durable consumer every worker pulls from.
pub const CONSUMER: &str = "transcribe";
/// How long results and uploaded audio are kept.
const RESULTS_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);
const AUDIO_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// Consumer settings a worker asks for (the first worker creates the consumer; later ones use
/// it as it is, so every worker of a fleet shares one queue position).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// A job not acked (nor reported in progress) for this long goes to another worker.
    pub ack_wait: Duration,
    /// Deliveries before a job is given up (each is a worker that died or failed on it).
    pub max_deliver: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        }
    }
}

/// Handles on the job and result streams and the audio bucket.
#[derive(Clone)]
pub struct Queue {
    pub js: jetstream::Context,
    pub jobs: stream::Stream,
    pub results: stream::Stream,
    pub audio: object_store::ObjectStore,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    /// Finds (or creates) the streams and the bucket.
    pub async fn open(client: async_nats::Client) -> Result<Self, FleetError> {
        let js = jetstream::new(client);
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: JOBS_STREAM.into(),
                subjects: vec![JOBS_SUBJECT.into()],
                // A job leaves the stream when a worker acks it.
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                // Resubmitting a job within this window (a rerun while it waits) adds nothing.
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .map_err(|e| FleetError::js(format!("stream {JOBS_STREAM}"), e))?;
        let results = js
            .get_or_create_stream(stream::Config {
                name: RESULTS_STREAM.into(),
                subjects: vec![format!("{RESULTS_PREFIX}.*")],
                storage: stream::StorageType::File,
                // One result per job, whatever happens upstream.
                max_messages_per_subject: 1,
                duplicate_window: Duration::from_secs(600),
                max_age: RESULTS_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|e| FleetError::js(format!("stream {RESULTS_STREAM}"), e))?;
        let audio = match js.get_object_store(AUDIO_BUCKET).await {
            Ok(b) => b,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: AUDIO_BUCKET.into(),
                    description: Some("recordings submitted by hark batch".into()),
                    max_age: AUDIO_MAX_AGE,
                    ..Default::default()
                })
                .await
                .map_err(|e| FleetError::js(format!("object store {AUDIO_BUCKET}"), e))?,
        };
        Ok(Queue {
            js,
            jobs,
            results,
            audio,
        })
    }

    /// The workers' durable pull consumer (created with `settings` when missing).
    pub async fn consumer(
        &self,
        settings: &ConsumerSettings,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, FleetError> {
        self.jobs
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    description: Some("harkd worker: batch transcription".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    max_deliver: settings.max_deliver,
                    filter_subject: JOBS_SUBJECT.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| FleetError::js(format!("consumer {CONSUMER}"), e))
    }

    /// The stored result of a job, if there is one.
    pub async fn result(&self, job_id: &str) -> Result<Option<pb::BatchResult>, FleetError> {
        use jetstream::stream::LastRawMessageErrorKind as K;
        match self
            .results
            .get_last_raw_message_by_subject(&result_subject(job_id))
            .await
        {
            Ok(m) => decode_result(&m.payload).map(Some),
            Err(e) if e.kind() == K::NoMessageFound => Ok(None),
            Err(e) => Err(FleetError::js("result look-up", e)),
        }
    }

    /// Publishes a result (de-duplicated by job id) and waits for the server to store it.
    pub async fn publish_result(&self, r: &pb::BatchResult) -> Result<(), FleetError> {
        let ack = self
            .js
            .send_publish(
                result_subject(&r.job_id),
                jetstream::message::PublishMessage::build()
                    .payload(r.encode_to_vec().into())
                    .message_id(&r.job_id),
            )
            .await
            .map_err(|e| FleetError::js("publish result", e))?;
        ack.await.map_err(|e| FleetError::js("publish result", e))?;
        Ok(())
    }

    /// Submits a job (de-duplicated by job id within the stream's window).
    pub async fn submit(&self, job: &pb::BatchJob) -> Result<(), FleetError> {
        let ack = self
            .js
            .send_publish(
                JOBS_SUBJECT,
                jetstream::message::PublishMessage::build()
                    .payload(job.encode_to_vec().into())
                    .message_id(&job.job_id),
            )
            .await
            .map_err(|e| FleetError::js("submit job", e))?;
        ack.await.map_err(|e| FleetError::js("submit job", e))?;
        Ok(())
    }

    /// Uploads a recording under `name` unless an object of that name (a content hash) is
    /// already there.
    pub async fn upload(&self, name: &str, audio: &[u8]) -> Result<bool, FleetError> {
        if self.audio.info(name).await.is_ok() {
            return Ok(false);
        }
        let mut reader = audio;
        self.audio
            .put(name, &mut reader)
            .await
            .map_err(|e| FleetError::js(format!("upload {name}"), e))?;
        Ok(true)
    }

    /// Downloads a recording.
    pub async fn download(&self, name: &str) -> Result<Vec<u8>, FleetError> {
        use tokio::io::AsyncReadExt as _;
        let mut object = self
            .audio
            .get(name)
            .await
            .map_err(|e| FleetError::js(format!("object {name}"), e))?;
        let mut out = Vec::new();
        object
            .read_to_end(&mut out)
            .await
            .map_err(|e| FleetError::js(format!("object {name}"), e))?;
        Ok(out)
    }
}

pub fn result_subject(job_id: &str) -> String {
    format!("{RESULTS_PREFIX}.{job_id}")
}

pub fn decode_result(bytes: &[u8]) -> Result<pb::BatchResult, FleetError> {
    pb::BatchResult::decode(bytes).map_err(|e| FleetError::Decode {
        what: "result",
        message: e.to_string(),
    })
}

pub fn decode_job(bytes: &[u8]) -> Result<pb::BatchJob, FleetError> {
    pb::BatchJob::decode(bytes).map_err(|e| FleetError::Decode {
        what: "job",
        message: e.to_string(),
    })
}

/// Object name of a recording: the hex SHA-256 of its bytes.
pub fn audio_object_name(audio: &[u8]) -> String {
    format!("sha256-{}", hex(&Sha256::digest(audio)))
}

/// A job's id: a hash of the audio's object name and the encoded options, so the same file
/// with the same options is the same job (32 hex digits, a valid subject token).
pub fn job_id(object: &str, options: &pb::TranscribeRequest) -> String {
    let mut h = Sha256::new();
    h.update(object.as_bytes());
    h.update([0]);
    // prost encodes fields in tag order, so equal options give equal bytes.
    h.update(options.encode_to_vec());
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_follow_content_and_options() {
        let a = audio_object_name(b"one");
        let b = audio_object_name(b"two");
        let opts = pb::TranscribeRequest::default();
        let beam = pb::TranscribeRequest {
            beam_size: 5,
            ..Default::default()
        };
        assert_eq!(job_id(&a, &opts), job_id(&a, &opts));
        assert_ne!(job_id(&a, &opts), job_id(&b, &opts));
        assert_ne!(job_id(&a, &opts), job_id(&a, &beam));
        let id = job_id(&a, &opts);
        assert_eq!(id.len(), 32);
        assert!(crate::export::is_subject_token(&id));
    }
}
