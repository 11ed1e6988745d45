//! Adaptive jitter buffer for one received RTP audio stream (RFC 3550), sans-IO.
//!
//! [`JitterBuffer::push`] takes a whole RTP packet and the instant it arrived and copies its
//! payload into one of a fixed set of slots allocated once by [`JitterBuffer::new`].
//! [`JitterBuffer::pop`] hands out, in sequence order, what is due at `now`: an
//! [`Output::Frame`] to decode or an [`Output::Conceal`] to fill with packet loss concealment.
//! [`JitterBuffer::poll_timeout`] names the instant of the next output, for the caller's
//! timer. Nothing here reads a clock: every instant is an argument, and a `now` earlier than
//! one already seen counts as the latest one seen. Nothing is allocated after `new`, and no
//! input, however hostile, makes it panic or grow.
//!
//! # Playout timeline
//!
//! Every output carries `playout`, the instant its first sample is to be played. Inside a
//! talk spurt consecutive outputs are exactly `samples / clock_rate` apart (to the
//! nanosecond), so the audio is continuous; a new talk spurt never starts before the previous
//! output ended. `samples` is the frame length learnt from the timestamp difference of
//! consecutive packets (RFC 3550 §5.1; a new length is adopted once two packet pairs agree),
//! 20 ms worth until then.
//!
//! # Target delay
//!
//! For each packet the buffer computes its *transit* `arrival − timestamp / clock_rate` (RFC
//! 3550 §6.4.1). The smallest transit over the last 100 packets is the network's base delay;
//! a packet's *relative delay* is its transit minus that base. Relative delays go into a
//! histogram with exponential forgetting (weights halve in about 350 packets, 7 s of 20 ms
//! frames), and the *target delay* is its 99th percentile clamped to
//! `min_delay..=max_delay`, so that about 1 % of packets arrive after their playout time.
//! Until 50 packets were seen the target is at least 40 ms. A packet of timestamp `ts` is
//! ideally played at `ts / clock_rate + base + target`. The RFC 3550 §A.8 interarrival jitter
//! is reported in [`Stats::jitter`]; it does not drive the target.
//!
//! Changes of the target reach the timeline in two ways:
//!
//! - **At talk-spurt starts** the first frame is scheduled at its ideal instant (never before
//!   it arrived, never more than `max_delay` after, never overlapping the previous output). A
//!   talk spurt starts where the timestamp does not continue from the previous packet: the
//!   silence gap of RFC 3551 §4.1, which the marker bit flags.
//! - **Inside a talk spurt, gradually**: when the scheduled delay exceeds the ideal by a whole
//!   frame and the next frame is already here, one frame is dropped (*shrink*); when it falls
//!   more than 5 ms short, an [`Output::Conceal`] as long as the shortfall (at most a frame)
//!   is inserted before the next frame (*stretch*). Either happens at most once a second, or
//!   every other frame while the error exceeds three frames. A packet that arrives just
//!   after its slot was concealed, while the delay is short of the ideal, is played right
//!   after that concealment, which turns the concealment into a stretch. These corrections
//!   also absorb clock skew: a sender clock 0.5 % fast or slow costs one shrink or stretch
//!   every 4 s, and the buffer level stays bounded.
//!
//! # Loss, lateness, silence
//!
//! - Packets play in sequence order whatever order they arrive in (RFC 3550 §5.1: 16-bit
//!   sequence numbers and 32-bit timestamps are extended across wrap-around).
//! - A sequence number missing when its playout time comes is concealed if a later packet of
//!   the same talk spurt is buffered, or, while nothing at all is buffered, for up to 200 ms
//!   after the last frame (a loss burst or a late packet cannot be told from silence yet).
//!   After that, [`JitterBuffer::pop`] returns `None` and the caller plays silence (DTX, hold),
//!   as it does before the first packet.
//! - When the next talk spurt arrives, it plays in full even if the silence concealments
//!   already used its sequence numbers (DTX keeps them running); concealments that turn out
//!   to have been silence are not counted as lost.
//! - A packet whose slot was already concealed or skipped is rejected as [`Rejected::Late`]; a
//!   second copy of a packet as [`Rejected::Duplicate`].
//! - A packet too far ahead for the buffer makes room: the oldest packets are dropped
//!   ([`Stats::overflow`]) and the timeline restarts at the oldest one kept.
//!
//! # Resynchronisation
//!
//! A packet with another SSRC, a sequence number more than 3000 ahead or 100 (or the
//! capacity, if larger) behind (RFC 3550 §A.1 `MAX_DROPOUT`, `MAX_MISORDER`), or a transit
//! more than 2 s (or twice
//! `max_delay`) away from the base is held on probation and rejected as
//! [`Rejected::Discontinuity`]. If the next packet continues it (same SSRC, next sequence
//! number, consistent timing: two sequential packets, as in §A.1), the buffer resynchronises
//! to the new stream: buffered packets are flushed, the playout clock restarts (after the
//! last output), and [`Stats::resyncs`] counts it. A single stray packet is dropped and
//! disturbs nothing.
//!
//! The caller feeds one audio stream: RFC 4733 telephone events and RTCP are separated before.

use std::fmt;
use std::time::{Duration, Instant};

use crate::rtp::RtpHeader;

/// Quantile of the relative delay that the target delay covers.
const LATE_QUANTILE: f64 = 0.99;
/// Per-packet forgetting factor of the delay histogram (weights halve in ~350 packets).
const FORGETTING: f64 = 0.998;
/// Packets before the histogram alone sets the target.
const WARMUP: u64 = 50;
/// Lowest target while warming up (before clamping to the configured bounds).
const INITIAL_TARGET: Duration = Duration::from_millis(40);
/// Packets over which the smallest transit (the network's base delay) is taken.
const BASE_WINDOW: usize = 100;
/// How long after the last frame missing packets are concealed while nothing is buffered.
const HANGOVER: Duration = Duration::from_millis(200);
/// RFC 3550 §A.1: a sequence number this far ahead of the highest is a discontinuity.
const MAX_DROPOUT: u64 = 3000;
/// RFC 3550 §A.1: a sequence number this far behind the highest is a discontinuity.
const MAX_MISORDER: u64 = 100;
/// Transit change beyond which the stream's timing is broken (at least; see `resync_ns`).
const RESYNC_JUMP: Duration = Duration::from_secs(2);
/// How far short of the ideal delay the timeline may fall before a frame is stretched.
const STRETCH_SLACK: Duration = Duration::from_millis(5);
/// Minimum interval between two corrections of the delay inside a talk spurt.
const CORRECTION_INTERVAL: Duration = Duration::from_secs(1);
/// Largest payload an RTP packet in a UDP datagram can carry.
const MAX_PAYLOAD: usize = 65_535;
/// Largest capacity: the window of sequence numbers must stay well inside 2^15.
const MAX_CAPACITY: usize = 16_384;

/// Configuration of a [`JitterBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// RTP clock rate of the stream in Hz (RFC 3551 §4.5: 8000 for G.711). Zero counts as 1.
    pub clock_rate: u32,
    /// Lower bound of the target delay.
    pub min_delay: Duration,
    /// Upper bound of the target delay (raised to `min_delay` if below it).
    pub max_delay: Duration,
    /// Packets held at most (1 to 16384).
    pub capacity: usize,
    /// Largest payload accepted, in bytes (at most 65535); larger ones are rejected.
    pub max_payload: usize,
}

impl Default for Config {
    /// 8 kHz G.711 (RFC 3551 §4.5.14) in 20 ms packets: 20–200 ms of delay, 64 packets
    /// (1.28 s), 1200 bytes per payload.
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            capacity: 64,
            max_payload: 1200,
        }
    }
}

/// Why [`JitterBuffer::push`] did not keep a packet. Every rejection is counted in [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// Not an RTP packet (RFC 3550 §5.1 header check failed).
    #[error("not an RTP packet")]
    Malformed,
    /// The payload is longer than [`Config::max_payload`].
    #[error("payload larger than a slot")]
    TooLarge,
    /// A packet with this sequence number is already buffered or was already played.
    #[error("duplicate packet")]
    Duplicate,
    /// The packet's slot was already concealed or skipped (or it is older than the buffer
    /// remembers).
    #[error("packet arrived after its playout time")]
    Late,
    /// Nothing played yet and the packet is so far before the others that they would not fit.
    #[error("packet does not fit in the buffer")]
    Full,
    /// Another SSRC, or a sequence number or timestamp jump (RFC 3550 §A.1): the packet is on
    /// probation, and the buffer resynchronises if the next packet continues from it.
    #[error("packet breaks from the stream (SSRC, sequence or timestamp jump)")]
    Discontinuity,
}

/// What the decoder should do next; see the module docs for the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// A packet to decode.
    Frame {
        /// RTP timestamp of the packet.
        timestamp: u32,
        /// RTP sequence number of the packet.
        sequence: u16,
        /// RTP payload type of the packet.
        payload_type: u8,
        /// The payload, without padding.
        payload: &'a [u8],
        /// Samples the frame lasts on the timeline.
        samples: u32,
        /// When its first sample plays.
        playout: Instant,
    },
    /// A packet that never came (or came too late), or a stretch of the timeline: the decoder
    /// should conceal `samples` samples (PLC).
    Conceal {
        /// RTP timestamp the concealed audio stands for (for a stretch, that of the frame
        /// that follows it).
        timestamp: u32,
        /// Samples to conceal.
        samples: u32,
        /// When its first sample plays.
        playout: Instant,
    },
}

impl Output<'_> {
    /// When the output's first sample plays.
    pub fn playout(&self) -> Instant {
        match *self {
            Self::Frame { playout, .. } | Self::Conceal { playout, .. } => playout,
        }
    }

    /// Samples the output lasts on the timeline.
    pub fn samples(&self) -> u32 {
        match *self {
            Self::Frame { samples, .. } | Self::Conceal { samples, .. } => samples,
        }
    }

    /// The RTP timestamp of the output.
    pub fn timestamp(&self) -> u32 {
        match *self {
            Self::Frame { timestamp, .. } | Self::Conceal { timestamp, .. } => timestamp,
        }
    }
}

/// Counters and estimates of a [`JitterBuffer`]. Counters accumulate over its whole life,
/// across [`JitterBuffer::reset`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// RTP packets pushed (whether kept or not), malformed and oversized ones excepted.
    pub received: u64,
    /// [`Output::Frame`]s handed out.
    pub played: u64,
    /// [`Output::Conceal`]s handed out, whatever the cause (loss, lateness, stretch, the
    /// silence after a talk spurt).
    pub concealed: u64,
    /// Sequence numbers concealed or skipped, and confirmed missing by a later packet of the
    /// stream, that have not arrived (late arrivals move to `late`). Concealments of what
    /// turns out to be silence, or of the end of the stream, are not counted.
    pub lost: u64,
    /// Packets rejected as [`Rejected::Late`].
    pub late: u64,
    /// Packets rejected as [`Rejected::Duplicate`].
    pub duplicates: u64,
    /// Packets rejected as [`Rejected::Malformed`].
    pub malformed: u64,
    /// Packets rejected as [`Rejected::TooLarge`].
    pub too_large: u64,
    /// Buffered packets dropped to make room, plus packets rejected as [`Rejected::Full`].
    pub overflow: u64,
    /// Packets rejected as [`Rejected::Discontinuity`].
    pub discontinuities: u64,
    /// Resynchronisations to a new stream (SSRC change, sequence or timestamp jump).
    pub resyncs: u64,
    /// Buffered packets discarded by resynchronisations and resets.
    pub flushed: u64,
    /// Frames dropped inside a talk spurt to shorten the delay (clock skew, less jitter).
    pub shrinks: u64,
    /// Concealments inserted inside a talk spurt to lengthen the delay (clock skew, more
    /// jitter), including late packets played after their concealment.
    pub stretches: u64,
    /// Packets buffered now.
    pub buffered: usize,
    /// Current target delay (99th percentile of the relative delay, clamped).
    pub target_delay: Duration,
    /// Interarrival jitter (RFC 3550 §6.4.1, computed as in §A.8).
    pub jitter: Duration,
}

/// An adaptive playout buffer for one RTP audio stream; see the module docs.
///
/// Methods by category: input ([`push`](Self::push)), output ([`pop`](Self::pop),
/// [`poll_timeout`](Self::poll_timeout)), inspection ([`stats`](Self::stats)), control
/// ([`reset`](Self::reset)).
pub struct JitterBuffer {
    config: Config,
    /// Packet slots, indexed by extended sequence number modulo the capacity.
    slots: Vec<Slot>,
    /// `max_payload` bytes per slot.
    payloads: Vec<u8>,
    /// Slots in state `Buffered`.
    buffered: usize,
    /// The stream's SSRC; `None` before the first packet (and after a reset).
    ssrc: Option<u32>,
    /// Highest extended sequence number accepted.
    highest: u64,
    /// Extended sequence number of the next output.
    next_seq: u64,
    /// The lowest sequence number a new talk spurt may still rewind to, with the timestamp
    /// the timeline gave it. The sequence numbers from here to `next_seq` were concealed or
    /// skipped tentatively (nothing was buffered): they count as lost once a frame or a
    /// later packet confirms it, and not at all if a new talk spurt rewinds over them.
    /// `None` while nothing was output.
    floor: Option<(u64, u32)>,
    /// Late arrivals among the tentative sequence numbers.
    run_late: u64,
    /// Samples per frame.
    frame: u32,
    /// A frame length seen once, adopted when seen again.
    frame_candidate: Option<u32>,
    /// Maps RTP timestamps to the local clock.
    clock: Option<Clock>,
    play: Play,
    /// Sequence number of the last output, if it concealed a missing packet.
    last_conceal: Option<u64>,
    /// Where the last output ended.
    last_end: Option<Instant>,
    /// Where the last frame ended.
    last_frame_end: Option<Instant>,
    /// Playout instant of the last shrink or stretch.
    last_correction: Option<Instant>,
    probation: Option<Candidate>,
    window: Window,
    histogram: Histogram,
    /// Smallest transit in the window, ns.
    base_ns: i64,
    /// Target delay, ns.
    target_ns: i64,
    /// RFC 3550 §A.8 jitter, ns.
    jitter_ns: i64,
    last_transit: Option<i64>,
    last_now: Option<Instant>,
    stats: Stats,
}

/// What the buffer knows about one sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Nothing.
    Free,
    /// A packet waiting to be played, and when it arrived.
    Buffered(Instant),
    /// Played, dropped or rejected late: further copies are duplicates.
    Played,
    /// Concealed or skipped.
    Missed,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    seq: u64,
    timestamp: u32,
    payload_type: u8,
    marker: bool,
    len: usize,
}

const FREE: Slot = Slot {
    state: SlotState::Free,
    seq: 0,
    timestamp: 0,
    payload_type: 0,
    marker: false,
    len: 0,
};

/// The schedule of the next output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Play {
    /// Nothing to play.
    Idle,
    /// `next_seq` is buffered and starts a talk spurt at `at`.
    Start { at: Instant },
    /// `next_seq` continues the talk spurt with `timestamp` at `at`.
    Continue { timestamp: u32, at: Instant },
}

/// Extends RTP timestamps and converts them to nanoseconds since the first packet.
#[derive(Clone, Copy, Debug)]
struct Clock {
    origin: Instant,
    ts_ref: u32,
    ext_ref: i64,
    rate: u32,
}

impl Clock {
    fn new(origin: Instant, timestamp: u32, rate: u32) -> Self {
        Self {
            origin,
            ts_ref: timestamp,
            ext_ref: 0,
            rate,
        }
    }

    /// The timestamp extended around the latest one (RFC 3550 §5.1 wrap-around).
    fn extend(&self, timestamp: u32) -> i64 {
        self.ext_ref + i64::from(timestamp.wrapping_sub(self.ts_ref) as i32)
    }

    fn observe(&mut self, timestamp: u32) {
        let extended = self.extend(timestamp);
        if extended > self.ext_ref {
            self.ts_ref = timestamp;
            self.ext_ref = extended;
        }
    }

    /// Media time of `timestamp` in ns since the first packet's.
    fn media_ns(&self, timestamp: u32) -> i64 {
        let ns = i128::from(self.extend(timestamp)) * 1_000_000_000 / i128::from(self.rate);
        ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// RFC 3550 §6.4.1 relative transit time, ns.
    fn transit(&self, arrival: Instant, timestamp: u32) -> i64 {
        signed_ns(arrival, self.origin).saturating_sub(self.media_ns(timestamp))
    }
}

/// The packet held on probation.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    arrival: Instant,
}

/// The last `BASE_WINDOW` transits.
#[derive(Clone, Debug)]
struct Window {
    values: [i64; BASE_WINDOW],
    len: usize,
    next: usize,
}

impl Window {
    fn new() -> Self {
        Self {
            values: [0; BASE_WINDOW],
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, value: i64) {
        self.values[self.next] = value;
        self.next = (self.next + 1) % BASE_WINDOW;
        self.len = (self.len + 1).min(BASE_WINDOW);
    }

    fn min(&self) -> Option<i64> {
        self.values[..self.len].iter().copied().min()
    }

    fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
    }
}

/// Histogram of relative delays with exponential forgetting: the n-th sample weighs
/// `FORGETTING^-n` (uniform during the first `1 / (1 − FORGETTING)` samples), which is the
/// same as multiplying the old weights by `FORGETTING` but costs one addition.
#[derive(Clone, Debug)]
struct Histogram {
    weights: Vec<f64>,
    width_ns: i64,
    unit: f64,
    total: f64,
    count: u64,
}

impl Histogram {
    fn new(max_delay: Duration) -> Self {
        let max_ns = duration_ns(max_delay);
        let width_ns = (max_ns / 500).max(1_000_000);
        let buckets = usize::try_from(max_ns / width_ns).unwrap_or(500) + 1;
        Self {
            weights: vec![0.0; buckets],
            width_ns,
            unit: 1.0,
            total: 0.0,
            count: 0,
        }
    }

    fn add(&mut self, delay_ns: i64) {
        let last = self.weights.len() - 1;
        let bucket = usize::try_from(delay_ns.max(0) / self.width_ns).map_or(last, |b| b.min(last));
        self.count += 1;
        if self.count as f64 > 1.0 / (1.0 - FORGETTING) {
            self.unit /= FORGETTING;
        }
        self.weights[bucket] += self.unit;
        self.total += self.unit;
        if self.unit > 1e100 {
            for weight in &mut self.weights {
                *weight /= self.unit;
            }
            self.total /= self.unit;
            self.unit = 1.0;
        }
    }

    /// Upper edge of the bucket where the cumulative weight reaches `q`, ns.
    fn quantile(&self, q: f64) -> i64 {
        let threshold = q * self.total;
        let mut cumulative = 0.0;
        for (bucket, weight) in self.weights.iter().enumerate() {
            cumulative += weight;
            if cumulative >= threshold {
                return (bucket as i64 + 1) * self.width_ns;
            }
        }
        self.weights.len() as i64 * self.width_ns
    }

    fn clear(&mut self) {
        self.weights.fill(0.0);
        self.unit = 1.0;
        self.total = 0.0;
        self.count = 0;
    }
}

/// What `pop` hands out, without the borrow.
enum Action {
    Frame {
        index: usize,
        len: usize,
        timestamp: u32,
        sequence: u16,
        payload_type: u8,
        samples: u32,
        playout: Instant,
    },
    Conceal {
        timestamp: u32,
        samples: u32,
        playout: Instant,
    },
}

impl JitterBuffer {
    /// A buffer with all its slots allocated. Out-of-range settings are clamped as
    /// [`Config`] documents.
    pub fn new(config: Config) -> Self {
        let config = Config {
            clock_rate: config.clock_rate.max(1),
            min_delay: config.min_delay,
            max_delay: config.max_delay.max(config.min_delay),
            capacity: config.capacity.clamp(1, MAX_CAPACITY),
            max_payload: config.max_payload.min(MAX_PAYLOAD),
        };
        let mut buffer = Self {
            config,
            slots: vec![FREE; config.capacity],
            payloads: vec![0; config.capacity * config.max_payload],
            buffered: 0,
            ssrc: None,
            highest: 0,
            next_seq: 0,
            floor: None,
            run_late: 0,
            frame: (config.clock_rate / 50).max(1),
            frame_candidate: None,
            clock: None,
            play: Play::Idle,
            last_conceal: None,
            last_end: None,
            last_frame_end: None,
            last_correction: None,
            probation: None,
            window: Window::new(),
            histogram: Histogram::new(config.max_delay),
            base_ns: 0,
            target_ns: 0,
            jitter_ns: 0,
            last_transit: None,
            last_now: None,
            stats: Stats::default(),
        };
        buffer.target_ns = buffer.compute_target();
        buffer
    }

    /// Accepts one whole RTP packet that arrived at `now`, and copies its payload.
    ///
    /// A rejected packet is dropped and counted; none of the rejections is a failure of the
    /// caller (they are how the network and the peer behave).
    pub fn push(&mut self, now: Instant, packet: &[u8]) -> Result<(), Rejected> {
        let now = self.observe_now(now);
        let Ok(header) = RtpHeader::parse(packet) else {
            self.stats.malformed += 1;
            return Err(Rejected::Malformed);
        };
        if header.payload_len > self.config.max_payload {
            self.stats.too_large += 1;
            return Err(Rejected::TooLarge);
        }
        self.stats.received += 1;
        self.expire_hangover(now);
        if self.ssrc.is_none() {
            self.begin(now, &header);
        } else if self.breaks_stream(now, &header) {
            if !self.confirms_candidate(now, &header) {
                self.probation = Some(Candidate {
                    ssrc: header.ssrc,
                    sequence: header.sequence,
                    timestamp: header.timestamp,
                    arrival: now,
                });
                self.stats.discontinuities += 1;
                return Err(Rejected::Discontinuity);
            }
            self.stats.resyncs += 1;
            self.begin(now, &header);
        }
        self.probation = None;
        let seq = self.extend_seq(header.sequence);
        if self.known(seq).is_none() {
            // Late packets count too: they are what raises the target.
            self.measure(now, header.timestamp);
        }
        let result = self.place(now, seq, &header, packet);
        if result != Err(Rejected::Duplicate) {
            self.highest = self.highest.max(seq);
        }
        self.schedule(Some(now));
        result
    }

    /// The next output whose playout time has come (`playout <= now`), if any. Call
    /// repeatedly until `None`.
    pub fn pop(&mut self, now: Instant) -> Option<Output<'_>> {
        let now = self.observe_now(now);
        Some(match self.next_action(now)? {
            Action::Frame {
                index,
                len,
                timestamp,
                sequence,
                payload_type,
                samples,
                playout,
            } => {
                let start = index * self.config.max_payload;
                Output::Frame {
                    timestamp,
                    sequence,
                    payload_type,
                    payload: self.payloads.get(start..start + len).unwrap_or_default(),
                    samples,
                    playout,
                }
            }
            Action::Conceal {
                timestamp,
                samples,
                playout,
            } => Output::Conceal {
                timestamp,
                samples,
                playout,
            },
        })
    }

    /// When [`pop`](Self::pop) will next have something (the earliest playout time), for
    /// the caller's timer; `None` while idle (before the first packet, in silence).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.play {
            Play::Idle => None,
            Play::Start { at } => Some(at),
            Play::Continue { at, .. } => (self.buffered > 0 || self.in_hangover(at)).then_some(at),
        }
    }

    /// Counters and estimates.
    pub fn stats(&self) -> Stats {
        Stats {
            buffered: self.buffered,
            target_delay: ns_duration(self.target_ns),
            jitter: ns_duration(self.jitter_ns),
            ..self.stats
        }
    }

    /// Forgets the stream and everything learnt about the network (for example on hold).
    /// Buffered packets are discarded ([`Stats::flushed`]); the counters are kept.
    pub fn reset(&mut self) {
        self.flush();
        self.ssrc = None;
        self.floor = None;
        self.run_late = 0;
        self.frame = (self.config.clock_rate / 50).max(1);
        self.frame_candidate = None;
        self.clock = None;
        self.play = Play::Idle;
        self.last_conceal = None;
        self.last_end = None;
        self.last_frame_end = None;
        self.last_correction = None;
        self.probation = None;
        self.window.clear();
        self.histogram.clear();
        self.base_ns = 0;
        self.jitter_ns = 0;
        self.last_transit = None;
        self.target_ns = self.compute_target();
    }

    fn observe_now(&mut self, now: Instant) -> Instant {
        let now = self.last_now.map_or(now, |last| last.max(now));
        self.last_now = Some(now);
        now
    }

    /// Starts a new stream with this packet (the first one, or after a resync).
    fn begin(&mut self, now: Instant, header: &RtpHeader) {
        self.flush();
        self.ssrc = Some(header.ssrc);
        // Room below for packets older than the first.
        self.highest = (1 << 32) | u64::from(header.sequence);
        self.next_seq = self.highest;
        self.floor = None;
        self.run_late = 0;
        self.clock = Some(Clock::new(now, header.timestamp, self.config.clock_rate));
        self.play = Play::Idle;
        self.last_conceal = None;
        self.probation = None;
        self.window.clear();
        self.last_transit = None;
    }

    fn flush(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Buffered(_)) {
                self.stats.flushed += 1;
            }
            *slot = FREE;
        }
        self.buffered = 0;
    }

    /// Whether the packet belongs to another stream or jumps (RFC 3550 §A.1, §8.2).
    fn breaks_stream(&self, now: Instant, header: &RtpHeader) -> bool {
        if self.ssrc != Some(header.ssrc) {
            return true;
        }
        let seq = self.extend_seq(header.sequence);
        let misorder = MAX_MISORDER.max(self.slots.len() as u64);
        if seq > self.highest + MAX_DROPOUT || seq + misorder < self.highest {
            return true;
        }
        match (&self.clock, self.window.len) {
            (Some(clock), 1..) => {
                let transit = clock.transit(now, header.timestamp);
                transit.saturating_sub(self.base_ns).saturating_abs() > self.resync_ns()
            }
            _ => false,
        }
    }

    /// Whether the packet continues the one on probation (two sequential packets, §A.1).
    fn confirms_candidate(&self, now: Instant, header: &RtpHeader) -> bool {
        let Some(candidate) = self.probation else {
            return false;
        };
        let media = i128::from(header.timestamp.wrapping_sub(candidate.timestamp) as i32)
            * 1_000_000_000
            / i128::from(self.config.clock_rate);
        let elapsed = i128::from(signed_ns(now, candidate.arrival));
        candidate.ssrc == header.ssrc
            && header.sequence == candidate.sequence.wrapping_add(1)
            && (elapsed - media).abs() <= i128::from(self.resync_ns())
    }

    fn resync_ns(&self) -> i64 {
        duration_ns(RESYNC_JUMP.max(self.config.max_delay.saturating_mul(2)))
    }

    /// The sequence number extended to the candidate closest to the highest one (§A.1).
    fn extend_seq(&self, sequence: u16) -> u64 {
        let delta = sequence.wrapping_sub(self.highest as u16) as i16;
        self.highest.wrapping_add_signed(i64::from(delta))
    }

    /// Files a packet of the current stream, or says why not.
    fn place(
        &mut self,
        now: Instant,
        seq: u64,
        header: &RtpHeader,
        packet: &[u8],
    ) -> Result<(), Rejected> {
        if seq >= self.next_seq {
            return self.store(now, seq, header, packet);
        }
        let fits = seq + self.capacity() > self.highest;
        if fits && self.recover(seq, header) {
            return self.store(now, seq, header, packet);
        }
        match self.floor {
            Some((floor, floor_ts)) if seq >= floor && fits => {
                let expected =
                    floor_ts.wrapping_add(((seq - floor) as u32).wrapping_mul(self.frame));
                if header.marker || header.timestamp != expected {
                    // A new talk spurt begins inside what was concealed (or skipped) as the
                    // end of the previous one: that was silence, not loss.
                    self.run_late = self.run_late.min(seq - floor);
                    self.next_seq = seq;
                    self.play = Play::Idle;
                    self.last_conceal = None;
                    return self.store(now, seq, header, packet);
                }
            }
            None if matches!(self.play, Play::Idle | Play::Start { .. }) => {
                // Nothing played yet: the stream starts earlier than its first arrival.
                if fits {
                    self.next_seq = seq;
                    self.play = Play::Idle;
                    return self.store(now, seq, header, packet);
                }
                self.stats.overflow += 1;
                return Err(Rejected::Full);
            }
            _ => {}
        }
        Err(self.reject_old(seq))
    }

    /// Plays a packet that arrived just after its concealment right after it instead, if the
    /// delay is short of the ideal: the concealment becomes a stretch.
    fn recover(&mut self, seq: u64, header: &RtpHeader) -> bool {
        let Play::Continue { timestamp, at } = self.play else {
            return false;
        };
        let expected = timestamp.wrapping_sub(self.frame);
        if self.last_conceal != Some(seq)
            || seq + 1 != self.next_seq
            || header.timestamp != expected
            || self.excess(expected, at) >= self.frame_ns()
        {
            return false;
        }
        self.next_seq = seq;
        self.play = Play::Continue {
            timestamp: expected,
            at,
        };
        self.stats.stretches += 1;
        self.last_conceal = None;
        self.last_correction = Some(at);
        if self.floor.is_none_or(|(floor, _)| floor > seq) {
            // Its concealment was confirmed (and counted) already.
            self.stats.lost = self.stats.lost.saturating_sub(1);
            self.floor = Some((seq, expected));
        }
        true
    }

    /// A packet behind the timeline: a duplicate or a late one.
    fn reject_old(&mut self, seq: u64) -> Rejected {
        let index = self.index(seq);
        let slot = &mut self.slots[index];
        if slot.seq == seq {
            match slot.state {
                SlotState::Played | SlotState::Buffered(_) => {
                    self.stats.duplicates += 1;
                    return Rejected::Duplicate;
                }
                SlotState::Missed => {
                    slot.state = SlotState::Played;
                    if self.floor.is_some_and(|(floor, _)| seq >= floor) {
                        self.run_late += 1;
                    } else {
                        self.stats.lost = self.stats.lost.saturating_sub(1);
                    }
                }
                SlotState::Free => {}
            }
        }
        self.stats.late += 1;
        Rejected::Late
    }

    /// Copies a packet at or after `next_seq` into its slot.
    fn store(
        &mut self,
        now: Instant,
        seq: u64,
        header: &RtpHeader,
        packet: &[u8],
    ) -> Result<(), Rejected> {
        if seq >= self.next_seq + self.capacity() {
            self.make_room(seq, header.timestamp);
        }
        let index = self.index(seq);
        let slot = self.slots[index];
        if let SlotState::Buffered(_) = slot.state {
            if slot.seq == seq {
                self.stats.duplicates += 1;
                return Err(Rejected::Duplicate);
            }
            // Unreachable while every buffered packet lies in `next_seq..next_seq + capacity`;
            // kept so that a broken invariant loses a packet instead of the count.
            self.buffered -= 1;
            self.stats.overflow += 1;
        }
        let start = index * self.config.max_payload;
        let source = packet.get(header.payload_offset..header.payload_offset + header.payload_len);
        let target = self.payloads.get_mut(start..start + header.payload_len);
        if let (Some(source), Some(target)) = (source, target) {
            target.copy_from_slice(source);
        }
        self.slots[index] = Slot {
            state: SlotState::Buffered(now),
            seq,
            timestamp: header.timestamp,
            payload_type: header.payload_type,
            marker: header.marker,
            len: header.payload_len,
        };
        self.buffered += 1;
        self.learn_frame(seq);
        Ok(())
    }

    /// Drops the oldest packets so that `seq` fits; the timeline restarts.
    fn make_room(&mut self, seq: u64, timestamp: u32) {
        let new_next = seq + 1 - self.capacity();
        let mut dropped = 0;
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Buffered(_)) && slot.seq < new_next {
                slot.state = SlotState::Played;
                dropped += 1;
            }
        }
        self.buffered -= dropped as usize;
        self.stats.overflow += dropped;
        self.commit(self.next_seq);
        self.stats.lost += (new_next - self.next_seq).saturating_sub(dropped);
        self.next_seq = new_next;
        let back = ((seq - new_next) as u32).wrapping_mul(self.frame);
        self.floor = Some((new_next, timestamp.wrapping_sub(back)));
        self.play = Play::Idle;
        self.last_conceal = None;
    }

    /// Learns the frame length from the packet's neighbours (§5.1: the timestamp advances by
    /// the samples of a packet). A length is adopted once two pairs agree.
    fn learn_frame(&mut self, seq: u64) {
        let slot = self.slots[self.index(seq)];
        let mut diffs = [None, None];
        if !slot.marker {
            diffs[0] = self
                .known(seq - 1)
                .map(|prev| slot.timestamp.wrapping_sub(prev.timestamp));
        }
        if let Some(next) = self.known(seq + 1).filter(|next| !next.marker) {
            diffs[1] = Some(next.timestamp.wrapping_sub(slot.timestamp));
        }
        let max_frame = (self.config.clock_rate / 5).max(1);
        for diff in diffs.into_iter().flatten() {
            if diff == 0 || diff > max_frame {
                continue;
            }
            if diff == self.frame {
                self.frame_candidate = None;
            } else if self.frame_candidate == Some(diff) {
                self.frame = diff;
                self.frame_candidate = None;
            } else {
                self.frame_candidate = Some(diff);
            }
        }
    }

    /// Updates the transit window, the delay histogram, the target and the §A.8 jitter.
    fn measure(&mut self, now: Instant, timestamp: u32) {
        let Some(clock) = self.clock.as_mut() else {
            return;
        };
        let transit = clock.transit(now, timestamp);
        clock.observe(timestamp);
        self.window.push(transit);
        self.base_ns = self.window.min().unwrap_or(transit);
        self.histogram.add(transit.saturating_sub(self.base_ns));
        self.target_ns = self.compute_target();
        if let Some(previous) = self.last_transit {
            let d = transit.saturating_sub(previous).saturating_abs();
            self.jitter_ns += (d - self.jitter_ns) / 16;
        }
        self.last_transit = Some(transit);
    }

    fn compute_target(&self) -> i64 {
        let mut target = self.histogram.quantile(LATE_QUANTILE);
        if self.histogram.count < WARMUP {
            target = target.max(duration_ns(INITIAL_TARGET));
        }
        target.clamp(
            duration_ns(self.config.min_delay),
            duration_ns(self.config.max_delay),
        )
    }

    /// Ends the silence hangover if nothing came for its whole length (the caller may not
    /// have popped the concealments; they are stale now).
    fn expire_hangover(&mut self, now: Instant) {
        if let Play::Continue { .. } = self.play
            && self.buffered == 0
            && self
                .last_frame_end
                .is_none_or(|end| now >= later(end, HANGOVER))
        {
            self.play = Play::Idle;
        }
    }

    /// Decides when the next output plays, after a push (`now` known) or an output.
    fn schedule(&mut self, now: Option<Instant>) {
        if self.ssrc.is_none() {
            return;
        }
        match self.play {
            Play::Idle => {
                let Some(seq) = self.lowest_buffered() else {
                    return;
                };
                if seq > self.next_seq {
                    self.skip_to(seq);
                }
                if let Some(at) = self.start_at(seq, now) {
                    self.play = Play::Start { at };
                }
            }
            Play::Start { at } => {
                // Not due yet: take what was learnt since into account.
                if let Some(now) = now
                    && at > now
                    && let Some(at) = self.start_at(self.next_seq, Some(now))
                {
                    self.play = Play::Start { at };
                }
            }
            Play::Continue { timestamp, at } => {
                if let Some(index) = self.find(self.next_seq)
                    && self.slots[index].timestamp != timestamp
                    && let Some(start) = self.start_at(self.next_seq, now)
                {
                    self.play = Play::Start { at: start.max(at) };
                }
            }
        }
    }

    /// Playout of a talk spurt's first packet: its ideal instant, but not before it arrived
    /// (or `now`), not more than `max_delay` after, not before the last output ended.
    fn start_at(&self, seq: u64, now: Option<Instant>) -> Option<Instant> {
        let slot = self.slots[self.find(seq)?];
        let SlotState::Buffered(arrival) = slot.state else {
            return None;
        };
        let earliest = [Some(arrival), now, self.last_end]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(arrival);
        let ideal = self
            .ideal(slot.timestamp)
            .unwrap_or(arrival)
            .min(later(arrival, self.config.max_delay));
        Some(ideal.max(earliest))
    }

    /// `timestamp / clock_rate + base + target` on the local clock.
    fn ideal(&self, timestamp: u32) -> Option<Instant> {
        let clock = self.clock.as_ref()?;
        let ns = clock
            .media_ns(timestamp)
            .saturating_add(self.base_ns)
            .saturating_add(self.target_ns);
        shift(clock.origin, ns)
    }

    /// How much later than its ideal instant `timestamp` is scheduled at `at`, ns.
    fn excess(&self, timestamp: u32, at: Instant) -> i64 {
        let Some(clock) = self.clock.as_ref() else {
            return 0;
        };
        signed_ns(at, clock.origin)
            .saturating_sub(clock.media_ns(timestamp))
            .saturating_sub(self.base_ns)
            .saturating_sub(self.target_ns)
    }

    fn next_action(&mut self, now: Instant) -> Option<Action> {
        // Each round outputs, waits, or consumes a packet or a gap: bounded by the capacity.
        for _ in 0..self.slots.len() + 4 {
            self.schedule(None);
            match self.play {
                Play::Idle => return None,
                Play::Start { at } => {
                    if now < at {
                        return None;
                    }
                    let Some(index) = self.find(self.next_seq) else {
                        self.play = Play::Idle;
                        continue;
                    };
                    return Some(self.emit_frame(index, at));
                }
                Play::Continue { timestamp, at } => {
                    if now < at {
                        return None;
                    }
                    if let Some(index) = self.find(self.next_seq) {
                        let excess = self.excess(timestamp, at);
                        if self.may_correct(at, excess) {
                            let following = timestamp.wrapping_add(self.frame);
                            if excess >= self.frame_ns()
                                && self.continues(self.next_seq + 1, following)
                            {
                                self.shrink(index, following, at);
                                continue;
                            }
                            if excess < -duration_ns(STRETCH_SLACK) {
                                return Some(self.stretch(timestamp, at, excess));
                            }
                        }
                        return Some(self.emit_frame(index, at));
                    }
                    match self.lowest_buffered() {
                        Some(seq) => {
                            let gap = (seq - self.next_seq) as u32;
                            let expected = timestamp.wrapping_add(gap.wrapping_mul(self.frame));
                            if self.continues(seq, expected) {
                                return Some(self.conceal(timestamp, at, true));
                            }
                            // The next talk spurt is here; what is missing before it is not
                            // worth concealing.
                            self.skip_to(seq);
                            self.play = Play::Idle;
                        }
                        None if self.in_hangover(at) => {
                            return Some(self.conceal(timestamp, at, false));
                        }
                        None => {
                            self.play = Play::Idle;
                            return None;
                        }
                    }
                }
            }
        }
        None
    }

    fn may_correct(&self, at: Instant, excess: i64) -> bool {
        let interval = if excess.unsigned_abs() >= 3 * self.frame_ns().unsigned_abs() {
            self.frame_duration() * 2
        } else {
            CORRECTION_INTERVAL
        };
        self.last_correction
            .is_none_or(|last| at >= later(last, interval))
    }

    fn emit_frame(&mut self, index: usize, at: Instant) -> Action {
        let slot = self.slots[index];
        self.slots[index].state = SlotState::Played;
        self.buffered -= 1;
        self.stats.played += 1;
        let samples = self.frame;
        let end = later(at, self.frame_duration());
        self.commit(self.next_seq);
        self.next_seq += 1;
        let timestamp = slot.timestamp.wrapping_add(samples);
        self.play = Play::Continue { timestamp, at: end };
        self.floor = Some((self.next_seq, timestamp));
        self.last_end = Some(end);
        self.last_frame_end = Some(end);
        self.last_conceal = None;
        Action::Frame {
            index,
            len: slot.len,
            timestamp: slot.timestamp,
            sequence: slot.seq as u16,
            payload_type: slot.payload_type,
            samples,
            playout: at,
        }
    }

    /// Drops the next frame; the one after takes its place on the timeline.
    fn shrink(&mut self, index: usize, following: u32, at: Instant) {
        self.slots[index].state = SlotState::Played;
        self.buffered -= 1;
        self.commit(self.next_seq);
        self.next_seq += 1;
        self.play = Play::Continue {
            timestamp: following,
            at,
        };
        self.floor = Some((self.next_seq, following));
        self.last_conceal = None;
        self.last_correction = Some(at);
        self.stats.shrinks += 1;
    }

    /// Conceals as much as the delay falls short of the ideal (at most a frame) before the
    /// next frame, which moves that much later.
    fn stretch(&mut self, timestamp: u32, at: Instant, excess: i64) -> Action {
        let rate = u128::from(self.config.clock_rate);
        let samples = (u128::from(excess.unsigned_abs()) * rate).div_ceil(1_000_000_000);
        let samples = u32::try_from(samples)
            .unwrap_or(u32::MAX)
            .clamp(1, self.frame);
        let end = later(at, self.samples_duration(samples));
        self.play = Play::Continue { timestamp, at: end };
        self.last_end = Some(end);
        self.last_conceal = None;
        self.last_correction = Some(at);
        self.stats.stretches += 1;
        self.stats.concealed += 1;
        Action::Conceal {
            timestamp,
            samples,
            playout: at,
        }
    }

    /// Conceals the missing `next_seq`; `confirmed` if a later packet of the spurt is here.
    fn conceal(&mut self, timestamp: u32, at: Instant, confirmed: bool) -> Action {
        let seq = self.next_seq;
        let index = self.index(seq);
        self.slots[index] = Slot {
            state: SlotState::Missed,
            seq,
            timestamp,
            ..FREE
        };
        self.next_seq += 1;
        let following = timestamp.wrapping_add(self.frame);
        let end = later(at, self.frame_duration());
        self.play = Play::Continue {
            timestamp: following,
            at: end,
        };
        if confirmed {
            self.commit(self.next_seq);
            self.floor = Some((self.next_seq, following));
        }
        self.last_end = Some(end);
        self.last_conceal = Some(seq);
        self.stats.concealed += 1;
        Action::Conceal {
            timestamp,
            samples: self.frame,
            playout: at,
        }
    }

    /// Skips the missing sequence numbers up to `seq` (tentatively lost).
    fn skip_to(&mut self, seq: u64) {
        let capacity = self.capacity();
        for missing in self.next_seq.max(seq.saturating_sub(capacity))..seq {
            let index = self.index(missing);
            self.slots[index] = Slot {
                state: SlotState::Missed,
                seq: missing,
                ..FREE
            };
        }
        self.next_seq = seq;
        self.last_conceal = None;
    }

    /// Confirms the tentative sequence numbers before `upto` as lost.
    fn commit(&mut self, upto: u64) {
        if let Some((floor, _)) = self.floor
            && upto > floor
        {
            let missing = upto - floor;
            self.stats.lost += missing - self.run_late.min(missing);
        }
        self.run_late = 0;
    }

    fn in_hangover(&self, at: Instant) -> bool {
        self.last_frame_end
            .is_some_and(|end| at < later(end, HANGOVER))
    }

    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    fn index(&self, seq: u64) -> usize {
        (seq % self.capacity()) as usize
    }

    /// The slot holding packet `seq`, if buffered.
    fn find(&self, seq: u64) -> Option<usize> {
        let index = self.index(seq);
        let slot = &self.slots[index];
        (slot.seq == seq && matches!(slot.state, SlotState::Buffered(_))).then_some(index)
    }

    /// Packet `seq` if it is buffered or was played (its timestamp is real).
    fn known(&self, seq: u64) -> Option<Slot> {
        let slot = self.slots[self.index(seq)];
        (slot.seq == seq && matches!(slot.state, SlotState::Buffered(_) | SlotState::Played))
            .then_some(slot)
    }

    /// Whether packet `seq` is buffered with `timestamp`.
    fn continues(&self, seq: u64, timestamp: u32) -> bool {
        self.find(seq)
            .is_some_and(|index| self.slots[index].timestamp == timestamp)
    }

    fn lowest_buffered(&self) -> Option<u64> {
        if self.buffered == 0 {
            return None;
        }
        (self.next_seq..self.next_seq + self.capacity()).find(|&seq| self.find(seq).is_some())
    }

    fn frame_duration(&self) -> Duration {
        self.samples_duration(self.frame)
    }

    fn samples_duration(&self, samples: u32) -> Duration {
        Duration::from_nanos(u64::from(samples) * 1_000_000_000 / u64::from(self.config.clock_rate))
    }

    fn frame_ns(&self) -> i64 {
        duration_ns(self.frame_duration())
    }
}

impl fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("config", &self.config)
            .field("ssrc", &self.ssrc)
            .field("play", &self.play)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// `a − b` in ns, saturating.
fn signed_ns(a: Instant, b: Instant) -> i64 {
    if a >= b {
        duration_ns(a - b)
    } else {
        -duration_ns(b - a)
    }
}

/// `origin + ns`, if representable.
fn shift(origin: Instant, ns: i64) -> Option<Instant> {
    let magnitude = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        origin.checked_add(magnitude)
    } else {
        origin.checked_sub(magnitude)
    }
}

/// `at + d`, or `at` if not representable.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or(at)
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn ns_duration(ns: i64) -> Duration {
    Duration::from_nanos(ns.max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // Virtual time needs one real origin.

    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::rtp;

    const SSRC: u32 = 0x5eed_0001;
    const FRAME: Duration = Duration::from_millis(20);
    /// Network delay without jitter in the simulations.
    const BASE: Duration = Duration::from_millis(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn packet_with(ssrc: u32, seq: u16, ts: u32, marker: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        let payload: Vec<u8> = (0..160).map(|i| (i as u8) ^ (seq as u8)).collect();
        rtp::build(&mut bytes, 0, marker, seq, ts, ssrc, &payload);
        bytes
    }

    fn packet(seq: u16, ts: u32) -> Vec<u8> {
        packet_with(SSRC, seq, ts, false)
    }

    /// An output without the borrow.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Out {
        frame: bool,
        timestamp: u32,
        sequence: Option<u16>,
        samples: u32,
        playout: Instant,
    }

    impl From<Output<'_>> for Out {
        fn from(output: Output<'_>) -> Self {
            match output {
                Output::Frame {
                    timestamp,
                    sequence,
                    payload,
                    samples,
                    playout,
                    ..
                } => {
                    assert_eq!(payload.len(), 160);
                    assert_eq!(
                        payload[1],
                        1 ^ (sequence as u8),
                        "payload of another packet"
                    );
                    Self {
                        frame: true,
                        timestamp,
                        sequence: Some(sequence),
                        samples,
                        playout,
                    }
                }
                Output::Conceal {
                    timestamp,
                    samples,
                    playout,
                } => Self {
                    frame: false,
                    timestamp,
                    sequence: None,
                    samples,
                    playout,
                },
            }
        }
    }

    fn drain(jb: &mut JitterBuffer, now: Instant, into: &mut Vec<Out>) {
        for _ in 0..10_000 {
            let Some(output) = jb.pop(now) else {
                return;
            };
            let out = Out::from(output);
            assert!(out.playout <= now, "output before its playout time");
            into.push(out);
        }
        panic!("pop never returned None");
    }

    /// Drives the buffer by its timer until `until`, returning everything popped.
    fn run_timer(jb: &mut JitterBuffer, now: &mut Instant, until: Instant) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(at) = jb.poll_timeout() {
            if at > until {
                break;
            }
            *now = (*now).max(at);
            let before = outs.len();
            drain(jb, *now, &mut outs);
            if outs.len() == before {
                assert!(
                    jb.poll_timeout().is_none_or(|next| next > *now),
                    "timer without progress"
                );
            }
        }
        *now = (*now).max(until);
        outs
    }

    fn assert_continuous(outs: &[Out]) {
        for pair in outs.windows(2) {
            let step = Duration::from_nanos(u64::from(pair[0].samples) * 125_000);
            assert_eq!(pair[1].playout, pair[0].playout + step, "gap in {pair:?}");
        }
    }

    // ---- Targeted deterministic tests ----

    #[test]
    fn nothing_before_the_first_packet() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        assert!(jb.pop(t0 + ms(1000)).is_none());
        assert_eq!(jb.poll_timeout(), None);
        assert_eq!(jb.stats().buffered, 0);
    }

    #[test]
    fn reorders_and_conceals_a_loss() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        jb.push(t0, &packet(1, 160)).unwrap();
        jb.push(t0 + ms(45), &packet(4, 640)).unwrap(); // before 3
        jb.push(t0 + ms(46), &packet(3, 480)).unwrap(); // 2 never comes
        let mut now = t0;
        let outs = run_timer(&mut jb, &mut now, t0 + ms(2000));
        let played: Vec<_> = outs.iter().map(|o| (o.timestamp, o.sequence)).collect();
        assert_eq!(
            played[..4],
            [(160, Some(1)), (320, None), (480, Some(3)), (640, Some(4))]
        );
        // First packet: 40 ms initial target.
        assert_eq!(outs[0].playout, t0 + ms(40));
        assert_continuous(&outs);
        let stats = jb.stats();
        assert_eq!((stats.played, stats.lost, stats.late), (3, 1, 0));
        // Then the buffer runs dry: 200 ms of hangover after the last frame (not counted as
        // lost: nothing confirmed it), then silence.
        assert_eq!(outs.len(), 4 + 10);
        assert_eq!(jb.poll_timeout(), None);
        assert!(jb.pop(t0 + ms(5000)).is_none());
    }

    #[test]
    fn duplicates_are_dropped_before_and_after_playout() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        jb.push(t0, &packet(10, 0)).unwrap();
        assert_eq!(
            jb.push(t0 + ms(1), &packet(10, 0)),
            Err(Rejected::Duplicate)
        );
        jb.push(t0 + ms(20), &packet(11, 160)).unwrap();
        let mut now = t0;
        let outs = run_timer(&mut jb, &mut now, t0 + ms(61));
        assert_eq!(outs.len(), 2);
        assert_eq!(jb.push(now, &packet(10, 0)), Err(Rejected::Duplicate));
        assert_eq!(jb.push(now, &packet(11, 160)), Err(Rejected::Duplicate));
        let stats = jb.stats();
        assert_eq!((stats.duplicates, stats.played, stats.late), (3, 2, 0));
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let first_seq = 65_530u16;
        let first_ts = u32::MAX - 800; // wraps after five packets too
        let mut now = t0;
        let mut outs = Vec::new();
        for k in 0..20u16 {
            now = t0 + FRAME * u32::from(k);
            let seq = first_seq.wrapping_add(k);
            let ts = first_ts.wrapping_add(160 * u32::from(k));
            jb.push(now, &packet(seq, ts)).unwrap();
            drain(&mut jb, now, &mut outs);
        }
        outs.extend(run_timer(&mut jb, &mut now, t0 + ms(1000)));
        let frames: Vec<_> = outs.iter().filter(|o| o.frame).collect();
        assert_eq!(frames.len(), 20);
        for (k, out) in frames.iter().enumerate() {
            assert_eq!(out.sequence, Some(first_seq.wrapping_add(k as u16)));
            assert_eq!(out.timestamp, first_ts.wrapping_add(160 * k as u32));
        }
        assert_continuous(&frames.iter().map(|o| **o).collect::<Vec<_>>());
        let stats = jb.stats();
        assert_eq!((stats.lost, stats.late, stats.resyncs), (0, 0, 0));
    }

    #[test]
    fn late_packet_is_rejected_and_counted() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let mut now = t0;
        let mut outs = Vec::new();
        // Packets 0..10 on time except 5, which comes 200 ms late.
        for k in 0..10u16 {
            if k != 5 {
                jb.push(t0 + FRAME * u32::from(k), &packet(k, 160 * u32::from(k)))
                    .unwrap();
            }
            outs.extend(run_timer(&mut jb, &mut now, t0 + FRAME * u32::from(k + 1)));
        }
        now = t0 + ms(300);
        assert_eq!(jb.push(now, &packet(5, 800)), Err(Rejected::Late));
        assert_eq!(jb.push(now, &packet(5, 800)), Err(Rejected::Duplicate));
        outs.extend(run_timer(&mut jb, &mut now, t0 + ms(1000)));
        let stats = jb.stats();
        assert_eq!((stats.late, stats.lost, stats.duplicates), (1, 0, 1));
        assert!(outs.iter().any(|o| !o.frame && o.timestamp == 800));
    }

    #[test]
    fn packet_just_after_its_concealment_stretches_instead() {
        // After a jitter increase, a packet late by a few ms is played right after its
        // concealment and the timeline moves one frame later (the delay grows).
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let mut now = t0;
        let mut outs = Vec::new();
        for k in 0..60u16 {
            let lateness = if k >= 55 { ms(35) } else { Duration::ZERO };
            let at = t0 + FRAME * u32::from(k) + lateness;
            outs.extend(run_timer(&mut jb, &mut now, at));
            jb.push(at, &packet(k, 160 * u32::from(k))).unwrap();
        }
        outs.extend(run_timer(&mut jb, &mut now, t0 + ms(2000)));
        let stats = jb.stats();
        assert_eq!((stats.late, stats.lost), (0, 0), "{stats:?}");
        assert!(stats.stretches >= 1, "{stats:?}");
        assert_continuous(&outs[..outs.len() - 10]);
        assert_eq!(
            outs.iter().filter(|o| o.frame).count(),
            60 - stats.shrinks as usize
        );
    }

    #[test]
    fn ssrc_change_resyncs_after_two_packets() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let mut now = t0;
        let mut outs = Vec::new();
        for k in 0..50u16 {
            jb.push(t0 + FRAME * u32::from(k), &packet(k, 160 * u32::from(k)))
                .unwrap();
            outs.extend(run_timer(&mut jb, &mut now, t0 + FRAME * u32::from(k + 1)));
        }
        let old_end = outs.last().unwrap().playout;
        // A transfer: another source with unrelated numbering, right after.
        let other = 0x0bad_cafe;
        for k in 0..50u16 {
            let at = t0 + FRAME * u32::from(50 + k);
            let result = jb.push(
                at,
                &packet_with(other, 40_000 + k, 9_000_000 + 160 * u32::from(k), k == 0),
            );
            assert_eq!(result.is_err(), k == 0, "{k}: {result:?}");
            if k == 0 {
                assert_eq!(result, Err(Rejected::Discontinuity));
            }
            outs.extend(run_timer(&mut jb, &mut now, at + FRAME));
        }
        outs.extend(run_timer(&mut jb, &mut now, t0 + ms(3000)));
        let stats = jb.stats();
        assert_eq!((stats.resyncs, stats.discontinuities), (1, 1), "{stats:?}");
        // The old source's buffered packets were flushed, the new one plays from its second
        // packet, after (never over) the old audio.
        let new: Vec<_> = outs.iter().filter(|o| o.timestamp >= 9_000_000).collect();
        assert!(new[0].frame);
        assert_eq!(new[0].sequence, Some(40_001));
        assert!(new[0].playout >= old_end);
        assert_eq!(new.iter().filter(|o| o.frame).count(), 49);
        for pair in outs.windows(2) {
            assert!(pair[1].playout >= pair[0].playout + FRAME, "overlap");
        }
    }

    #[test]
    fn stray_packet_of_another_source_is_ignored() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let mut now = t0;
        let mut outs = Vec::new();
        for k in 0..30u16 {
            let at = t0 + FRAME * u32::from(k);
            jb.push(at, &packet(k, 160 * u32::from(k))).unwrap();
            if k == 10 {
                let stray = packet_with(7, 999, 123, false);
                assert_eq!(jb.push(at, &stray), Err(Rejected::Discontinuity));
            }
            outs.extend(run_timer(&mut jb, &mut now, at + FRAME));
        }
        run_timer(&mut jb, &mut now, t0 + ms(2000));
        let stats = jb.stats();
        assert_eq!((stats.resyncs, stats.flushed, stats.lost), (0, 0, 0));
        assert_eq!(stats.played, 30 - stats.shrinks);
    }

    #[test]
    fn timestamp_jump_resyncs_the_playout_clock() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let mut now = t0;
        let mut outs = Vec::new();
        for k in 0..100u16 {
            // Seq continues, but the timestamp jumps by ~17 minutes at packet 50.
            let ts = 160 * u32::from(k) + if k >= 50 { 8_000_000 } else { 0 };
            let at = t0 + FRAME * u32::from(k);
            let result = jb.push(at, &packet(k, ts));
            assert_eq!(result.is_err(), k == 50, "{k}: {result:?}");
            outs.extend(run_timer(&mut jb, &mut now, at + FRAME));
        }
        outs.extend(run_timer(&mut jb, &mut now, t0 + ms(3000)));
        let stats = jb.stats();
        assert_eq!((stats.resyncs, stats.discontinuities), (1, 1), "{stats:?}");
        let after: Vec<_> = outs
            .iter()
            .filter(|o| o.frame && o.timestamp >= 8_000_000)
            .collect();
        assert_eq!(after.len(), 49);
        // Played at a sane delay after arrival, not 17 minutes off.
        let arrival = t0 + FRAME * 51;
        assert!(after[0].playout >= arrival && after[0].playout <= arrival + ms(100));
        for pair in outs.windows(2) {
            assert!(pair[1].playout >= pair[0].playout + FRAME, "overlap");
        }
    }

    #[test]
    fn talk_spurts_with_silence_between() {
        // Three spurts of 30 packets, 1 s of silence between (sequence numbers continue, the
        // timestamp jumps, the marker bit is set: RFC 3551 §4.1). The first spurt's last packet
        // is lost, the second spurt's first packet too.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        let mut now = t0;
        let mut outs = Vec::new();
        let mut seq = 1000u16;
        let mut media = 0u32; // in samples since t0
        let mut spurt_ts = Vec::new();
        for spurt in 0..3 {
            spurt_ts.push(media);
            for k in 0..30 {
                let at = t0 + Duration::from_micros(u64::from(media) * 125);
                let lost = (spurt == 0 && k == 29) || (spurt == 1 && k == 0);
                if !lost {
                    jb.push(at, &packet_with(SSRC, seq, media, k == 0)).unwrap();
                }
                outs.extend(run_timer(&mut jb, &mut now, at + FRAME));
                seq = seq.wrapping_add(1);
                media += 160;
            }
            let silence_end = media + 8000;
            while media < silence_end {
                media += 160;
                let at = t0 + Duration::from_micros(u64::from(media) * 125);
                outs.extend(run_timer(&mut jb, &mut now, at));
                // In the silence, after the hangover, the caller plays silence.
                if at > now - ms(1) && media > silence_end - 4000 {
                    assert!(jb.pop(at).is_none());
                    assert_eq!(jb.poll_timeout(), None);
                }
            }
        }
        let until = now + ms(2000);
        outs.extend(run_timer(&mut jb, &mut now, until));
        let stats = jb.stats();
        // Lost: the first spurt's last packet, the second's first.
        assert_eq!(
            (stats.lost, stats.late, stats.resyncs),
            (2, 0, 0),
            "{stats:?}"
        );
        // The target falls to 20 ms in the second spurt: one frame is dropped there.
        assert_eq!((stats.played, stats.shrinks), (87, 1));
        // Each spurt is continuous; each starts at its ideal instant, the target delay after
        // its first packet's arrival, which is also its send time here (no jitter): 40 ms
        // while warming up (50 packets), then the minimum, 20 ms.
        for (spurt, &ts) in spurt_ts.iter().enumerate() {
            let start = outs
                .iter()
                .position(|o| o.frame && o.timestamp >= ts + if spurt == 1 { 160 } else { 0 })
                .unwrap();
            let first = outs[start];
            let sent = t0 + Duration::from_micros(u64::from(first.timestamp) * 125);
            let delay = first.playout - sent;
            assert_eq!(delay, ms(if spurt < 2 { 40 } else { 20 }), "spurt {spurt}");
            let spurt_outs: Vec<_> = outs[start..]
                .iter()
                .take_while(|o| o.timestamp < ts + 30 * 160)
                .copied()
                .collect();
            assert_continuous(&spurt_outs);
        }
    }

    #[test]
    fn flood_never_grows_the_buffer() {
        let t0 = Instant::now();
        let config = Config {
            capacity: 16,
            ..Config::default()
        };
        let mut jb = JitterBuffer::new(config);
        // 1000 packets in the same millisecond.
        for k in 0..1000u16 {
            let result = jb.push(t0, &packet(k, 160 * u32::from(k)));
            assert!(
                matches!(result, Ok(()) | Err(Rejected::Discontinuity)),
                "{k}: {result:?}"
            );
            assert!(jb.stats().buffered <= 16);
        }
        let stats = jb.stats();
        assert!(stats.overflow > 0, "{stats:?}");
        assert!(stats.buffered <= 16);
        let mut now = t0;
        let outs = run_timer(&mut jb, &mut now, t0 + ms(10_000));
        assert!(outs.iter().filter(|o| o.frame).count() <= 16 + 1);
        // Then normal packets play again.
        let mut outs = Vec::new();
        let resume = now;
        for k in 0..100u16 {
            let at = resume + FRAME * u32::from(k);
            let _ = jb.push(at, &packet(2000 + k, 320_000 + 160 * u32::from(k)));
            outs.extend(run_timer(&mut jb, &mut now, at + FRAME));
        }
        assert!(outs.iter().filter(|o| o.frame).count() >= 90);
    }

    #[test]
    fn overflow_keeps_the_newest() {
        // The caller stops popping; packets keep coming in real time.
        let t0 = Instant::now();
        let config = Config {
            capacity: 8,
            ..Config::default()
        };
        let mut jb = JitterBuffer::new(config);
        for k in 0..20u16 {
            jb.push(t0 + FRAME * u32::from(k), &packet(k, 160 * u32::from(k)))
                .unwrap();
        }
        let stats = jb.stats();
        assert_eq!((stats.buffered, stats.overflow), (8, 12));
        let mut now = t0 + ms(400);
        let outs = run_timer(&mut jb, &mut now, t0 + ms(2000));
        // The newest eight, in order; the excess delay is then shed by shrinks.
        let frames: Vec<_> = outs.iter().filter_map(|o| o.sequence).collect();
        assert!(frames.is_sorted() && frames[0] == 12 && frames.last() == Some(&19));
        assert_eq!(frames.len() as u64 + jb.stats().shrinks, 8);
        assert_continuous(&outs[..frames.len()]);
    }

    #[test]
    fn rejects_garbage_and_oversized_payloads() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config {
            max_payload: 100,
            ..Config::default()
        });
        assert_eq!(jb.push(t0, &[0x80; 5]), Err(Rejected::Malformed));
        assert_eq!(jb.push(t0, &packet(1, 0)), Err(Rejected::TooLarge));
        let stats = jb.stats();
        assert_eq!(
            (stats.malformed, stats.too_large, stats.received),
            (1, 1, 0)
        );
    }

    #[test]
    fn reset_forgets_the_stream() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(Config::default());
        for k in 0..5u16 {
            jb.push(t0, &packet(k, 160 * u32::from(k))).unwrap();
        }
        jb.reset();
        assert_eq!(jb.poll_timeout(), None);
        assert_eq!(jb.stats().flushed, 5);
        // Any stream is accepted afresh, without probation.
        jb.push(t0 + ms(100), &packet_with(9, 7, 7, false)).unwrap();
        assert_eq!(jb.poll_timeout(), Some(t0 + ms(140)));
    }

    #[test]
    fn clock_skew_keeps_the_buffer_bounded() {
        // ±0.5 % over 10 minutes: 3 s of drift if nothing corrected it.
        for skew in [0.005, -0.005] {
            let report = simulate(&Scenario {
                seconds: 600,
                skew,
                jitter: ms(20),
                ..Scenario::new("skew", 99)
            });
            println!("skew {skew:+}: {report:?}");
            // One correction per frame of drift: 600 s · 0.5 % / 20 ms = 150.
            let corrections = if skew > 0.0 {
                report.stats.shrinks
            } else {
                report.stats.stretches
            };
            assert!((140..=175).contains(&corrections), "{report:?}");
            assert!(report.max_delay_ms <= 70.0, "{report:?}");
            assert!(report.max_buffered <= 6, "{report:?}");
            assert!(report.late_rate <= 0.02, "{report:?}");
        }
    }

    // ---- Acceptance: seeded network traces on virtual time ----

    fn scenarios() -> Vec<Scenario> {
        vec![
            Scenario {
                polling: Polling::Timer,
                ..Scenario::new("j0 clean timer", 1)
            },
            Scenario {
                loss: 0.05,
                bursts: 3,
                polling: Polling::Tick(FRAME),
                ..Scenario::new("j0 loss5% bursts tick20", 2)
            },
            Scenario {
                jitter: ms(20),
                loss: 0.02,
                bursts: 2,
                swaps: 20,
                polling: Polling::Tick(FRAME),
                ..Scenario::new("j20 loss2% tick20", 3)
            },
            Scenario {
                jitter: ms(20),
                loss: 0.10,
                bursts: 3,
                duplicates: 0.02,
                talk_spurts: true,
                polling: Polling::Timer,
                ..Scenario::new("j20 loss10% spurts dup timer", 4)
            },
            Scenario {
                jitter: ms(60),
                loss: 0.05,
                bursts: 3,
                swaps: 20,
                polling: Polling::Timer,
                ..Scenario::new("j60 loss5% timer", 5)
            },
            Scenario {
                jitter: ms(60),
                loss: 0.02,
                talk_spurts: true,
                polling: Polling::RandomTick,
                ..Scenario::new("j60 loss2% spurts tick1-20", 6)
            },
            Scenario {
                jitter: ms(120),
                loss: 0.10,
                bursts: 3,
                swaps: 20,
                polling: Polling::Timer,
                ..Scenario::new("j120 loss10% timer", 7)
            },
            Scenario {
                jitter: ms(120),
                loss: 0.02,
                bursts: 2,
                duplicates: 0.02,
                polling: Polling::Tick(FRAME),
                ..Scenario::new("j120 loss2% dup tick20", 8)
            },
            Scenario {
                jitter: ms(120),
                shape: Shape::Pareto,
                loss: 0.03,
                bursts: 2,
                talk_spurts: true,
                polling: Polling::Timer,
                ..Scenario::new("j120 pareto spurts timer", 9)
            },
            Scenario {
                jitter: ms(60),
                shape: Shape::Pareto,
                loss: 0.01,
                polling: Polling::RandomTick,
                ..Scenario::new("j60 pareto tick1-20", 10)
            },
        ]
    }

    /// Acceptance on 60 s seeded traces: 20 ms G.711 packets, 30 ms base network delay plus
    /// a random extra delay (which reorders), random and burst loss (bursts of 5), explicit
    /// swaps, duplicates, talk spurts with DTX; popping by the timer (`poll_timeout`), every
    /// 20 ms, or every 1–20 ms at random. `simulate` checks in every scenario that (c) every
    /// sequence number comes out exactly once, as a frame or a concealment, except frames
    /// dropped by shrinks and lost heads of talk spurts (so concealments are the lost, late,
    /// stretches and silence hangover), that `lost` equals the network loss, and that (d)
    /// playout is continuous to the nanosecond within a talk spurt and never overlaps across.
    /// Bounds, with J the largest extra delay and q99 its 99th percentile (0.99·J uniform,
    /// 9/16·J Pareto); "late" is the share of packets sent after the first 5 s that arrived
    /// but too late to play:
    ///
    /// | scenario                      | max delay            | mean delay     | late   |
    /// |-------------------------------|----------------------|----------------|--------|
    /// | J = 0                         | ≤ 40 ms              | ≤ 25 ms        | 0      |
    /// | J > 0 (uniform or Pareto)     | ≤ J + 40 ms and      | ≤ q99 + 35 ms, | ≤ 1 %  |
    /// |                               | ≤ max_delay + 20 ms  | ≥ q99 / 2      |        |
    ///
    /// Measured (`cargo test -p switchboard-media acceptance_traces -- --nocapture`; the
    /// worst of 25 seeds per scenario is within the same bounds):
    ///
    /// | scenario                     | max ms | mean ms | late % |
    /// |------------------------------|--------|---------|--------|
    /// | j0 clean timer               |  40.0  |  20.3   |  0.00  |
    /// | j0 loss5% bursts tick20      |  40.0  |  20.3   |  0.00  |
    /// | j20 loss2% tick20            |  47.0  |  30.8   |  0.22  |
    /// | j20 loss10% spurts dup timer |  41.9  |  20.9   |  0.00  |
    /// | j60 loss5% timer             |  76.0  |  75.9   |  0.04  |
    /// | j60 loss2% spurts tick1-20   |  65.5  |  60.1   |  0.00  |
    /// | j120 loss10% timer           | 128.7  | 128.7   |  0.12  |
    /// | j120 loss2% dup tick20       | 120.2  | 119.9   |  0.00  |
    /// | j120 pareto spurts timer     | 101.1  |  70.8   |  0.66  |
    /// | j60 pareto tick1-20          |  60.2  |  40.6   |  0.37  |
    #[test]
    fn acceptance_traces() {
        for scenario in scenarios() {
            let report = simulate(&scenario);
            println!(
                "{:<30} max {:6.1} ms  mean {:6.1} ms  late {:4.2} %  target {:3} ms  \
                 lost {:3}  shrinks {:2}  stretches {:2}  dup {:2}  buffered<={}",
                report.name,
                report.max_delay_ms,
                report.mean_delay_ms,
                report.late_rate * 100.0,
                report.final_target_ms,
                report.stats.lost,
                report.stats.shrinks,
                report.stats.stretches,
                report.stats.duplicates,
                report.max_buffered,
            );
            let jitter = scenario.jitter.as_secs_f64() * 1000.0;
            let max_delay = scenario.max_delay.as_secs_f64() * 1000.0;
            if jitter == 0.0 {
                assert!(report.max_delay_ms <= 40.0, "{report:?}");
                assert!(report.mean_delay_ms <= 25.0, "{report:?}");
                assert_eq!(report.late_rate, 0.0, "{report:?}");
                continue;
            }
            let q99 = match scenario.shape {
                Shape::Uniform => 0.99 * jitter,
                Shape::Pareto => 9.0 / 16.0 * jitter,
            };
            assert!(report.max_delay_ms <= jitter + 40.0, "{report:?}");
            assert!(report.max_delay_ms <= max_delay + 20.0, "{report:?}");
            assert!(report.mean_delay_ms <= q99 + 35.0, "{report:?}");
            assert!(report.mean_delay_ms >= q99 / 2.0, "{report:?}");
            assert!(report.late_rate <= 0.01, "{report:?}");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Arbitrary bytes.
        Raw(Vec<u8>),
        /// An arbitrary header.
        Header {
            ssrc: u32,
            seq: u16,
            ts: u32,
            marker: bool,
            len: usize,
        },
        /// A packet near the previous one, sometimes from another source.
        Near {
            dseq: i16,
            dts: i32,
            marker: bool,
            stranger: bool,
            len: usize,
        },
        /// Time passes (µs).
        Advance(u32),
        /// Time goes backwards (µs): must be ignored.
        Back(u32),
        Pop,
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Raw),
            1 => (any::<u32>(), any::<u16>(), any::<u32>(), any::<bool>(), 0..300usize)
                .prop_map(|(ssrc, seq, ts, marker, len)| Op::Header { ssrc, seq, ts, marker, len }),
            6 => (-4i16..8, -2i32..6, any::<bool>(), proptest::bool::weighted(0.03), 0..200usize)
                .prop_map(|(dseq, dts, marker, stranger, len)| Op::Near {
                    dseq,
                    dts,
                    marker,
                    stranger,
                    len,
                }),
            5 => (0u32..60_000).prop_map(Op::Advance),
            1 => (0u32..60_000).prop_map(Op::Back),
            4 => Just(Op::Pop),
            1 => Just(Op::Reset),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// Hostile input: no panic, bounded buffer, outputs due, in range and never
        /// overlapping, `poll_timeout` honest.
        #[test]
        fn never_panics_and_stays_bounded(
            ops in proptest::collection::vec(op(), 0..300),
            capacity in 1usize..40,
            max_payload in 0usize..250,
            max_delay in 0u64..400,
        ) {
            let t0 = Instant::now() + Duration::from_secs(3600);
            let config = Config {
                capacity,
                max_payload,
                max_delay: ms(max_delay),
                ..Config::default()
            };
            let mut jb = JitterBuffer::new(config);
            // Before anything the ops can reach.
            let (mut now, mut latest) = (t0, t0 - Duration::from_secs(1000));
            let (mut seq, mut ts) = (0u16, 0u32);
            let mut last_end: Option<Instant> = None;
            let mut bytes = Vec::new();
            for op in ops {
                // The latest instant the buffer was given.
                if !matches!(op, Op::Advance(_) | Op::Back(_) | Op::Reset) {
                    latest = latest.max(now);
                }
                match op {
                    Op::Raw(raw) => {
                        let _ = jb.push(now, &raw);
                    }
                    Op::Header { ssrc, seq, ts, marker, len } => {
                        rtp::build(&mut bytes, 0, marker, seq, ts, ssrc, &vec![1; len]);
                        let _ = jb.push(now, &bytes);
                    }
                    Op::Near { dseq, dts, marker, stranger, len } => {
                        seq = seq.wrapping_add_signed(dseq);
                        ts = ts.wrapping_add_signed(dts * 160);
                        let ssrc = if stranger { 99 } else { SSRC };
                        rtp::build(&mut bytes, 0, marker, seq, ts, ssrc, &vec![2; len]);
                        let _ = jb.push(now, &bytes);
                    }
                    Op::Advance(us) => now += Duration::from_micros(u64::from(us)),
                    Op::Back(us) => now -= Duration::from_micros(u64::from(us)),
                    Op::Pop => {
                        let mut count = 0;
                        while let Some(out) = jb.pop(now) {
                            count += 1;
                            prop_assert!(count <= 10_000);
                            prop_assert!(out.playout() <= latest);
                            prop_assert!(out.samples() > 0);
                            if let Output::Frame { payload, .. } = out {
                                prop_assert!(payload.len() <= max_payload);
                            }
                            prop_assert!(last_end.is_none_or(|end| out.playout() >= end));
                            let length = u64::from(out.samples()) * 125_000;
                            last_end = Some(out.playout() + Duration::from_nanos(length));
                        }
                        // Drained: the timer points to the future, if anywhere.
                        prop_assert!(jb.poll_timeout().is_none_or(|at| at > latest));
                    }
                    Op::Reset => {
                        jb.reset();
                        last_end = None;
                    }
                }
                prop_assert!(jb.stats().buffered <= capacity);
            }
        }
    }

    /// SplitMix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Shape {
        /// Extra delay uniform in [0, jitter].
        Uniform,
        /// Heavy-tailed (Pareto, α = 2, scale jitter/16), capped at jitter.
        Pareto,
    }

    #[derive(Clone, Copy, Debug)]
    enum Polling {
        /// `pop` every so often.
        Tick(Duration),
        /// `pop` every 1–20 ms, at random.
        RandomTick,
        /// `pop` exactly at `poll_timeout`.
        Timer,
    }

    #[derive(Clone, Copy, Debug)]
    struct Scenario {
        name: &'static str,
        seed: u64,
        seconds: u64,
        jitter: Duration,
        shape: Shape,
        loss: f64,
        bursts: usize,
        swaps: usize,
        duplicates: f64,
        talk_spurts: bool,
        /// Sender clock rate relative to ours, minus one.
        skew: f64,
        polling: Polling,
        max_delay: Duration,
    }

    impl Scenario {
        fn new(name: &'static str, seed: u64) -> Self {
            Self {
                name,
                seed,
                seconds: 60,
                jitter: Duration::ZERO,
                shape: Shape::Uniform,
                loss: 0.0,
                bursts: 0,
                swaps: 0,
                duplicates: 0.0,
                talk_spurts: false,
                skew: 0.0,
                polling: Polling::Timer,
                max_delay: ms(300),
            }
        }
    }

    struct Sent {
        seq: u16,
        ts: u32,
        at: Instant,
        spurt: usize,
        lost: bool,
    }

    #[derive(Debug)]
    #[allow(dead_code)] // Printed.
    struct Report {
        name: &'static str,
        mean_delay_ms: f64,
        max_delay_ms: f64,
        late_rate: f64,
        network_lost: usize,
        max_buffered: usize,
        final_target_ms: u128,
        stats: Stats,
    }

    const WARMUP_TIME: Duration = Duration::from_secs(5);

    /// Runs one scenario and checks the invariants that hold in all of them: (c) every
    /// sequence number output once (or accounted for), (d) continuous playout within talk
    /// spurts, no overlap between them. Returns the figures the bounds are about.
    fn simulate(s: &Scenario) -> Report {
        let origin = Instant::now();
        let mut rng = Rng(s.seed);

        // Sender: 20 ms G.711, optionally in talk spurts (DTX: sequence numbers continue, the
        // timestamp jumps over the silence, marker on the first packet).
        let mut sent: Vec<Sent> = Vec::new();
        let mut markers = Vec::new();
        let mut seq = rng.next() as u16;
        let first_ts = rng.next() as u32;
        let mut frames = 0u64; // sender time, in frames
        let mut spurt = 0;
        let mut left = if s.talk_spurts {
            50 + rng.below(150)
        } else {
            u64::MAX
        };
        let mut first = true;
        while frames < s.seconds * 50 {
            if left == 0 {
                frames += 20 + rng.below(80);
                spurt += 1;
                left = 50 + rng.below(150);
                first = true;
            }
            let sender_time = FRAME * frames as u32;
            sent.push(Sent {
                seq,
                ts: first_ts.wrapping_add(160 * frames as u32),
                at: origin + sender_time.div_f64(1.0 + s.skew),
                spurt,
                lost: false,
            });
            markers.push(first);
            seq = seq.wrapping_add(1);
            frames += 1;
            left -= 1;
            first = false;
        }

        // Network: loss, bursts of 5, jitter, explicit swaps, duplicates.
        for packet in &mut sent {
            packet.lost = rng.unit() < s.loss;
        }
        for _ in 0..s.bursts {
            let start = 250 + rng.below(sent.len() as u64 - 300) as usize;
            for packet in &mut sent[start..start + 5] {
                packet.lost = true;
            }
        }
        let mut arrival: Vec<Option<Instant>> = sent
            .iter()
            .map(|p| {
                let extra = match s.shape {
                    Shape::Uniform => s.jitter.mul_f64(rng.unit()),
                    Shape::Pareto => {
                        let x = (1.0 - rng.unit()).powf(-0.5) - 1.0;
                        s.jitter.mul_f64((x / 16.0).min(1.0))
                    }
                };
                (!p.lost).then_some(p.at + BASE + extra)
            })
            .collect();
        for _ in 0..s.swaps {
            let i = rng.below(sent.len() as u64 - 1) as usize;
            if let (Some(_), Some(next)) = (arrival[i], arrival[i + 1]) {
                arrival[i] = Some(next + ms(1));
            }
        }
        let mut events: Vec<(Instant, usize)> = arrival
            .iter()
            .enumerate()
            .filter_map(|(i, at)| at.map(|at| (at, i)))
            .collect();
        let mut copies = Vec::new();
        for &(at, i) in &events {
            if rng.unit() < s.duplicates {
                copies.push((at + ms(rng.below(40)), i));
            }
        }
        events.extend(copies);
        events.sort_by_key(|&(at, i)| (at, i));

        // Receiver.
        let mut jb = JitterBuffer::new(Config {
            max_delay: s.max_delay,
            ..Config::default()
        });
        let packets: Vec<Vec<u8>> = sent
            .iter()
            .zip(&markers)
            .map(|(p, &marker)| packet_with(SSRC, p.seq, p.ts, marker))
            .collect();
        let mut results: Vec<Vec<Result<(), Rejected>>> = vec![Vec::new(); sent.len()];
        let mut outs = Vec::new();
        let mut max_buffered = 0;
        let end = events.last().unwrap().0 + ms(2000);
        let mut next_event = 0;
        let mut now = origin;
        let mut push = |jb: &mut JitterBuffer, (at, i): (Instant, usize)| {
            results[i].push(jb.push(at, &packets[i]));
            max_buffered = max_buffered.max(jb.stats().buffered);
        };
        match s.polling {
            Polling::Timer => loop {
                let arrival = events.get(next_event).map(|e| e.0);
                match (arrival, jb.poll_timeout()) {
                    (Some(a), Some(t)) if t < a => {
                        now = now.max(t);
                        let before = outs.len();
                        drain(&mut jb, now, &mut outs);
                        assert!(outs.len() > before || jb.poll_timeout() != Some(t));
                    }
                    (Some(a), _) => {
                        now = a;
                        push(&mut jb, events[next_event]);
                        next_event += 1;
                    }
                    (None, Some(t)) if t <= end => {
                        now = now.max(t);
                        let before = outs.len();
                        drain(&mut jb, now, &mut outs);
                        assert!(outs.len() > before || jb.poll_timeout() != Some(t));
                    }
                    (None, _) => break,
                }
            },
            Polling::Tick(_) | Polling::RandomTick => {
                while now <= end {
                    while let Some(&event) = events.get(next_event).filter(|e| e.0 <= now) {
                        push(&mut jb, event);
                        next_event += 1;
                    }
                    drain(&mut jb, now, &mut outs);
                    now += match s.polling {
                        Polling::Tick(tick) => tick,
                        _ => ms(1 + rng.below(20)),
                    };
                }
            }
        }
        let stats = jb.stats();

        // (c) Accounting, per sequence number.
        let by_ts: HashMap<u32, usize> = sent.iter().enumerate().map(|(i, p)| (p.ts, i)).collect();
        let mut kinds: Vec<Vec<bool>> = vec![Vec::new(); sent.len()]; // frame?, in order
        let mut spurt_of = Vec::with_capacity(outs.len());
        let mut silence = vec![0usize; spurt + 1];
        let mut last_spurt = 0;
        for out in &outs {
            match by_ts.get(&out.timestamp) {
                Some(&i) => {
                    if out.frame {
                        assert_eq!(out.sequence, Some(sent[i].seq));
                        assert!(!sent[i].lost, "played a lost packet");
                    }
                    kinds[i].push(out.frame);
                    last_spurt = sent[i].spurt;
                }
                None => {
                    // Concealment of the silence after a talk spurt.
                    assert!(!out.frame);
                    silence[last_spurt] += 1;
                }
            }
            spurt_of.push(last_spurt);
        }
        let late = |i: usize| results[i].contains(&Err(Rejected::Late));
        let mut zero = 0;
        let mut stretches = 0;
        for (i, kinds) in kinds.iter().enumerate() {
            assert!(
                results[i].iter().filter(|r| r.is_ok()).count() <= 1,
                "accepted twice"
            );
            match kinds[..] {
                [] => {
                    // The head of a talk spurt lost or late is not concealed (no timeline
                    // yet); anything else missing was dropped by a shrink.
                    let head = sent[..=i]
                        .iter()
                        .enumerate()
                        .rev()
                        .take_while(|(_, p)| p.spurt == sent[i].spurt)
                        .all(|(j, p)| p.lost || late(j));
                    if !head {
                        zero += 1;
                    }
                }
                [false] => assert!(sent[i].lost || late(i), "concealed packet {i} arrived"),
                [.., true] => {
                    // Concealments before a frame of the same timestamp are stretches.
                    assert!(!late(i));
                    assert!(kinds[..kinds.len() - 1].iter().all(|&frame| !frame));
                    stretches += kinds.len() - 1;
                }
                _ => panic!("packet {i} output as {kinds:?}"),
            }
        }
        assert_eq!(
            zero as u64, stats.shrinks,
            "frames missing without a shrink"
        );
        assert_eq!(
            stretches as u64, stats.stretches,
            "concealments without a stretch"
        );
        let network_lost = sent.iter().filter(|p| p.lost).count();
        // Losses before the first packet that arrived are unknown, and losses after the last
        // one are never confirmed.
        let first_arrived = (0..sent.len()).find(|&i| !sent[i].lost).unwrap();
        let last_arrived = (0..sent.len()).rev().find(|&i| !sent[i].lost).unwrap();
        let confirmed = sent[first_arrived..last_arrived]
            .iter()
            .filter(|p| p.lost)
            .count();
        assert_eq!(stats.lost, confirmed as u64, "{stats:?}");
        for (spurt, &count) in silence.iter().enumerate() {
            assert!(s.talk_spurts || spurt == silence.len() - 1 || count == 0);
            assert!(count <= 10, "hangover too long");
        }
        assert_eq!(
            stats.concealed as usize,
            outs.iter().filter(|o| !o.frame).count()
        );
        assert!(stats.played + stats.concealed == outs.len() as u64);

        // (d) Continuity within talk spurts, no overlap across.
        for (k, pair) in outs.windows(2).enumerate() {
            let end = pair[0].playout + Duration::from_nanos(u64::from(pair[0].samples) * 125_000);
            if spurt_of[k] == spurt_of[k + 1] {
                assert_eq!(pair[1].playout, end, "{}: discontinuity at {k}", s.name);
            } else {
                assert!(pair[1].playout >= end, "{}: overlap at {k}", s.name);
            }
        }

        // (a) Added delay, (b) late rate after convergence.
        let delays: Vec<f64> = outs
            .iter()
            .filter(|o| o.frame)
            .map(|o| {
                let p = &sent[by_ts[&o.timestamp]];
                (o.playout - p.at - BASE).as_secs_f64() * 1000.0
            })
            .collect();
        let settled = |i: usize| sent[i].at >= origin + WARMUP_TIME && !sent[i].lost;
        let arrived = (0..sent.len()).filter(|&i| settled(i)).count();
        let late_settled = (0..sent.len())
            .filter(|&i| settled(i) && late(i) && !kinds[i].contains(&true))
            .count();
        Report {
            name: s.name,
            mean_delay_ms: delays.iter().sum::<f64>() / delays.len() as f64,
            max_delay_ms: delays.iter().copied().fold(0.0, f64::max),
            late_rate: late_settled as f64 / arrived as f64,
            network_lost,
            max_buffered,
            final_target_ms: stats.target_delay.as_millis(),
            stats,
        }
    }
}
