//! A bounded, ordered, on-disk queue of encoded messages: where exported events wait while the
//! NATS server is unreachable.
//!
//! Append-only segment files (`<first record number>.seg`, 20 digits so names sort in order) hold
//! framed records: `len u32 | crc32 u32 | payload`. A reader position (`head`: segment, offset,
//! record number) is saved to a small file now and then (and on [`Spool::flush`]); after a
//! crash the reader resumes from the last saved position, so a few records may be published a
//! second time, which the server drops by their `Nats-Msg-Id`. A record torn by a crash in the
//! middle of a write fails its checksum and is cut off when the spool is reopened.
//!
//! When a new record would take the spool past `max_bytes`, whole segments are deleted oldest
//! first and their unread records counted in [`Spool::dropped`]: the newest events are the ones
//! worth keeping, and deleting a file is the only removal an append-only layout allows.
//!
//! Writes are not fsynced: the spool rides out network outages and daemon restarts; the finals
//! that must survive a power loss are already in the transcript store.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("export spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One spooled message: where it goes, its id for de-duplication, its content type, when the
/// event happened, and the encoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub subject: String,
    pub msg_id: String,
    pub content_type: String,
    /// Publish time of the event, microseconds since the Unix epoch (for the lag report).
    pub wall_us: i64,
    pub body: Vec<u8>,
}

/// Frame header: payload length and CRC-32 of the payload.
const HEADER: usize = 8;
/// Largest payload a frame may claim; anything longer is corruption.
const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;
/// How often the reader position is saved while records are being consumed.
const HEAD_SAVE_EVERY: Duration = Duration::from_secs(1);

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(
            8 + 6
                + self.subject.len()
                + self.msg_id.len()
                + self.content_type.len()
                + self.body.len(),
        );
        p.extend_from_slice(&self.wall_us.to_le_bytes());
        for s in [&self.subject, &self.msg_id, &self.content_type] {
            // Subjects, ids and content types are short; longer would be a bug upstream.
            let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            p.extend_from_slice(&(b.len() as u16).to_le_bytes());
            p.extend_from_slice(b);
        }
        p.extend_from_slice(&self.body);
        let mut frame = Vec::with_capacity(HEADER + p.len());
        frame.extend_from_slice(&(p.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
        frame.extend_from_slice(&p);
        frame
    }

    fn decode(p: &[u8]) -> Option<Record> {
        let wall_us = i64::from_le_bytes(p.get(..8)?.try_into().ok()?);
        let mut at = 8;
        let mut text = || -> Option<String> {
            let n = u16::from_le_bytes(p.get(at..at + 2)?.try_into().ok()?) as usize;
            let s = String::from_utf8(p.get(at + 2..at + 2 + n)?.to_vec()).ok()?;
            at += 2 + n;
            Some(s)
        };
        let subject = text()?;
        let msg_id = text()?;
        let content_type = text()?;
        Some(Record {
            subject,
            msg_id,
            content_type,
            wall_us,
            body: p[at..].to_vec(),
        })
    }
}

#[derive(Debug)]
struct Segment {
    /// Record number of its first record (also its file name).
    first: u64,
    bytes: u64,
    records: u64,
}

/// The reader's place: a byte offset in the oldest segment and the number of the next record.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Head {
    offset: u64,
    record: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    head: Head,
    writer: Option<File>,
    /// Open on the oldest segment, for reading at `head`.
    reader: Option<(u64, File)>,
    /// Length of the frame [`peek`](Self::peek) returned, consumed by [`pop`](Self::pop).
    peeked: Option<u64>,
    dropped: u64,
    head_saved: Instant,
    head_dirty: bool,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes` on disk.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for first in firsts {
            let path = seg_path(dir, first);
            let (bytes, records) = scan(&path)?;
            segments.push_back(Segment {
                first,
                bytes,
                records,
            });
        }
        // Never more than a quarter of the budget per segment, so that dropping the oldest
        // segment frees room without touching the newest records.
        let segment_bytes = (max_bytes / 4).clamp(4096, 16 * 1024 * 1024);
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            segments,
            head: Head {
                offset: 0,
                record: 0,
            },
            writer: None,
            reader: None,
            peeked: None,
            dropped: 0,
            head_saved: Instant::now(),
            head_dirty: false,
        };
        spool.head = spool.load_head();
        Ok(spool)
    }

    fn head_path(&self) -> PathBuf {
        self.dir.join("head")
    }

    /// The saved reader position if it lies in the oldest segment, else that segment's start.
    fn load_head(&self) -> Head {
        let Some(oldest) = self.segments.front() else {
            return Head {
                offset: 0,
                record: 0,
            };
        };
        let start = Head {
            offset: 0,
            record: oldest.first,
        };
        let Ok(text) = std::fs::read_to_string(self.head_path()) else {
            return start;
        };
        let nums: Vec<u64> = text
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        match nums[..] {
            [first, offset, record]
                if first == oldest.first
                    && offset <= oldest.bytes
                    && record >= oldest.first
                    && record <= oldest.first + oldest.records =>
            {
                Head { offset, record }
            }
            _ => start,
        }
    }

    /// Saves the reader position (write to a temporary file, then rename).
    fn save_head(&mut self) -> Result<(), SpoolError> {
        let first = self.segments.front().map_or(0, |s| s.first);
        let tmp = self.dir.join("head.tmp");
        std::fs::write(
            &tmp,
            format!("{first} {} {}\n", self.head.offset, self.head.record),
        )
        .map_err(io_err(&tmp))?;
        let path = self.head_path();
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.head_saved = Instant::now();
        self.head_dirty = false;
        Ok(())
    }

    /// Records waiting.
    pub fn len(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.records).sum();
        let read = self
            .segments
            .front()
            .map_or(0, |s| self.head.record.saturating_sub(s.first));
        total.saturating_sub(read)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of records waiting (frames included).
    pub fn bytes(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        total.saturating_sub(self.head.offset)
    }

    /// Records deleted unread since the spool was opened (the spool was full).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends a record, first deleting the oldest segments if it would not fit. Returns how
    /// many unread records that deleted (a record larger than the whole spool is itself
    /// dropped and counts as one).
    pub fn push(&mut self, record: &Record) -> Result<u64, SpoolError> {
        let frame = record.encode();
        let n = frame.len() as u64;
        if n > self.max_bytes {
            self.dropped += 1;
            return Ok(1);
        }
        let mut dropped = 0;
        while self.disk_bytes() + n > self.max_bytes && !self.segments.is_empty() {
            if self.segments.len() == 1 {
                // The only segment is also the one appended to: start a new one first, so
                // the oldest records go and the new one stays.
                self.roll()?;
            }
            dropped += self.drop_oldest()?;
        }
        if self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.segment_bytes)
        {
            self.roll()?;
        }
        let writer = match &mut self.writer {
            Some(w) => w,
            slot @ None => {
                let last = self.segments.back().map_or(0, |s| s.first);
                let path = seg_path(&self.dir, last);
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                slot.insert(f)
            }
        };
        if let Err(e) = writer.write_all(&frame) {
            // A partial frame may be on disk; the next open cuts it off by its checksum. Keep
            // appending to a fresh segment so the torn frame is never followed by good ones.
            self.writer = None;
            let last = self.segments.back().map_or(0, |s| s.first);
            let _ = self.roll();
            return Err(io_err(&seg_path(&self.dir, last))(e));
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.bytes += n;
            seg.records += 1;
        }
        Ok(dropped)
    }

    /// Starts a new segment numbered after the last record.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let next = self
            .segments
            .back()
            .map_or(self.head.record, |s| s.first + s.records);
        if self.segments.back().is_some_and(|s| s.records == 0) {
            // An empty segment already: keep appending to it.
            return Ok(());
        }
        let path = seg_path(&self.dir, next);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let first_segment = self.segments.is_empty();
        if first_segment {
            self.head = Head {
                offset: 0,
                record: next,
            };
        }
        self.segments.push_back(Segment {
            first: next,
            bytes: 0,
            records: 0,
        });
        self.writer = Some(f);
        if first_segment {
            // The saved position may describe a segment of the same name that was read to the
            // end and deleted; it must not be applied to this one on the next open.
            self.save_head()?;
        }
        Ok(())
    }

    /// Deletes the oldest segment; returns its unread records.
    fn drop_oldest(&mut self) -> Result<u64, SpoolError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(0);
        };
        let unread = (seg.first + seg.records).saturating_sub(self.head.record.max(seg.first));
        self.dropped += unread;
        self.remove_segment_file(seg.first)?;
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.head = Head {
            offset: 0,
            record: self
                .segments
                .front()
                .map_or(seg.first + seg.records, |s| s.first),
        };
        self.peeked = None;
        self.save_head()?;
        Ok(unread)
    }

    fn remove_segment_file(&mut self, first: u64) -> Result<(), SpoolError> {
        if self.reader.as_ref().is_some_and(|(f, _)| *f == first) {
            self.reader = None;
        }
        let path = seg_path(&self.dir, first);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The oldest waiting record, without consuming it.
    pub fn peek(&mut self) -> Result<Option<Record>, SpoolError> {
        loop {
            let Some(oldest) = self.segments.front() else {
                return Ok(None);
            };
            let (first, bytes) = (oldest.first, oldest.bytes);
            if self.head.offset >= bytes {
                if self.segments.len() == 1 {
                    return Ok(None);
                }
                // Read to the end of a segment that is no longer written: delete it.
                self.segments.pop_front();
                self.remove_segment_file(first)?;
                self.head = Head {
                    offset: 0,
                    record: self.segments.front().map_or(0, |s| s.first),
                };
                self.save_head()?;
                continue;
            }
            let path = seg_path(&self.dir, first);
            let file = match &mut self.reader {
                Some((f, file)) if *f == first => file,
                slot => {
                    let file = File::open(&path).map_err(io_err(&path))?;
                    &mut slot.insert((first, file)).1
                }
            };
            file.seek(SeekFrom::Start(self.head.offset))
                .map_err(io_err(&path))?;
            let mut header = [0u8; HEADER];
            file.read_exact(&mut header).map_err(io_err(&path))?;
            let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
            let mut payload = vec![0u8; len as usize];
            file.read_exact(&mut payload).map_err(io_err(&path))?;
            let frame = HEADER as u64 + u64::from(len);
            match (crc32fast::hash(&payload) == crc)
                .then(|| Record::decode(&payload))
                .flatten()
            {
                Some(r) => {
                    self.peeked = Some(frame);
                    return Ok(Some(r));
                }
                None => {
                    // Cannot happen for frames `scan` accepted unless the file changed under
                    // us; skip the frame rather than stall the queue forever.
                    tracing::warn!(path = %path.display(), offset = self.head.offset, "Skipping a corrupt spool record.");
                    self.dropped += 1;
                    self.advance(frame)?;
                }
            }
        }
    }

    /// Consumes the record [`peek`](Self::peek) returned.
    pub fn pop(&mut self) -> Result<(), SpoolError> {
        if let Some(frame) = self.peeked.take() {
            self.advance(frame)?;
        }
        Ok(())
    }

    fn advance(&mut self, frame: u64) -> Result<(), SpoolError> {
        self.head.offset += frame;
        self.head.record += 1;
        self.head_dirty = true;
        let Some(oldest) = self.segments.front() else {
            return Ok(());
        };
        if self.head.offset >= oldest.bytes && self.segments.len() == 1 {
            // Everything read: start over with an empty file, so an idle spool takes no space.
            let first = oldest.first;
            self.writer = None;
            self.segments.clear();
            self.remove_segment_file(first)?;
            let next = self.head.record;
            self.head = Head {
                offset: 0,
                record: next,
            };
            self.save_head()?;
        } else if self.head_saved.elapsed() >= HEAD_SAVE_EVERY {
            self.save_head()?;
        }
        Ok(())
    }

    /// Saves the reader position (call before exiting).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if let Some(w) = &mut self.writer {
            let last = self.segments.back().map_or(0, |s| s.first);
            w.flush().map_err(io_err(&seg_path(&self.dir, last)))?;
        }
        if self.head_dirty || !self.head_path().exists() {
            self.save_head()?;
        }
        Ok(())
    }
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// Counts the whole, intact records of a segment and cuts off anything after the last one (a
/// frame torn by a crash, or garbage). Returns (bytes, records) kept.
fn scan(path: &Path) -> Result<(u64, u64), SpoolError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let (mut at, mut records) = (0usize, 0u64);
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or_default());
        let end = at + HEADER + len as usize;
        if len > MAX_PAYLOAD || end > data.len() || crc32fast::hash(&data[at + HEADER..end]) != crc
        {
            break;
        }
        at = end;
        records += 1;
    }
    if at < data.len() {
        tracing::warn!(path = %path.display(), kept = at, cut = data.len() - at, "Export spool: cutting off a torn record.");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(at as u64).map_err(io_err(path))?;
    }
    Ok((at as u64, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, body_len: usize) -> Record {
        Record {
            subject: "hark.node.main.level".into(),
            msg_id: format!("node-1-{i}"),
            content_type: "application/x-protobuf".into(),
            wall_us: i as i64,
            body: vec![(i % 251) as u8; body_len],
        }
    }

    fn drain(s: &mut Spool) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(r) = s.peek().unwrap() {
            out.push(r.wall_us as u64);
            s.pop().unwrap();
        }
        out
    }

    #[test]
    fn records_come_out_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..100 {
            s.push(&rec(i, 100)).unwrap();
        }
        assert_eq!(s.len(), 100);
        // Read 30, then "restart".
        for i in 0..30 {
            assert_eq!(s.peek().unwrap().unwrap(), rec(i, 100));
            s.pop().unwrap();
        }
        s.flush().unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 70);
        for i in 100..110 {
            s.push(&rec(i, 100)).unwrap();
        }
        assert_eq!(drain(&mut s), (30..110).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.dropped(), 0);
        // Emptied: no segment files are left behind.
        let segs = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(segs, 0);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_records_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let mut s = Spool::open(dir.path(), max).unwrap();
        let mut dropped = 0;
        for i in 0..2000 {
            dropped += s.push(&rec(i, 200)).unwrap();
            let on_disk: u64 = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(on_disk <= max + 64, "{on_disk} bytes on disk after {i}");
        }
        assert!(dropped > 0);
        assert_eq!(s.dropped(), dropped);
        let got = drain(&mut s);
        // What is left is the newest records, in order, and everything is accounted for.
        assert_eq!(got.len() as u64 + dropped, 2000);
        assert_eq!(*got.last().unwrap(), 1999);
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "a hole in the kept records"
        );
    }

    #[test]
    fn a_torn_write_is_cut_off_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            s.push(&rec(i, 50)).unwrap();
        }
        s.flush().unwrap();
        drop(s);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        // Half a frame at the end, as a crash mid-write leaves it.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&rec(10, 50).encode()[..30]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 10);
        s.push(&rec(11, 50)).unwrap();
        let mut want: Vec<u64> = (0..10).collect();
        want.push(11);
        assert_eq!(drain(&mut s), want);
    }

    #[test]
    fn a_record_larger_than_the_spool_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 8192).unwrap();
        assert_eq!(s.push(&rec(0, 10_000)).unwrap(), 1);
        assert!(s.is_empty());
        assert_eq!(s.dropped(), 1);
        s.push(&rec(1, 10)).unwrap();
        assert_eq!(drain(&mut s), vec![1]);
    }

    proptest::proptest! {
        /// Against a VecDeque model: pushes and pops in any interleaving, with reopens, keep
        /// order; with a budget that never fills nothing is lost.
        #[test]
        fn behaves_like_a_fifo(ops in proptest::collection::vec(0u8..10, 1..300)) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), 1 << 22).unwrap();
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    0..=5 => {
                        s.push(&rec(next, (next % 300) as usize)).unwrap();
                        model.push_back(next);
                        next += 1;
                    }
                    6..=8 => {
                        let got = s.peek().unwrap().map(|r| r.wall_us as u64);
                        proptest::prop_assert_eq!(got, model.front().copied());
                        s.pop().unwrap();
                        model.pop_front();
                    }
                    _ => {
                        s.flush().unwrap();
                        drop(s);
                        s = Spool::open(dir.path(), 1 << 22).unwrap();
                    }
                }
                proptest::prop_assert_eq!(s.len(), model.len() as u64);
            }
            proptest::prop_assert_eq!(drain(&mut s), model.into_iter().collect::<Vec<_>>());
        }
    }
}
