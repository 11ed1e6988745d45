//! The recording writer: one thread that turns the RTP of recorded calls into stereo WAV files
//! (caller left, callee right, 16-bit, 8 kHz) through hound, off the forwarding path.
//!
//! (16 kHz when a leg negotiated a wideband codec such as G.722).
//!
//! Media workers copy each forwarded packet of a recorded session into a fixed-size [`Tap`]
//! and hand it over a bounded channel without waiting: no allocation, no lock, and a full
//! channel drops the copy (counted), never the forwarded packet. Control messages (start,
//! pause, resume, stop) come on a second channel from the same workers, in order after the
//! taps they follow. The thread places the audio on a [`StereoTimeline`] (jitter buffer,
//! G.711 decoding, alignment by RTP timestamps, silence for gaps and holds) and appends what is
//! due every 20 ms.
//!
//! A voicemail (an IVR `record`) is the caller's channel alone, mono, in a row of kind
//! `voicemail` attached to the mailbox extension. The writer measures each 20 ms of it: a
//! frame louder than [`SOUND_RMS`] is sound, and the flow's `silence` without sound ends the
//! voicemail here; its end (stopped, silent or the call gone) is reported to call control as
//! [`MediaEvent::RecordDone`].
//!
//! Crash safety: the WAV header is rewritten with the current sizes every second
//! (`WavWriter::flush`), so a `kill -9` loses at most that last second, and [`repair`] fixes
//! the header of every file the last run left open at the next start (its row is then marked
//! `interrupted`). Rows are written through the record writer, like call records.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use switchboard_media::recording::StereoTimeline;
use switchboard_media::relay::Side;
use switchboard_signalling::media::{MediaEvent, SessionId, Voicemail};
use switchboard_storage::batch::Write;
use switchboard_storage::recordings::{Recording, RecordingKind, RecordingStatus};
use switchboard_storage::{Db, Timestamp, Uuid, recordings};
use tokio::sync::mpsc as async_mpsc;

use crate::sip::persist::Record;

/// Largest RTP packet copied for recording (20 ms of G.711 is 172 bytes; 60 ms is 492).
pub(crate) const TAP_BYTES: usize = 512;
/// Taps queued for the writer thread.
const TAP_QUEUE: usize = 16_384;
/// How often due audio is appended.
const TICK: Duration = Duration::from_millis(20);
/// How often headers are brought up to date on disk.
const CHECKPOINT: Duration = Duration::from_secs(1);
/// RTP clock of the recorded codecs (G.711 and G.722), and the rate of narrowband files.
const RATE: u32 = 8_000;
/// Rate of files with a wideband leg.
const WIDEBAND_RATE: u32 = 16_000;
/// A 20 ms frame of a voicemail whose RMS is above this (about -36 dBFS) is sound.
const SOUND_RMS: f64 = 500.0;
/// Samples per 20 ms at 8 kHz.
const FRAME: usize = 160;

/// A copy of one forwarded RTP packet of a recorded session.
pub(crate) struct Tap {
    recording: Uuid,
    side: Side,
    arrival: Instant,
    len: u16,
    bytes: [u8; TAP_BYTES],
}

/// What the writer thread is told besides packets.
#[derive(Debug)]
pub(crate) enum Control {
    /// Open a file and start writing.
    Start {
        recording: Uuid,
        tenant: Uuid,
        call: Uuid,
        wall_ms: u64,
        /// A leg is wideband: write 16 kHz.
        wideband: bool,
        /// A voicemail of this session: the caller alone, mono.
        voicemail: Option<(SessionId, Voicemail)>,
        at: Instant,
    },
    /// Leave out what follows.
    Pause { recording: Uuid, at: Instant },
    /// Write again.
    Resume { recording: Uuid, at: Instant },
    /// Close the file.
    Stop { recording: Uuid, at: Instant },
}

/// The writer's counters (read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Recordings being written.
    pub active: AtomicU64,
    /// Recordings finished.
    pub completed: AtomicU64,
    /// Packet copies dropped because the writer was behind (each a gap in a file).
    pub taps_dropped: AtomicU64,
    /// Files that could not be created or written.
    pub write_errors: AtomicU64,
}

/// The workers' handle on the writer thread.
#[derive(Clone)]
pub(crate) struct Recorder {
    taps: mpsc::SyncSender<Tap>,
    control: mpsc::Sender<Control>,
    stats: Arc<RecorderStats>,
}

impl Recorder {
    /// Starts the writer thread; files go under `dir`, rows through `records`.
    pub(crate) fn start(
        dir: PathBuf,
        records: async_mpsc::Sender<Record>,
        events: async_mpsc::Sender<MediaEvent>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (taps, tap_rx) = mpsc::sync_channel(TAP_QUEUE);
        let (control, control_rx) = mpsc::channel();
        let stats = Arc::new(RecorderStats::default());
        let writer = Writer {
            dir,
            records,
            events,
            taps: tap_rx,
            control: control_rx,
            active: HashMap::new(),
            stats: stats.clone(),
            out: Vec::with_capacity(2 * RATE as usize),
        };
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer.run())?;
        Ok((
            Self {
                taps,
                control,
                stats,
            },
            thread,
        ))
    }

    /// The writer's counters.
    pub(crate) fn stats(&self) -> Arc<RecorderStats> {
        self.stats.clone()
    }

    /// Copies a forwarded packet for `recording`. Never waits.
    pub(crate) fn tap(&self, recording: Uuid, side: Side, arrival: Instant, packet: &[u8]) {
        let Ok(len) = u16::try_from(packet.len()) else {
            return;
        };
        if packet.len() > TAP_BYTES {
            self.stats.taps_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut tap = Tap {
            recording,
            side,
            arrival,
            len,
            bytes: [0; TAP_BYTES],
        };
        tap.bytes[..packet.len()].copy_from_slice(packet);
        if self.taps.try_send(tap).is_err() {
            self.stats.taps_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the writer thread to start, pause, resume or stop a recording.
    pub(crate) fn control(&self, control: Control) {
        if self.control.send(control).is_err() {
            tracing::error!("the recording writer has stopped");
        }
    }
}

/// One file being written.
struct Active {
    file: hound::WavWriter<BufWriter<File>>,
    path: PathBuf,
    timeline: StereoTimeline,
    checkpoint: Instant,
    stopped: bool,
    voicemail: Option<VoicemailState>,
}

/// What appending to a recording came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Appended {
    Written,
    /// A voicemail reached its silence limit.
    Silent,
    /// The file could not be written.
    Failed,
}

/// What the writer tracks of a voicemail.
struct VoicemailState {
    session: SessionId,
    /// Samples of silence that end it.
    silence: Option<u64>,
    /// Samples of silence at the end so far.
    quiet: u64,
    heard: bool,
}

impl VoicemailState {
    /// Measures `samples` (mono); true once the silence limit is reached.
    fn measure(&mut self, samples: &[i16]) -> bool {
        for frame in samples.chunks(FRAME) {
            let energy: f64 = frame.iter().map(|&s| f64::from(s).powi(2)).sum();
            let rms = (energy / frame.len() as f64).sqrt();
            if rms > SOUND_RMS {
                self.heard = true;
                self.quiet = 0;
            } else {
                self.quiet += frame.len() as u64;
            }
        }
        self.silence.is_some_and(|limit| self.quiet >= limit)
    }
}

struct Writer {
    dir: PathBuf,
    records: async_mpsc::Sender<Record>,
    events: async_mpsc::Sender<MediaEvent>,
    taps: mpsc::Receiver<Tap>,
    control: mpsc::Receiver<Control>,
    active: HashMap<Uuid, Active>,
    stats: Arc<RecorderStats>,
    out: Vec<i16>,
}

/// The spec of a recording at `sample_rate` (2 channels for a call, 1 for a voicemail).
fn spec(sample_rate: u32, channels: u16) -> hound::WavSpec {
    hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// Where a recording's file lives, relative to the recordings directory.
pub(crate) fn relative_path(tenant: Uuid, recording: Uuid) -> String {
    format!("{tenant}/{recording}.wav")
}

impl Writer {
    // The writer thread owns the clock of the files it writes.
    #[allow(clippy::disallowed_methods)]
    fn run(mut self) {
        let mut next = Instant::now() + TICK;
        loop {
            match self
                .taps
                .recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                Ok(tap) => {
                    self.take(&tap);
                    // Take whatever else is queued before looking at the clock again.
                    for _ in 0..TAP_QUEUE {
                        match self.taps.try_recv() {
                            Ok(tap) => self.take(&tap),
                            Err(_) => break,
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.controls();
            let now = Instant::now();
            if now >= next {
                self.append_due(now);
                next = now + TICK;
            }
        }
        // Every worker is gone (shutdown): close what is open.
        self.controls();
        let now = Instant::now();
        let open: Vec<Uuid> = self.active.keys().copied().collect();
        for recording in open {
            self.finish(recording, now);
        }
    }

    fn take(&mut self, tap: &Tap) {
        if !self.active.contains_key(&tap.recording) {
            // Its start may still be queued on the control channel.
            self.controls();
        }
        if let Some(active) = self.active.get_mut(&tap.recording) {
            let packet = &tap.bytes[..usize::from(tap.len)];
            active.timeline.push(tap.arrival, tap.side, packet);
        }
    }

    fn controls(&mut self) {
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::Start {
                    recording,
                    tenant,
                    call,
                    wall_ms,
                    wideband,
                    voicemail,
                    at,
                } => {
                    let rate = if wideband && voicemail.is_none() {
                        WIDEBAND_RATE
                    } else {
                        RATE
                    };
                    self.open(recording, (tenant, call), (wall_ms, rate, voicemail), at);
                }
                Control::Pause { recording, at } => {
                    if self.append_one(recording, at) == Appended::Failed {
                        self.finish(recording, at);
                        continue;
                    }
                    if let Some(active) = self.active.get_mut(&recording) {
                        active.timeline.pause(at);
                    }
                }
                Control::Resume { recording, at } => {
                    if let Some(active) = self.active.get_mut(&recording) {
                        active.timeline.resume(at);
                    }
                }
                Control::Stop { recording, at } => {
                    // The taps sent before the stop are queued already: take them first.
                    while let Ok(tap) = self.taps.try_recv() {
                        self.take(&tap);
                    }
                    if let Some(active) = self.active.get_mut(&recording) {
                        active.stopped = true;
                    }
                    self.finish(recording, at);
                }
            }
        }
    }

    fn open(
        &mut self,
        recording: Uuid,
        (tenant, call): (Uuid, Uuid),
        (wall_ms, rate, voicemail): (u64, u32, Option<(SessionId, Voicemail)>),
        at: Instant,
    ) {
        let channels: u16 = if voicemail.is_some() { 1 } else { 2 };
        let relative = relative_path(tenant, recording);
        let path = self.dir.join(&relative);
        let created = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(hound::Error::from)
            .and_then(|()| hound::WavWriter::create(&path, spec(rate, channels)))
            // Write the header at once: even an empty recording is a valid file.
            .and_then(|mut file| file.flush().map(|()| file));
        let file = match created {
            Ok(file) => file,
            Err(error) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, path = %path.display(), "could not create a recording");
                if let Some((session, _)) = voicemail {
                    let done = MediaEvent::RecordDone {
                        session,
                        recording,
                        duration_ms: 0,
                        heard: false,
                    };
                    let _ = self.events.try_send(done);
                }
                return;
            }
        };
        let created_at = Timestamp(i64::try_from(wall_ms).unwrap_or(i64::MAX));
        self.record(Record::Write(Write::RecordingStart(Box::new(Recording {
            id: recording,
            tenant_id: tenant,
            call_id: Some(call),
            extension_id: voicemail.and_then(|(_, v)| v.mailbox),
            kind: if voicemail.is_some() {
                RecordingKind::Voicemail
            } else {
                RecordingKind::Call
            },
            status: RecordingStatus::Recording,
            path: relative,
            duration_ms: 0,
            channels: i32::from(channels),
            sample_rate: i32::try_from(rate).unwrap_or(i32::MAX),
            size_bytes: 0,
            created_at,
            completed_at: None,
        }))));
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%recording, %call, path = %path.display(), "recording started");
        self.active.insert(
            recording,
            Active {
                file,
                path,
                timeline: StereoTimeline::new(at, RATE, rate),
                checkpoint: at,
                stopped: false,
                voicemail: voicemail.map(|(session, v)| VoicemailState {
                    session,
                    silence: v
                        .silence
                        .map(|d| d.as_millis() as u64 * u64::from(RATE) / 1000),
                    quiet: 0,
                    heard: false,
                }),
            },
        );
    }

    fn record(&self, record: Record) {
        if let Err(error) = self.records.try_send(record) {
            tracing::warn!(%error, "record writer is behind; recording row not persisted");
        }
    }

    /// Appends what is due of every recording; brings headers up to date every second.
    fn append_due(&mut self, now: Instant) {
        let ids: Vec<Uuid> = self.active.keys().copied().collect();
        for recording in ids {
            match self.append_one(recording, now) {
                Appended::Written => {}
                Appended::Silent => {
                    tracing::debug!(%recording, "voicemail ended by silence");
                    self.finish(recording, now);
                }
                Appended::Failed => self.finish(recording, now),
            }
        }
    }

    /// Appends what is due of one recording (the caller closes it on anything but
    /// [`Appended::Written`]).
    fn append_one(&mut self, recording: Uuid, now: Instant) -> Appended {
        let Some(active) = self.active.get_mut(&recording) else {
            return Appended::Written;
        };
        self.out.clear();
        active.timeline.advance(now, &mut self.out);
        let mut silent = false;
        if let Some(voicemail) = &mut active.voicemail {
            // The caller's channel alone: the left samples of the stereo timeline.
            let mono: Vec<i16> = self.out.iter().step_by(2).copied().collect();
            silent = voicemail.measure(&mono);
            self.out = mono;
        }
        let mut result = Ok(());
        // Whole stereo frames through hound's buffered 16-bit writer: one write per batch.
        for chunk in self.out.chunks(2 * RATE as usize) {
            // A chunk is at most 16000 samples: it fits u32.
            let mut writer = active.file.get_i16_writer(chunk.len() as u32);
            for &sample in chunk {
                writer.write_sample(sample);
            }
            result = writer.flush();
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() && now.saturating_duration_since(active.checkpoint) >= CHECKPOINT {
            active.checkpoint = now;
            result = active.file.flush();
        }
        if let Err(error) = result {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, %recording, "recording write failed; closing it");
            return Appended::Failed;
        }
        if silent {
            Appended::Silent
        } else {
            Appended::Written
        }
    }

    fn finish(&mut self, recording: Uuid, at: Instant) {
        // What is due goes in first; a failure here still closes the file below.
        let _ = self.append_one(recording, at);
        let Some(active) = self.active.remove(&recording) else {
            return;
        };
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        let duration_ms = i64::try_from(active.timeline.duration().as_millis()).unwrap_or(0);
        if let Err(error) = active.file.finalize() {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, %recording, "could not finish a recording");
        }
        let size_bytes = std::fs::metadata(&active.path).map_or(0, |m| m.len());
        tracing::info!(%recording, duration_ms, stopped = active.stopped, "recording finished");
        if let Some(voicemail) = &active.voicemail {
            let done = MediaEvent::RecordDone {
                session: voicemail.session,
                recording,
                duration_ms: u64::try_from(duration_ms).unwrap_or(0),
                heard: voicemail.heard,
            };
            if self.events.try_send(done).is_err() {
                tracing::warn!(%recording, "call control is behind; voicemail end not reported");
            }
        }
        self.record(Record::Write(Write::RecordingEnd {
            id: recording,
            status: RecordingStatus::Complete,
            duration_ms,
            size_bytes: i64::try_from(size_bytes).unwrap_or(i64::MAX),
            at: Timestamp::now(),
        }));
    }
}

/// Makes a WAV file that was being written when its writer died valid: the RIFF and data sizes
/// are set from what is on disk (a trailing partial sample frame is cut off). A file too
/// short to hold a header becomes an empty recording. Returns the audio length and file size.
pub(crate) fn repair(path: &Path) -> std::io::Result<(Duration, u64)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; 12];
    let readable = len >= 44 && file.read_exact(&mut header).is_ok();
    if !readable || &header[..4] != b"RIFF" || &header[8..] != b"WAVE" {
        drop(file);
        hound::WavWriter::create(path, spec(RATE, 2))
            .and_then(hound::WavWriter::finalize)
            .map_err(std::io::Error::other)?;
        return Ok((Duration::ZERO, std::fs::metadata(path)?.len()));
    }
    // Walk the chunks to the format and the data (RIFF: id, 32-bit length, body, padding).
    let mut offset = 12u64;
    let (mut block_align, mut rate) = (4u64, u64::from(RATE));
    loop {
        let mut chunk = [0u8; 8];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut chunk)?;
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        if &chunk[..4] == b"fmt " {
            let mut fmt = [0u8; 16];
            file.read_exact(&mut fmt)?;
            rate = u64::from(u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]])).max(1);
            block_align = u64::from(u16::from_le_bytes([fmt[12], fmt[13]])).max(1);
        } else if &chunk[..4] == b"data" {
            let start = offset + 8;
            let data = (len.saturating_sub(start) / block_align) * block_align;
            let data32 = u32::try_from(data).unwrap_or(u32::MAX);
            file.set_len(start + u64::from(data32))?;
            file.seek(SeekFrom::Start(offset + 4))?;
            file.write_all(&data32.to_le_bytes())?;
            let riff = u32::try_from(start + u64::from(data32) - 8).unwrap_or(u32::MAX);
            file.seek(SeekFrom::Start(4))?;
            file.write_all(&riff.to_le_bytes())?;
            file.sync_all()?;
            let frames = u64::from(data32) / block_align;
            let duration = Duration::from_micros(frames * 1_000_000 / rate);
            return Ok((duration, start + u64::from(data32)));
        }
        offset += 8 + size + size % 2;
        if offset + 8 > len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no data chunk",
            ));
        }
    }
}

/// Repairs every recording the last run left open and marks it interrupted (at start-up,
/// before any new recording starts).
pub(crate) async fn repair_interrupted(db: &Db, dir: &Path) -> anyhow::Result<()> {
    for recording in recordings::in_progress(db).await? {
        let path = dir.join(&recording.path);
        let repaired = tokio::task::spawn_blocking({
            let path = path.clone();
            move || repair(&path)
        })
        .await?;
        let (duration, size) = match repaired {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "could not repair a recording");
                (Duration::ZERO, 0)
            }
        };
        let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(0);
        tracing::warn!(
            recording = %recording.id,
            duration_ms,
            "repaired a recording left open by the last run"
        );
        recordings::complete(
            db,
            recording.id,
            RecordingStatus::Interrupted,
            duration_ms,
            i64::try_from(size).unwrap_or(i64::MAX),
            Timestamp::now(),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voicemail_silence_counts_from_the_last_sound() {
        let mut state = VoicemailState {
            session: 1,
            silence: Some(u64::from(RATE)),
            quiet: 0,
            heard: false,
        };
        let loud: Vec<i16> = (0..800)
            .map(|i| if i % 2 == 0 { 4000 } else { -4000 })
            .collect();
        let hiss = vec![100i16; 800];
        // Half a second of near-silence: not enough, and nothing heard yet.
        assert!(!state.measure(&hiss));
        assert!(!state.heard);
        // Sound resets the count.
        assert!(!state.measure(&loud));
        assert!(state.heard);
        for _ in 0..9 {
            assert!(!state.measure(&hiss));
        }
        // The tenth 100 ms of quiet after the sound makes a second.
        assert!(state.measure(&hiss));
        // Without a limit, silence never ends it.
        state.silence = None;
        assert!(!state.measure(&vec![0; 80_000]));
    }

    #[test]
    fn a_file_cut_off_mid_write_is_repaired_to_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wav");
        let mut writer = hound::WavWriter::create(&path, spec(RATE, 2)).unwrap();
        for i in 0..8_000i16 {
            writer.write_sample(i).unwrap();
            writer.write_sample(-i).unwrap();
        }
        writer.flush().unwrap();
        // What a kill leaves: the header of the last checkpoint (8000 frames), the samples
        // written since, and half a frame trailing.
        std::mem::forget(writer);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        for i in 0..4_000i16 {
            file.write_all(&i.to_le_bytes()).unwrap();
            file.write_all(&(-i).to_le_bytes()).unwrap();
        }
        file.write_all(&[1, 2]).unwrap();
        drop(file);
        let (duration, size) = repair(&path).unwrap();
        assert_eq!(duration, Duration::from_millis(1_500));
        assert_eq!(size, 44 + 12_000 * 4);
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec(), spec(RATE, 2));
        assert_eq!(reader.duration(), 12_000);
        let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(samples[2 * 11_999..], [3_999, -3_999]);
    }

    #[test]
    fn a_file_without_a_header_becomes_an_empty_recording() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wav");
        std::fs::write(&path, b"RIFF").unwrap();
        assert_eq!(repair(&path).unwrap().0, Duration::ZERO);
        assert_eq!(hound::WavReader::open(&path).unwrap().duration(), 0);
    }
}
