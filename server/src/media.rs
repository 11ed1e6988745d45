//! The media plane: worker threads that own calls' RTP sockets and forward packets between
//! the legs through the sans-IO [`Bridge`].
//!
//! Each worker is an OS thread with its own single-threaded runtime (one per core by
//! default): a session lives on one worker for its whole life, so its state needs no lock and
//! no task ever migrates. A session has four sockets (RTP and RTCP on each side); each RTP
//! socket is read by a local task with `recvmmsg` (quinn-udp: up to a batch per system call,
//! and a partial batch ends the wake-up without an extra empty read), forwards every packet
//! in place with no allocation (the worker's receive buffers are shared by its tasks, borrowed
//! only between awaits), and sends it from the other side's socket: one `sendto` per packet,
//! except that a burst the kernel coalesced on receive (GRO) leaves as one segmented send (GSO)
//! when it all goes to one peer. RTCP is terminated per leg: the worker's sweep sends our own
//! reports. Sessions are assigned to workers by id; their four sockets are bound by the
//! signalling task's [`MediaPlane::send`] before the SDP naming them goes out (so media sent
//! right after an answer never meets a closed port) and registered with the worker's reactor
//! when the worker takes the session. The signalling task talks to workers
//! through bounded channels; workers report inactivity, bind failures and DTMF back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use std::io::IoSliceMut;
use switchboard_media::dtmf::{Digit, DtmfEvent};
use switchboard_media::g711::Law;
use switchboard_media::relay::{Bridge, Latching, Leg, Refused, Side};
use switchboard_media::transcode::Transcoder;
use switchboard_media::webrtc::{Poll, WebRtcLeg};
use switchboard_media::{rtcp, rtp};
use switchboard_signalling::media::{MediaCommand, MediaEvent, RecordAction, SessionId};
use switchboard_storage::Uuid;
use switchboard_storage::batch::Write;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{LatchingMode, MediaConfig};
use crate::recorder::{Control, Recorder};
use crate::sip::persist::Record;

/// Commands queued per worker before the signalling task's sends fail.
const QUEUE: usize = 4096;
/// How often workers look for inactive sessions.
const SWEEP: Duration = Duration::from_secs(1);

/// One worker's counters. Only the worker writes them (relaxed atomics, each worker on its
/// own cache lines); the metrics endpoint sums them at scrape time.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Sessions on this worker.
    pub sessions: AtomicU64,
    /// RTP packets forwarded from the caller to the callee.
    pub rtp_to_callee: AtomicU64,
    /// RTP packets forwarded from the callee to the caller.
    pub rtp_to_caller: AtomicU64,
    /// RTP packets dropped (foreign source, malformed, no destination yet, on hold).
    pub rtp_dropped: AtomicU64,
    /// RTCP packets received from the legs (consumed: RTCP is terminated per leg).
    pub rtcp_received: AtomicU64,
    /// RTCP reports we sent to the legs.
    pub rtcp_sent: AtomicU64,
    /// Sessions whose ports could not be bound.
    pub bind_failures: AtomicU64,
    /// Sessions reported inactive.
    pub inactive: AtomicU64,
    /// RTP packets of IVR prompts sent to callers.
    pub prompt_packets: AtomicU64,
    /// RTP packets of music on hold sent to held legs.
    pub hold_music_packets: AtomicU64,
    /// Browser legs (WebRTC) of live sessions.
    pub webrtc_legs: AtomicU64,
    /// Browser legs whose Opus is transcoded.
    pub transcoded_legs: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The media plane's counters, one set per worker.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Per worker.
    pub workers: Vec<WorkerStats>,
}

impl MediaStats {
    /// The sum of one counter over the workers.
    pub fn sum(&self, counter: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| counter(w).load(Ordering::Relaxed))
            .sum()
    }
}

/// A worker's handle on its own counters.
#[derive(Clone)]
struct Counters(Arc<MediaStats>, usize);

impl std::ops::Deref for Counters {
    type Target = WorkerStats;

    fn deref(&self) -> &WorkerStats {
        &self.0.workers[self.1]
    }
}

/// The signalling task's handle on the workers.
#[derive(Clone)]
pub struct MediaPlane {
    workers: Vec<mpsc::Sender<Job>>,
    stats: Arc<MediaStats>,
    bind_ip: std::net::IpAddr,
    events: mpsc::Sender<MediaEvent>,
}

/// A command for a worker; a new session comes with its four sockets, bound by the caller,
/// and a play with its prompt's samples, loaded by the caller.
struct Job {
    command: MediaCommand,
    sockets: Option<[std::net::UdpSocket; 4]>,
    audio: Option<Arc<[i16]>>,
}

/// Samples per 20 ms frame at 8 kHz.
const FRAME: usize = 160;

/// Binds a session's RTP and RTCP sockets on both sides, non-blocking: (A RTP, A RTCP, B RTP,
/// B RTCP).
fn bind_session(
    ip: std::net::IpAddr,
    a_port: u16,
    b_port: u16,
) -> std::io::Result<[std::net::UdpSocket; 4]> {
    // Created non-blocking (SOCK_NONBLOCK): two system calls a socket, on the signalling task.
    let bind = |port: u16| {
        let address = SocketAddr::new(ip, port);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(address),
            socket2::Type::DGRAM.nonblocking(),
            Some(socket2::Protocol::UDP),
        )?;
        socket.bind(&address.into())?;
        Ok::<_, std::io::Error>(std::net::UdpSocket::from(socket))
    };
    Ok([
        bind(a_port)?,
        bind(a_port + 1)?,
        bind(b_port)?,
        bind(b_port + 1)?,
    ])
}

impl MediaPlane {
    /// Starts the workers; events go to `events`.
    pub(crate) fn start(
        config: &MediaConfig,
        recorder: &Recorder,
        records: &mpsc::Sender<Record>,
        events: mpsc::Sender<MediaEvent>,
        shutdown: CancellationToken,
    ) -> std::io::Result<(Self, Vec<std::thread::JoinHandle<()>>)> {
        let count = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            config.workers
        };
        let stats = Arc::new(MediaStats {
            workers: (0..count).map(|_| WorkerStats::default()).collect(),
        });
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (config, events, shutdown) = (config.clone(), events.clone(), shutdown.clone());
            let counters = Counters(stats.clone(), index);
            let (recorder, records) = (recorder.clone(), records.clone());
            let thread = crate::worker::spawn(format!("media-{index}"), "media", move || {
                let shell = Shell {
                    config,
                    counters,
                    recorder,
                    records,
                    events,
                    batch: Batch::new(),
                };
                worker(shell, rx, shutdown)
            })?;
            workers.push(tx);
            threads.push(thread);
        }
        let (bind_ip, events) = (config.bind_ip, events);
        Ok((
            Self {
                workers,
                stats,
                bind_ip,
                events,
            },
            threads,
        ))
    }

    /// The workers' counters.
    pub fn stats(&self) -> Arc<MediaStats> {
        self.stats.clone()
    }

    /// Sends a command to the session's worker without waiting.
    ///
    /// A new session's ports are bound here, before the caller goes on to send SDP naming
    /// them: media that arrives right after the answer finds its sockets open, whatever the
    /// worker is busy with.
    pub fn send(&self, command: MediaCommand) {
        let session = command.session();
        let index = (session as usize) % self.workers.len();
        let sockets = match &command {
            MediaCommand::Create { a_port, b_port, .. } => {
                match bind_session(self.bind_ip, *a_port, *b_port) {
                    Ok(sockets) => Some(sockets),
                    Err(error) => {
                        inc(&self.stats.workers[index].bind_failures);
                        tracing::warn!(%error, session, a_port, b_port, "could not bind RTP ports");
                        let _ = self.events.try_send(MediaEvent::Failed { session });
                        return;
                    }
                }
            }
            _ => None,
        };
        self.dispatch(Job {
            command,
            sockets,
            audio: None,
        });
    }

    fn dispatch(&self, job: Job) {
        let session = job.command.session();
        let index = (session as usize) % self.workers.len();
        if let Err(error) = self.workers[index].try_send(job) {
            tracing::warn!(%error, session, "media worker queue full; command dropped");
        }
    }

    /// Plays `audio` (8 kHz samples, loaded by the caller) as `command` (a
    /// [`MediaCommand::Play`]) asks.
    pub fn play(&self, command: MediaCommand, audio: Arc<[i16]>) {
        self.dispatch(Job {
            command,
            sockets: None,
            audio: Some(audio),
        });
    }

    /// Reports a play that cannot happen (no such prompt) as done.
    pub fn play_failed(&self, session: SessionId, id: u32) {
        let _ = self.events.try_send(MediaEvent::PlayDone { session, id });
    }
}

struct Session {
    bridge: Rc<RefCell<Bridge>>,
    tasks: Vec<JoinHandle<()>>,
    /// The call's record id (media statistics are written to it at the end).
    call: Uuid,
    /// RTP and RTCP sockets of each side, for our RTCP reports.
    sockets: [(Rc<UdpSocket>, Rc<UdpSocket>); 2],
    /// The recording the forwarding tasks copy packets to (none while paused).
    tapping: Rc<Cell<Option<Uuid>>>,
    /// The session's recording, paused or not.
    recording: Option<Uuid>,
    /// Sends queued DTMF (RFC 4733) to the legs while there is some.
    dtmf_task: Option<JoinHandle<()>>,
    /// Streams a prompt to the caller's leg.
    player: Option<JoinHandle<()>>,
    /// Plays music on hold to a held leg.
    hold_music: Option<JoinHandle<()>>,
    /// Plays up to this id were stopped (a late one is not started).
    stopped_through: u32,
    /// The session's WebRTC legs, if a side is a browser.
    browsers: Rc<Browsers>,
    /// Runs the WebRTC legs' timers, once there is one.
    browser_task: Option<JoinHandle<()>>,
}

/// What a worker's tasks share.
#[derive(Clone)]
struct Shell {
    config: MediaConfig,
    counters: Counters,
    recorder: Recorder,
    records: mpsc::Sender<Record>,
    events: mpsc::Sender<MediaEvent>,
    /// The worker's receive buffers.
    batch: Rc<RefCell<Batch>>,
}

impl Session {
    /// Applies a recording change.
    fn record(&mut self, shell: &Shell, session: SessionId, action: RecordAction) {
        let recorder = &shell.recorder;
        let at = Instant::now();
        match (action, self.recording) {
            (
                RecordAction::Start {
                    recording,
                    tenant,
                    call,
                    wall_ms,
                    wideband,
                    voicemail,
                },
                None,
            ) => {
                if let Some(payload_type) = voicemail.and_then(|v| v.beep) {
                    self.beep(shell, payload_type);
                }
                recorder.control(Control::Start {
                    recording,
                    tenant,
                    call,
                    wall_ms,
                    wideband,
                    voicemail: voicemail.map(|v| (session, v)),
                    at,
                });
                self.recording = Some(recording);
                self.tapping.set(Some(recording));
            }
            (RecordAction::Pause, Some(recording)) => {
                self.tapping.set(None);
                recorder.control(Control::Pause { recording, at });
            }
            (RecordAction::Resume, Some(recording)) => {
                recorder.control(Control::Resume { recording, at });
                self.tapping.set(Some(recording));
            }
            (RecordAction::Stop, Some(recording)) => self.stop_recording(recorder, recording),
            _ => {}
        }
    }

    fn stop_recording(&mut self, recorder: &Recorder, recording: Uuid) {
        self.tapping.set(None);
        self.recording = None;
        recorder.control(Control::Stop {
            recording,
            at: Instant::now(),
        });
    }

    /// Starts streaming `audio` to the caller's leg in place of any prompt playing.
    fn play(
        &mut self,
        shell: &Shell,
        (session, id): (SessionId, u32),
        audio: Arc<[i16]>,
        payload_type: u8,
    ) {
        if id <= self.stopped_through {
            return;
        }
        if let Some(player) = self.player.take() {
            player.abort();
        }
        let (bridge, socket) = (self.bridge.clone(), self.sockets[0].0.clone());
        let (events, counters) = (shell.events.clone(), shell.counters.clone());
        let browsers = self.browsers.clone();
        self.player = Some(tokio::task::spawn_local(async move {
            let out = (&*socket, &*browsers, &counters);
            play_prompt(&bridge, out, &audio, payload_type).await;
            let _ = events.try_send(MediaEvent::PlayDone { session, id });
        }));
    }

    /// Plays the voicemail beep (a quarter second of 1 kHz) in place of any prompt.
    fn beep(&mut self, shell: &Shell, payload_type: u8) {
        if let Some(player) = self.player.take() {
            player.abort();
        }
        let (bridge, socket) = (self.bridge.clone(), self.sockets[0].0.clone());
        let counters = shell.counters.clone();
        let browsers = self.browsers.clone();
        self.player = Some(tokio::task::spawn_local(async move {
            let beep: Vec<i16> = (0..2000)
                .map(|i| {
                    let phase = f64::from(i) * 1000.0 * std::f64::consts::TAU / 8000.0;
                    (phase.sin() * 8000.0) as i16
                })
                .collect();
            play_prompt(
                &bridge,
                (&*socket, &*browsers, &counters),
                &beep,
                payload_type,
            )
            .await;
        }));
    }

    /// Plays music on hold to `side` (0 or 8: its G.711 payload type), or stops (`None`).
    fn hold_music(&mut self, shell: &Shell, side: Option<Side>, payload_type: u8) {
        if let Some(task) = self.hold_music.take() {
            task.abort();
        }
        let Some(side) = side else { return };
        let (bridge, socket) = (self.bridge.clone(), self.sockets[index(side)].0.clone());
        let counters = shell.counters.clone();
        let browsers = self.browsers.clone();
        self.hold_music = Some(tokio::task::spawn_local(async move {
            let out = (&*socket, &*browsers, &counters);
            play_hold_music(&bridge, side, out, payload_type).await;
        }));
    }

    /// Stops the prompt playing, and plays up to `id` not started yet.
    fn stop_play(&mut self, id: u32) {
        self.stopped_through = self.stopped_through.max(id);
        if let Some(player) = self.player.take() {
            player.abort();
        }
    }

    /// Stops forwarding (and recording) and writes the media statistics to the call record.
    fn end(mut self, shell: &Shell) {
        for side in [Side::A, Side::B] {
            if self.browsers.is(side) {
                shell.counters.webrtc_legs.fetch_sub(1, Ordering::Relaxed);
            }
            if self.browsers.transcoders[index(side)].borrow().is_some() {
                shell
                    .counters
                    .transcoded_legs
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        for task in self
            .tasks
            .drain(..)
            .chain(self.dtmf_task.take())
            .chain(self.player.take())
            .chain(self.hold_music.take())
            .chain(self.browser_task.take())
        {
            task.abort();
        }
        if let Some(recording) = self.recording {
            self.stop_recording(&shell.recorder, recording);
        }
        let stats = media_stats(&self.bridge.borrow());
        let write = Record::Write(Write::MediaStats {
            call_id: self.call,
            stats,
        });
        if shell.records.try_send(write).is_err() {
            tracing::warn!(call = %self.call, "record writer is behind; media statistics lost");
        }
    }

    /// Queues a DTMF key for `side` and makes sure a task sends it.
    fn send_dtmf(&mut self, side: Side, digit: char, duration_ms: u32) {
        let Some(digit) = Digit::from_char(digit) else {
            return;
        };
        let duration = Duration::from_millis(u64::from(duration_ms));
        let queued = self
            .bridge
            .borrow_mut()
            .send_dtmf(Instant::now(), side, digit, duration);
        if let Err(error) = queued {
            tracing::debug!(%error, "DTMF not sent");
            return;
        }
        if self.dtmf_task.as_ref().is_none_or(JoinHandle::is_finished) {
            let (bridge, sockets) = (self.bridge.clone(), self.sockets.clone());
            let browsers = self.browsers.clone();
            self.dtmf_task = Some(tokio::task::spawn_local(send_dtmf(
                bridge, sockets, browsers,
            )));
        }
    }

    /// Makes `side` a browser's: its RTP socket speaks WebRTC through `leg` from now on.
    fn attach_browser(&mut self, shell: &Shell, session: SessionId, side: Side, leg: WebRtcLeg) {
        shell.counters.webrtc_legs.fetch_add(1, Ordering::Relaxed);
        if let Some(opus) = leg.opus() {
            let ssrc = 0x5C00_0000 | u32::from(leg.local().port());
            match Transcoder::new(opus, ssrc) {
                Ok(transcoder) => {
                    *self.browsers.transcoders[index(side)].borrow_mut() = Some(transcoder);
                    shell
                        .counters
                        .transcoded_legs
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, session, "no Opus transcoder: the browser is not heard");
                }
            }
        }
        *self.browsers.legs[index(side)].borrow_mut() = Some(leg);
        if self.browser_task.is_none() {
            let context = (session, self.bridge.clone(), self.tapping.clone());
            let sockets = [self.sockets[0].0.clone(), self.sockets[1].0.clone()];
            let task = drive_browsers(shell.clone(), context, self.browsers.clone(), sockets);
            self.browser_task = Some(tokio::task::spawn_local(task));
        } else {
            self.browsers.wake.notify_one();
        }
    }

    /// Sends the RTCP reports that are due (str0m sends a browser's own).
    fn report(&self, now: Instant, ntp: u64, counters: &Counters, buffer: &mut [u8]) {
        let mut bridge = self.bridge.borrow_mut();
        if bridge.rtcp_timeout().is_none_or(|due| due > now) {
            return;
        }
        for (side, (rtp, rtcp)) in [Side::A, Side::B].into_iter().zip(&self.sockets) {
            if self.browsers.is(side) {
                // Still polled, so the bridge's schedule moves on.
                let _ = bridge.poll_rtcp(now, ntp, side, buffer);
                continue;
            }
            if let Some((len, destination, mux)) = bridge.poll_rtcp(now, ntp, side, buffer) {
                let socket = if mux { rtp } else { rtcp };
                if socket.try_send_to(&buffer[..len], destination).is_ok() {
                    inc(&counters.rtcp_sent);
                }
            }
        }
    }
}

/// The media statistics of a call, per leg, for its record: what each leg sent us (packets,
/// loss, jitter), what we sent it, the round-trip time, and a MOS estimate (E-model).
fn media_stats(bridge: &Bridge) -> serde_json::Value {
    let leg = |side: Side| {
        let leg = bridge.leg(side);
        let stats = leg.rtcp_stats();
        let round = |value: f64| (value * 100.0).round() / 100.0;
        serde_json::json!({
            "packets_received": stats.packets_received,
            "bytes_received": stats.bytes_received,
            "packets_lost": stats.packets_lost.max(0),
            "packets_sent": stats.packets_sent,
            "bytes_sent": stats.bytes_sent,
            "jitter_ms": round(stats.jitter_ms),
            "rtt_ms": stats.rtt_ms.map(round),
            "remote_packets_lost": stats.remote_packets_lost,
            "remote_jitter_ms": stats.remote_jitter_ms.map(round),
            "mos": leg.mos().map(round),
        })
    };
    let mos = [Side::A, Side::B]
        .into_iter()
        .filter_map(|side| bridge.leg(side).mos())
        .min_by(f64::total_cmp);
    serde_json::json!({
        "caller": leg(Side::A),
        "callee": leg(Side::B),
        "mos": mos.map(|m| (m * 100.0).round() / 100.0),
    })
}

/// Hands the DTMF keys a leg finished pressing to call control.
fn report_dtmf(events: &mpsc::Sender<MediaEvent>, session: SessionId, bridge: &mut Bridge) {
    while let Some((side, event)) = bridge.poll_dtmf() {
        if let DtmfEvent::End {
            digit, duration, ..
        } = event
        {
            let _ = events.try_send(MediaEvent::Dtmf {
                session,
                a_side: side == Side::A,
                digit: digit.as_char(),
                duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
            });
        }
    }
}

/// Sends the RFC 4733 packets queued for either leg, each from that leg's RTP socket, until
/// nothing is queued.
async fn send_dtmf(
    bridge: Rc<RefCell<Bridge>>,
    sockets: [(Rc<UdpSocket>, Rc<UdpSocket>); 2],
    browsers: Rc<Browsers>,
) {
    let mut buffer = Vec::with_capacity(64);
    loop {
        let next = {
            let mut bridge = bridge.borrow_mut();
            let now = Instant::now();
            for (side, (rtp, _)) in [Side::A, Side::B].into_iter().zip(&sockets) {
                while let Some((len, to)) = bridge.poll_dtmf_transmit(now, side, &mut buffer) {
                    browsers.deliver(side, rtp, &buffer[..len], to);
                }
            }
            [Side::A, Side::B]
                .into_iter()
                .filter_map(|side| bridge.dtmf_send_timeout(side))
                .min()
        };
        let Some(next) = next else { return };
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}

/// Sends `audio` to the caller's leg, one G.711 frame of `payload_type` every 20 ms, in the
/// leg's own RTP stream (so what the callee sends later continues it).
async fn play_prompt(
    bridge: &RefCell<Bridge>,
    (socket, browsers, counters): (&UdpSocket, &Browsers, &Counters),
    audio: &[i16],
    payload_type: u8,
) {
    let law = if payload_type == 8 {
        Law::Alaw
    } else {
        Law::Ulaw
    };
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut payload, mut buffer) = ([0u8; FRAME], Vec::with_capacity(12 + FRAME));
    for (index, frame) in audio.chunks(FRAME).enumerate() {
        interval.tick().await;
        // The last frame is padded with silence.
        let mut samples = [0i16; FRAME];
        samples[..frame.len()].copy_from_slice(frame);
        law.encode(&samples, &mut payload);
        let sent = bridge.borrow_mut().audio_transmit(
            Instant::now(),
            Side::A,
            payload_type,
            index == 0,
            &payload,
            FRAME as u32,
            &mut buffer,
        );
        if let Some((len, to)) = sent
            && browsers.deliver(Side::A, socket, &buffer[..len], to)
        {
            inc(&counters.prompt_packets);
        }
    }
}

/// How long the leg must have been sent nothing else (and the call held) before the music
/// plays: the holder's own music (many phones send theirs) or a prompt wins.
const HOLD_QUIET: Duration = Duration::from_millis(100);

/// Plays music on hold to `side`, 20 ms at a time, until aborted; a frame is skipped when
/// something else reached the leg within [`HOLD_QUIET`].
async fn play_hold_music(
    bridge: &RefCell<Bridge>,
    side: Side,
    (socket, browsers, counters): (&UdpSocket, &Browsers, &Counters),
    payload_type: u8,
) {
    let law = if payload_type == 8 {
        Law::Alaw
    } else {
        Law::Ulaw
    };
    let music = switchboard_media::hold::music();
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut payload, mut buffer) = ([0u8; FRAME], Vec::with_capacity(12 + FRAME));
    let (mut position, mut ours, mut playing) = (0usize, None, false);
    let held = Instant::now();
    loop {
        interval.tick().await;
        let now = Instant::now();
        let last = bridge.borrow().leg(side).last_sent_at();
        let others = last.is_some_and(|at| Some(at) != ours && now - at < HOLD_QUIET);
        // The holder gets a moment to start its own music first.
        if others || now - held < HOLD_QUIET {
            playing = false;
            continue;
        }
        let mut samples = [0i16; FRAME];
        for sample in &mut samples {
            *sample = music[position];
            position = (position + 1) % music.len();
        }
        law.encode(&samples, &mut payload);
        let sent = bridge.borrow_mut().audio_transmit(
            now,
            side,
            payload_type,
            !playing,
            &payload,
            FRAME as u32,
            &mut buffer,
        );
        ours = Some(now);
        playing = true;
        if let Some((len, to)) = sent
            && browsers.deliver(side, socket, &buffer[..len], to)
        {
            inc(&counters.hold_music_packets);
        }
    }
}

/// The wallclock as an NTP timestamp, for RTCP sender reports.
fn ntp_now() -> u64 {
    rtcp::ntp_from_system_time(SystemTime::now())
}

fn latching(mode: LatchingMode) -> Latching {
    match mode {
        LatchingMode::FirstSource => Latching::FirstSource,
        LatchingMode::SameAddress => Latching::SameAddress,
        LatchingMode::Strict => Latching::Strict,
    }
}

async fn worker(shell: Shell, mut commands: mpsc::Receiver<Job>, shutdown: CancellationToken) {
    let (counters, events) = (&shell.counters, &shell.events);
    let mut sessions: HashMap<SessionId, Session> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP);
    let mut rtcp_buffer = [0u8; 1500];
    let mut inactive = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let (now, ntp) = (Instant::now(), ntp_now());
                for (session, state) in &sessions {
                    state.report(now, ntp, counters, &mut rtcp_buffer);
                    {
                        let mut bridge = state.bridge.borrow_mut();
                        if bridge.dtmf_timeout().is_some_and(|due| due <= now) {
                            bridge.handle_dtmf_timeout(now);
                            report_dtmf(events, *session, &mut bridge);
                        }
                    }
                    let event = state.bridge.borrow_mut().handle_timeout(now);
                    if event.is_some() {
                        inc(&counters.inactive);
                        let _ = events.try_send(MediaEvent::Inactive { session: *session });
                        inactive.push(*session);
                    }
                }
                // Call control ends the call on the event (its Destroy then finds nothing); a
                // session whose Destroy was lost (a full queue) goes here, never leaks.
                for session in inactive.drain(..) {
                    if let Some(state) = sessions.remove(&session) {
                        state.end(&shell);
                    }
                }
                counters.sessions.store(sessions.len() as u64, Ordering::Relaxed);
            }
            job = commands.recv() => match job.map(|job| (job.command, job.sockets, job.audio)) {
                None => break,
                Some((MediaCommand::Create { session, a_port, b_port, a_expected, b_expected, a_dtmf, call }, Some(sockets), _)) => {
                    match create(&shell, (session, call), (a_port, b_port), (a_expected, a_dtmf), b_expected, sockets) {
                        Ok(state) => {
                            sessions.insert(session, state);
                            counters.sessions.store(sessions.len() as u64, Ordering::Relaxed);
                        }
                        Err(error) => {
                            inc(&counters.bind_failures);
                            tracing::warn!(%error, session, a_port, b_port, "could not register RTP sockets");
                            let _ = events.try_send(MediaEvent::Failed { session });
                        }
                    }
                }
                Some((MediaCommand::Create { .. }, None, _)) => {}
                Some((MediaCommand::WebRtc { session, a_side, leg }, _, _)) => {
                    if let Some(state) = sessions.get_mut(&session) {
                        let side = if a_side { Side::A } else { Side::B };
                        state.attach_browser(&shell, session, side, *leg);
                    }
                }
                Some((MediaCommand::Play { session, id, payload_type, .. }, _, audio)) => {
                    match (sessions.get_mut(&session), audio) {
                        (Some(state), Some(audio)) => state.play(&shell, (session, id), audio, payload_type),
                        _ => {
                            let _ = events.try_send(MediaEvent::PlayDone { session, id });
                        }
                    }
                }
                Some((MediaCommand::HoldMusic { session, to_a_side, payload_type }, _, _)) => {
                    if let Some(state) = sessions.get_mut(&session) {
                        let side = to_a_side.map(|a| if a { Side::A } else { Side::B });
                        state.hold_music(&shell, side, payload_type);
                    }
                }
                Some((MediaCommand::StopPlay { session, id }, _, _)) => {
                    if let Some(state) = sessions.get_mut(&session) {
                        state.stop_play(id);
                    }
                }
                Some((MediaCommand::Update { session, a_side, expected, hold, dtmf }, _, _)) => {
                    if let Some(state) = sessions.get(&session) {
                        let mut bridge = state.bridge.borrow_mut();
                        let side = if a_side { Side::A } else { Side::B };
                        let leg = bridge.leg_mut(side);
                        leg.update_expected(expected);
                        leg.set_dtmf_payload_type(dtmf);
                        bridge.set_hold(Instant::now(), hold);
                    }
                }
                Some((MediaCommand::SendDtmf { session, a_side, digit, duration_ms }, _, _)) => {
                    if let Some(state) = sessions.get_mut(&session) {
                        let side = if a_side { Side::A } else { Side::B };
                        state.send_dtmf(side, digit, duration_ms);
                    }
                }
                Some((MediaCommand::Destroy { session }, _, _)) => {
                    if let Some(state) = sessions.remove(&session) {
                        counters.sessions.store(sessions.len() as u64, Ordering::Relaxed);
                        state.end(&shell);
                    }
                }
                Some((MediaCommand::Record { session, action }, _, _)) => {
                    if let Some(state) = sessions.get_mut(&session) {
                        state.record(&shell, session, action);
                    }
                }
            },
        }
    }
    for state in sessions.into_values() {
        state.end(&shell);
    }
}

fn create(
    shell: &Shell,
    (session, call): (SessionId, Uuid),
    (a_port, b_port): (u16, u16),
    (a_expected, a_dtmf): (Option<SocketAddr>, Option<u8>),
    b_expected: Option<SocketAddr>,
    sockets: [std::net::UdpSocket; 4],
) -> std::io::Result<Session> {
    let config = &shell.config;
    let [a_rtp, a_rtcp, b_rtp, b_rtcp] = sockets;
    let register = |socket| UdpSocket::from_std(socket).map(Rc::new);
    let (a_rtp, a_rtcp) = (register(a_rtp)?, register(a_rtcp)?);
    let (b_rtp, b_rtcp) = (register(b_rtp)?, register(b_rtcp)?);
    let mode = latching(config.latching);
    let ssrc = |port: u16| 0x5B00_0000 | u32::from(port);
    let mut caller = Leg::new(a_expected, mode, ssrc(a_port), 8000);
    caller.set_dtmf_payload_type(a_dtmf);
    let bridge = Rc::new(RefCell::new(Bridge::new(
        Instant::now(),
        caller,
        Leg::new(b_expected, mode, ssrc(b_port), 8000),
        config.inactivity_timeout,
    )));
    let tapping = Rc::new(Cell::new(None));
    let browsers = Rc::new(Browsers::default());
    let counters = &shell.counters;
    let rtp = |side, from, to| Forward {
        session,
        shell: shell.clone(),
        bridge: bridge.clone(),
        tapping: tapping.clone(),
        browsers: browsers.clone(),
        side,
        from,
        to,
    };
    let tasks = vec![
        tokio::task::spawn_local(forward_rtp(rtp(Side::A, a_rtp.clone(), b_rtp.clone()))),
        tokio::task::spawn_local(forward_rtp(rtp(Side::B, b_rtp.clone(), a_rtp.clone()))),
        tokio::task::spawn_local(receive_rtcp(
            counters.clone(),
            bridge.clone(),
            Side::A,
            a_rtcp.clone(),
        )),
        tokio::task::spawn_local(receive_rtcp(
            counters.clone(),
            bridge.clone(),
            Side::B,
            b_rtcp.clone(),
        )),
    ];
    let sockets = [(a_rtp, a_rtcp), (b_rtp, b_rtcp)];
    Ok(Session {
        bridge,
        tasks,
        call,
        sockets,
        tapping,
        recording: None,
        dtmf_task: None,
        player: None,
        hold_music: None,
        stopped_through: 0,
        browsers,
        browser_task: None,
    })
}

/// Datagrams received per system call.
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Most datagrams the kernel coalesces into one receive (Linux UDP GRO).
const MAX_SEGMENTS: usize = 64;
/// Receive buffer per datagram: the largest UDP payload, since the kernel may coalesce a
/// burst from one source into one buffer (GRO; split again by `stride`).
const DATAGRAM: usize = 65_535;

/// A worker's receive buffers, shared by its sockets' tasks: a task borrows them only while it
/// reads and forwards (never across an await), so one set serves every socket of the worker.
struct Batch {
    buffers: Box<[[u8; DATAGRAM]; BATCH]>,
    meta: [quinn_udp::RecvMeta; BATCH],
}

impl Batch {
    fn new() -> Rc<RefCell<Self>> {
        let buffers: Box<[[u8; DATAGRAM]; BATCH]> = vec![[0u8; DATAGRAM]; BATCH]
            .into_boxed_slice()
            .try_into()
            // The vector has exactly BATCH elements.
            .unwrap_or_else(|_| unreachable!());
        Rc::new(RefCell::new(Self {
            buffers,
            meta: [quinn_udp::RecvMeta::default(); BATCH],
        }))
    }
}

/// One direction of a session's RTP.
struct Forward {
    session: SessionId,
    shell: Shell,
    bridge: Rc<RefCell<Bridge>>,
    tapping: Rc<Cell<Option<Uuid>>>,
    browsers: Rc<Browsers>,
    side: Side,
    from: Rc<UdpSocket>,
    to: Rc<UdpSocket>,
}

/// Reads RTP arriving on `side`'s socket and sends it out of the other side's socket.
async fn forward_rtp(forward: Forward) {
    let Forward {
        session,
        shell,
        bridge,
        tapping,
        browsers,
        side,
        from,
        to,
    } = forward;
    let Ok(state) = quinn_udp::UdpSocketState::new((&*from).into()) else {
        tracing::error!("could not set up batched receive on an RTP socket");
        return;
    };
    // Segmented sends need the sending socket's own state: set up (a few system calls) only
    // when the first coalesced burst comes, which most calls never see.
    let mut out: Option<Option<quinn_udp::UdpSocketState>> = None;
    loop {
        if from.readable().await.is_err() {
            return;
        }
        // One `recvmmsg` takes whatever is queued (up to a batch). Fewer than a batch means the
        // socket is drained: saying so (WouldBlock) clears its readiness without a second,
        // empty system call (tokio keeps it set if a packet arrived in between).
        let _ = from.try_io(Interest::READABLE, || {
            let mut batch = shell.batch.borrow_mut();
            let Batch { buffers, meta } = &mut *batch;
            let count = {
                let mut slices = buffers.each_mut().map(|b| IoSliceMut::new(b));
                state.recv((&*from).into(), &mut slices, meta)?
            };
            for (meta, buffer) in meta.iter().zip(buffers.iter_mut()).take(count) {
                let stride = meta.stride.max(1);
                let data = &mut buffer[..meta.len];
                if browsers.any() {
                    // A browser on either side: through its WebRTC leg, one by one.
                    for packet in data.chunks_mut(stride) {
                        let context = (session, side, &*bridge, &*tapping);
                        let sockets = (&*from, &*to);
                        relay_with_browsers(
                            &shell,
                            context,
                            &browsers,
                            (meta.addr, packet),
                            sockets,
                        );
                    }
                    continue;
                }
                // Forward every datagram in place. A burst the kernel coalesced (GRO) that all
                // goes to one destination leaves again as one segmented send (GSO), still
                // without a copy; otherwise each datagram is sent on its own.
                let mut destinations = [None; MAX_SEGMENTS];
                for (packet, destination) in data.chunks_mut(stride).zip(&mut destinations) {
                    let context = (session, side, &*bridge, &*tapping);
                    *destination = handle_rtp(&shell, context, meta.addr, packet);
                }
                let segments = meta.len.div_ceil(stride).min(MAX_SEGMENTS);
                let first = destinations[0];
                let together =
                    segments > 1 && destinations[1..segments].iter().all(|d| *d == first);
                let gso = if together {
                    out.get_or_insert_with(|| {
                        quinn_udp::UdpSocketState::new((&*to).into())
                            .ok()
                            .filter(|s| s.max_gso_segments() > 1)
                    })
                    .as_ref()
                } else {
                    None
                };
                // A full socket buffer drops: RTP tolerates loss, it never waits.
                match (first, gso) {
                    (Some(destination), Some(out)) => {
                        let transmit = quinn_udp::Transmit {
                            destination,
                            ecn: None,
                            contents: &data[..],
                            segment_size: Some(stride),
                            src_ip: None,
                        };
                        let _ = out.try_send((&*to).into(), &transmit);
                    }
                    _ => {
                        for (packet, destination) in data.chunks(stride).zip(destinations) {
                            if let Some(destination) = destination {
                                let _ = to.try_send_to(packet, destination);
                            }
                        }
                    }
                }
            }
            if count < BATCH {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
    }
}

/// One datagram that arrived on `side`'s RTP socket from `source`: RTCP (multiplexed) is
/// consumed; RTP is rewritten in place for the other side (returned: where to send it) and
/// copied to a recording.
fn handle_rtp(
    shell: &Shell,
    (session, side, bridge, tapping): (SessionId, Side, &RefCell<Bridge>, &Cell<Option<Uuid>>),
    source: SocketAddr,
    packet: &mut [u8],
) -> Option<SocketAddr> {
    let counters = &shell.counters;
    let now = Instant::now();
    if rtp::is_rtcp(packet) {
        // RTCP multiplexed on the RTP port (RFC 5761): ours to consume.
        let received = bridge
            .borrow_mut()
            .handle_rtcp(now, ntp_now(), side, source, packet, true);
        inc(match received {
            Ok(()) => &counters.rtcp_received,
            Err(_) => &counters.rtp_dropped,
        });
        return None;
    }
    let forwarded = bridge.borrow_mut().forward(now, side, source, packet);
    if forwarded == Err(Refused::NoDestination)
        && let Some(recording) = tapping.get()
    {
        // A caller leaving a voicemail: recorded though there is nobody to forward to.
        shell.recorder.tap(recording, side, now, packet);
    }
    let destination = match forwarded {
        Ok(destination) => {
            inc(match side {
                Side::A => &counters.rtp_to_callee,
                Side::B => &counters.rtp_to_caller,
            });
            if let Some(recording) = tapping.get() {
                shell.recorder.tap(recording, side, now, packet);
            }
            Some(destination)
        }
        Err(_) => {
            inc(&counters.rtp_dropped);
            None
        }
    };
    report_dtmf(&shell.events, session, &mut bridge.borrow_mut());
    destination
}

/// Reads the RTCP a leg sends to its RTCP port (RTP port + 1): its reports on our stream
/// (round-trip time, the loss and jitter it sees). Ours go out from the sweep.
async fn receive_rtcp(
    counters: Counters,
    bridge: Rc<RefCell<Bridge>>,
    side: Side,
    socket: Rc<UdpSocket>,
) {
    let mut buffer = [0u8; 2048];
    loop {
        let Ok((len, source)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let received = bridge.borrow_mut().handle_rtcp(
            Instant::now(),
            ntp_now(),
            side,
            source,
            &buffer[..len],
            false,
        );
        if received.is_ok() {
            inc(&counters.rtcp_received);
        }
    }
}

/// The recording a session's packets are copied to, if any (shared by its tasks).
type Tapping = Rc<Cell<Option<Uuid>>>;

/// The least a session's WebRTC timer task waits for a transcoder's next playout.
const TRANSCODE_STEP: Duration = Duration::from_millis(2);

/// The most a session's WebRTC timer task sleeps between looks at its legs.
const BROWSER_TICK: Duration = Duration::from_millis(500);

/// A session's WebRTC legs, by side (`None` for a plain RTP leg), shared by its tasks. A
/// browser's side speaks ICE-lite and DTLS-SRTP through str0m on the leg's RTP socket; the
/// rest of the session (bridge, recording, DTMF) sees its plain RTP.
#[derive(Default)]
struct Browsers {
    legs: [RefCell<Option<WebRtcLeg>>; 2],
    /// For a browser leg that carries Opus: its Opus ⇄ G.711 transcoder.
    transcoders: [RefCell<Option<Transcoder>>; 2],
    /// Where a transcoder writes the packet it makes for a browser (reused).
    scratch: RefCell<Vec<u8>>,
    /// When each leg wants its next timeout.
    deadlines: [Cell<Option<Instant>>; 2],
    /// The source the bridge sees for each browser's media: its first address.
    sources: [Cell<Option<SocketAddr>>; 2],
    /// Wakes the timer task when a deadline moved earlier than it sleeps.
    wake: tokio::sync::Notify,
    sleeping_until: Cell<Option<Instant>>,
}

fn index(side: Side) -> usize {
    usize::from(side == Side::B)
}

impl Browsers {
    /// Whether any leg is a browser's (the batched, in-place path is for plain legs only).
    fn any(&self) -> bool {
        self.legs.iter().any(|leg| leg.borrow().is_some())
    }

    fn is(&self, side: Side) -> bool {
        self.legs[index(side)].borrow().is_some()
    }

    /// Sends a plain RTP packet to `side`: through its WebRTC leg, or as it is from `socket`
    /// to `destination`.
    fn deliver(
        &self,
        side: Side,
        socket: &UdpSocket,
        packet: &[u8],
        destination: SocketAddr,
    ) -> bool {
        let mut slot = self.legs[index(side)].borrow_mut();
        match slot.as_mut() {
            Some(leg) => {
                if let Some(transcoder) = self.transcoders[index(side)].borrow_mut().as_mut() {
                    let mut opus = self.scratch.borrow_mut();
                    if !transcoder.to_browser(packet, &mut opus) {
                        return false;
                    }
                    leg.send_rtp(Instant::now(), &opus);
                } else {
                    leg.send_rtp(Instant::now(), packet);
                }
                // Sending yields no received media (that comes with datagrams).
                let _ = self.flush(side, leg, socket);
                true
            }
            None => socket.try_send_to(packet, destination).is_ok(),
        }
    }

    /// What a browser sent, for the phone: as it is, or (an Opus leg) through its
    /// transcoder's jitter buffer: the G.711 due by `now`.
    fn transcode(&self, side: Side, now: Instant, received: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut slot = self.transcoders[index(side)].borrow_mut();
        let Some(transcoder) = slot.as_mut() else {
            return received;
        };
        // G.711 from a browser that answered Opus but sends what it was offered first goes
        // through as it is; Opus into the jitter buffer.
        let mut due = Vec::new();
        for packet in received {
            if transcoder.is_opus(&packet) {
                transcoder.from_browser(now, &packet);
            } else {
                due.push(packet);
            }
        }
        let mut out = Vec::new();
        while transcoder.poll_to_phone(now, &mut out) {
            due.push(std::mem::take(&mut out));
        }
        if let Some(at) = transcoder.poll_timeout()
            && self
                .sleeping_until
                .get()
                .is_some_and(|until| at.max(now + TRANSCODE_STEP) < until)
        {
            self.wake.notify_one();
        }
        due
    }

    /// Drains `side`'s leg: datagrams leave from `socket`; the RTP it received is returned.
    fn flush(&self, side: Side, leg: &mut WebRtcLeg, socket: &UdpSocket) -> Vec<Vec<u8>> {
        let mut received = Vec::new();
        loop {
            match leg.poll() {
                Poll::Transmit { destination, bytes } => {
                    // A full socket buffer drops: ICE, DTLS and SRTP recover or tolerate it.
                    let _ = socket.try_send_to(&bytes, destination);
                }
                Poll::Rtp(packet) => received.push(packet),
                Poll::Timeout(at) => {
                    self.deadlines[index(side)].set(Some(at));
                    // While the timer task runs (not sleeping) it looks at the deadlines
                    // itself when it is done: a wake-up now would only spin it again.
                    if self.sleeping_until.get().is_some_and(|until| at < until) {
                        self.wake.notify_one();
                    }
                    return received;
                }
            }
        }
    }
}

/// A datagram on `side`'s RTP socket of a session with a browser leg: a browser's datagram
/// goes through its WebRTC leg first, and what comes out (plain RTP) on through the bridge to
/// the other side, which may be a browser too.
fn relay_with_browsers(
    shell: &Shell,
    context: (SessionId, Side, &RefCell<Bridge>, &Cell<Option<Uuid>>),
    browsers: &Browsers,
    (source, packet): (SocketAddr, &mut [u8]),
    (from, to): (&UdpSocket, &UdpSocket),
) {
    let side = context.1;
    if !browsers.is(side) {
        return forward_plain(shell, context, browsers, (source, packet), to);
    }
    let received = {
        let mut slot = browsers.legs[index(side)].borrow_mut();
        let Some(leg) = slot.as_mut() else { return };
        leg.handle_datagram(Instant::now(), source, packet);
        browsers.flush(side, leg, from)
    };
    // str0m authenticated these (SRTP) and ICE may move between the browser's candidates:
    // the bridge sees one source per browser, so its latching never refuses a move.
    let source = browsers.sources[index(side)].get().unwrap_or(source);
    browsers.sources[index(side)].set(Some(source));
    let decoded = browsers.transcode(side, Instant::now(), received);
    for mut plain in decoded {
        forward_plain(shell, context, browsers, (source, &mut plain), to);
    }
}

/// Forwards one plain RTP packet from `side` through the bridge to the other side.
fn forward_plain(
    shell: &Shell,
    context: (SessionId, Side, &RefCell<Bridge>, &Cell<Option<Uuid>>),
    browsers: &Browsers,
    (source, packet): (SocketAddr, &mut [u8]),
    to: &UdpSocket,
) {
    if let Some(destination) = handle_rtp(shell, context, source, packet) {
        browsers.deliver(context.1.other(), to, packet, destination);
    }
}

/// Runs the timers of a session's WebRTC legs (ICE consent, DTLS retransmissions, RTCP)
/// for as long as the session lives.
async fn drive_browsers(
    shell: Shell,
    (session, bridge, tapping): (SessionId, Rc<RefCell<Bridge>>, Tapping),
    browsers: Rc<Browsers>,
    sockets: [Rc<UdpSocket>; 2],
) {
    loop {
        let now = Instant::now();
        for side in [Side::A, Side::B] {
            let due = browsers.deadlines[index(side)]
                .get()
                .is_none_or(|at| at <= now);
            let received = {
                let mut slot = browsers.legs[index(side)].borrow_mut();
                let Some(leg) = slot.as_mut() else { continue };
                if due {
                    leg.handle_timeout(now);
                    browsers.flush(side, leg, &sockets[index(side)])
                } else {
                    Vec::new()
                }
            };
            // An Opus leg's transcoder plays out on its own schedule.
            let received = browsers.transcode(side, now, received);
            let source = browsers.sources[index(side)].get();
            for (mut plain, source) in received.into_iter().zip(std::iter::repeat(source)) {
                if let Some(source) = source {
                    let context = (session, side, &*bridge, &*tapping);
                    let to = &sockets[index(side.other())];
                    forward_plain(&shell, context, &browsers, (source, &mut plain), to);
                }
            }
        }
        // A jitter buffer may name a playout time that has come with nothing to pop yet (its
        // hangover): such a deadline is looked at again a step later, not spun on.
        let transcoding: Vec<Instant> = browsers
            .transcoders
            .iter()
            .filter_map(|t| t.borrow().as_ref().and_then(Transcoder::poll_timeout))
            .map(|at| at.max(now + TRANSCODE_STEP))
            .collect();
        let next = browsers
            .deadlines
            .iter()
            .filter_map(Cell::get)
            .chain(transcoding)
            .min()
            .unwrap_or(now + BROWSER_TICK)
            .clamp(now, now + BROWSER_TICK);
        browsers.sleeping_until.set(Some(next));
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            () = browsers.wake.notified() => {}
        }
        browsers.sleeping_until.set(None);
    }
}
