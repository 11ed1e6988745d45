//! DTMF: RFC 4733 telephone-events over RTP, and the SIP INFO bodies some phones use instead.
//!
//! - [`Digit`] is one DTMF event of RFC 4733 §3.2 (codes 0-15 and flash, 16).
//! - [`TelephoneEvent`] is the 4-byte `telephone-event` payload (§2.3), read and written.
//! - [`DtmfReceiver`] turns one incoming stream's event packets into exactly one
//!   [`DtmfEvent::Begin`] and one [`DtmfEvent::End`] per key press, whatever the network did
//!   to the packets: lost first or last packets, the repeated end packets, duplicates,
//!   reordering, missing marker bits, events split into segments.
//! - [`DtmfSender`] produces the packet sequence for queued digits (§2.5.1); the caller, which
//!   owns the outgoing SSRC, sequence numbers and timestamps, builds the RTP headers.
//! - [`DtmfInfo`] parses and prints the `application/dtmf-relay` and `application/dtmf`
//!   bodies of SIP INFO requests.
//!
//! Everything is sans-IO: time comes in as `now`, deadlines come out of `poll_timeout`, and
//! neither the receiver nor the sender allocates.

use std::fmt;
use std::time::{Duration, Instant};

use crate::rtp::RtpHeader;

/// Length of one telephone-event block (RFC 4733 §2.3).
pub const PAYLOAD_LEN: usize = 4;
/// The largest value of the duration field; longer events are sent in segments (RFC 4733
/// §2.5.1.3).
pub const MAX_SEGMENT: u16 = u16::MAX;
/// The clock rate of `telephone-event` unless the SDP's `rtpmap` says otherwise.
pub const DEFAULT_CLOCK_RATE: u32 = 8000;
/// How long a receiver waits for the next packet of an event before it ends the event itself.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a sender refreshes an event (RFC 4733 §2.5.1.2 recommends 50 ms).
pub const DEFAULT_PACKET_INTERVAL: Duration = Duration::from_millis(50);
/// Silence a sender keeps between two digits.
pub const DEFAULT_MIN_GAP: Duration = Duration::from_millis(50);
/// How many times the final packet of an event is sent (RFC 4733 §2.5.1.4).
pub const END_REPEATS: u8 = 3;
/// Most digits a [`DtmfSender`] queues.
pub const SEND_QUEUE_CAPACITY: usize = 32;
/// Shortest tone a sender plays; shorter requests are lengthened (ITU-T Q.24 receivers need
/// about 40 ms).
pub const MIN_TONE: Duration = Duration::from_millis(40);
/// Longest tone a sender plays; longer requests (say, a hostile SIP INFO `Duration`) are cut.
pub const MAX_TONE: Duration = Duration::from_secs(60);

/// Why DTMF input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// A telephone-event payload shorter than 4 bytes.
    #[error("telephone-event payload shorter than 4 bytes")]
    Truncated,
    /// The output buffer cannot hold a telephone-event payload.
    #[error("buffer too small for a telephone-event payload")]
    BufferTooSmall,
    /// A character that is not a DTMF digit.
    #[error("not a DTMF digit: {0:?}")]
    NotADigit(char),
    /// The sender already holds [`SEND_QUEUE_CAPACITY`] digits.
    #[error("DTMF send queue full")]
    QueueFull,
    /// A SIP INFO DTMF body without a digit.
    #[error("DTMF body without a Signal")]
    MissingSignal,
    /// A `Signal` value (or `application/dtmf` body) that is not a DTMF event.
    #[error("bad DTMF Signal value")]
    InvalidSignal,
    /// A `Duration` value that is not a number of milliseconds.
    #[error("bad DTMF Duration value")]
    InvalidDuration,
    /// The same key twice in one body.
    #[error("repeated key in a DTMF body")]
    RepeatedKey,
    /// A non-empty line without `=` in an `application/dtmf-relay` body.
    #[error("malformed line in a DTMF body")]
    MalformedLine,
    /// A content type other than `application/dtmf-relay` or `application/dtmf`.
    #[error("not a DTMF content type")]
    UnsupportedContentType,
}

/// A DTMF event (RFC 4733 §3.2): the sixteen keys of a telephone keypad and hook flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Digit {
    /// `0` (event code 0).
    Zero = 0,
    /// `1`.
    One = 1,
    /// `2`.
    Two = 2,
    /// `3`.
    Three = 3,
    /// `4`.
    Four = 4,
    /// `5`.
    Five = 5,
    /// `6`.
    Six = 6,
    /// `7`.
    Seven = 7,
    /// `8`.
    Eight = 8,
    /// `9`.
    Nine = 9,
    /// `*` (event code 10).
    Star = 10,
    /// `#` (event code 11).
    Pound = 11,
    /// `A` (event code 12).
    A = 12,
    /// `B` (event code 13).
    B = 13,
    /// `C` (event code 14).
    C = 14,
    /// `D` (event code 15).
    D = 15,
    /// Hook flash (event code 16), written `!` as Asterisk and SIP INFO senders do.
    Flash = 16,
}

impl Digit {
    /// Every event, indexed by its code.
    pub const ALL: [Self; 17] = [
        Self::Zero,
        Self::One,
        Self::Two,
        Self::Three,
        Self::Four,
        Self::Five,
        Self::Six,
        Self::Seven,
        Self::Eight,
        Self::Nine,
        Self::Star,
        Self::Pound,
        Self::A,
        Self::B,
        Self::C,
        Self::D,
        Self::Flash,
    ];

    const CHARS: [char; 17] = [
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D', '!',
    ];

    /// The event with RFC 4733 §3.2 code `code`; other codes (tones of RFC 4734, …) are not
    /// DTMF.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The RFC 4733 §3.2 event code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The digit written `c`: `0`-`9`, `*`, `#`, `A`-`D` (either case) and `!` for flash.
    pub fn from_char(c: char) -> Option<Self> {
        let upper = c.to_ascii_uppercase();
        Self::CHARS
            .iter()
            .position(|&known| known == upper)
            .and_then(|code| Self::ALL.get(code).copied())
    }

    /// The character for this digit (`!` for flash).
    pub fn as_char(self) -> char {
        // Every discriminant is below 17, the length of CHARS.
        Self::CHARS[usize::from(self.code())]
    }
}

impl TryFrom<char> for Digit {
    type Error = DtmfError;

    fn try_from(c: char) -> Result<Self, DtmfError> {
        Self::from_char(c).ok_or(DtmfError::NotADigit(c))
    }
}

impl From<Digit> for char {
    fn from(digit: Digit) -> Self {
        digit.as_char()
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// One telephone-event block (RFC 4733 §2.3):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     event     |E|R| volume    |          duration             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (§2.3.1); see [`Digit::from_code`].
    pub event: u8,
    /// E bit: the final packet of the event (§2.3.2).
    pub end: bool,
    /// Power level in -dBm0, 0-63 (§2.3.4); only the low 6 bits are written.
    pub volume: u8,
    /// How long the event (or its current segment) has lasted, in RTP timestamp units
    /// (§2.3.5).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first block of a telephone-event payload. Later blocks (several events in
    /// one packet, §2.5.1.5) are ignored, as most implementations do. The R bit is ignored
    /// (§2.3.3).
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        let Some(&[event, flags, high, low]) = payload.first_chunk::<PAYLOAD_LEN>() else {
            return Err(DtmfError::Truncated);
        };
        Ok(Self {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([high, low]),
        })
    }

    /// The payload bytes, with the R bit clear (§2.3.3).
    pub fn to_bytes(&self) -> [u8; PAYLOAD_LEN] {
        let [high, low] = self.duration.to_be_bytes();
        let flags = (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3f);
        [self.event, flags, high, low]
    }

    /// Writes the payload at the start of `buffer`; returns its length.
    pub fn write(&self, buffer: &mut [u8]) -> Result<usize, DtmfError> {
        let out = buffer
            .get_mut(..PAYLOAD_LEN)
            .ok_or(DtmfError::BufferTooSmall)?;
        out.copy_from_slice(&self.to_bytes());
        Ok(PAYLOAD_LEN)
    }

    /// The DTMF digit, if the event is one.
    pub fn digit(&self) -> Option<Digit> {
        Digit::from_code(self.event)
    }
}

/// Why a [`DtmfEvent::End`] was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndCause {
    /// A packet with the E bit arrived.
    EndPacket,
    /// No packet arrived for the receiver's timeout: the end packets were lost.
    Timeout,
    /// A new event started before this one ended (or the source changed).
    Superseded,
}

/// What a [`DtmfReceiver`] reports: each key press is one `Begin` followed by one `End`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtmfEvent {
    /// A key was pressed.
    Begin {
        /// The key.
        digit: Digit,
        /// RTP timestamp of the event's start (RFC 4733 §2.2.1).
        timestamp: u32,
    },
    /// The key was released.
    End {
        /// The key.
        digit: Digit,
        /// RTP timestamp of the event's start, as in its `Begin`.
        timestamp: u32,
        /// Length of the event in RTP timestamp units (all segments together); for an event
        /// whose end packets were lost, the last duration received.
        samples: u32,
        /// `samples` at the stream's clock rate.
        duration: Duration,
        /// Why the event ended.
        cause: EndCause,
    },
}

impl DtmfEvent {
    /// The key.
    pub fn digit(&self) -> Digit {
        match *self {
            Self::Begin { digit, .. } | Self::End { digit, .. } => digit,
        }
    }
}

/// Counters of a [`DtmfReceiver`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DtmfReceiverStats {
    /// Telephone-event packets of a DTMF event accepted for processing.
    pub packets: u64,
    /// Packets too short to hold an event.
    pub malformed: u64,
    /// Packets with event codes that are not DTMF (RFC 4734 tones and the like).
    pub unsupported: u64,
    /// Late packets of an event already superseded.
    pub stale: u64,
    /// Events dropped because [`DtmfReceiver::poll_event`] was not called.
    pub dropped_events: u64,
}

/// A fixed-capacity FIFO: no allocation.
#[derive(Clone, Debug)]
struct Ring<T, const N: usize> {
    slots: [Option<T>; N],
    head: usize,
    len: usize,
}

impl<T: Copy, const N: usize> Ring<T, N> {
    fn new() -> Self {
        Self {
            slots: [None; N],
            head: 0,
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == N
    }

    fn push(&mut self, item: T) -> Result<(), T> {
        if self.is_full() {
            return Err(item);
        }
        self.slots[(self.head + self.len) % N] = Some(item);
        self.len += 1;
        Ok(())
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let item = self.slots[self.head].take();
        self.head = (self.head + 1) % N;
        self.len -= 1;
        item
    }

    fn front(&self) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        self.slots[self.head].as_ref()
    }

    fn clear(&mut self) {
        while self.pop().is_some() {}
    }
}

/// The event a receiver is tracking (in progress, or ended and kept to recognise its
/// repeated end packets).
#[derive(Clone, Copy, Debug)]
struct Tracked {
    ssrc: u32,
    digit: Digit,
    /// Timestamp of the first segment: the event's start.
    start: u32,
    /// Timestamp of the current segment (§2.5.2.3).
    segment: u32,
    /// Length of the earlier segments.
    base: u32,
    /// Longest duration seen in the current segment (updates may arrive reordered).
    seen: u16,
    ended: bool,
    last_packet: Instant,
}

impl Tracked {
    fn samples(&self) -> u32 {
        self.base.saturating_add(u32::from(self.seen))
    }
}

/// Turns one incoming stream's telephone-event packets into key presses (RFC 4733 §2.5.2).
///
/// A new event is recognised by a new RTP timestamp (§2.2.1), not by the marker bit, which
/// is lost with the first packet or left out by some senders. Packets with the current
/// timestamp only update the duration, so the repeated end packets (§2.5.1.4) and
/// duplicates report nothing; packets older than the current event are stale. A segment of
/// a long event (§2.5.1.3, §2.5.2.3) continues the event instead of starting another. An
/// event whose end packets are all lost ends [`DEFAULT_TIMEOUT`] after its last packet
/// (see [`Self::poll_timeout`]).
///
/// One packet can complete several events (the previous event ends, a new one begins and,
/// if only its end packet arrived, ends), so after [`Self::receive`] and
/// [`Self::handle_timeout`] call [`Self::poll_event`] until it returns `None`.
#[derive(Clone, Debug)]
pub struct DtmfReceiver {
    payload_type: u8,
    clock_rate: u32,
    timeout: Duration,
    current: Option<Tracked>,
    /// (SSRC, timestamp, digit) of the event before the current one, to drop its late packets
    /// when a broken sender reuses the timestamp.
    previous: Option<(u32, u32, Digit)>,
    events: Ring<DtmfEvent, 8>,
    stats: DtmfReceiverStats,
}

impl DtmfReceiver {
    /// A receiver for telephone-events with RTP payload type `payload_type` at 8000 Hz.
    pub fn new(payload_type: u8) -> Self {
        Self {
            payload_type: payload_type & 0x7f,
            clock_rate: DEFAULT_CLOCK_RATE,
            timeout: DEFAULT_TIMEOUT,
            current: None,
            previous: None,
            events: Ring::new(),
            stats: DtmfReceiverStats::default(),
        }
    }

    /// Sets the clock rate of the `telephone-event` format from the SDP (48000 next to Opus).
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.clock_rate = clock_rate.max(1);
    }

    /// Sets the payload type (after a re-negotiation).
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type & 0x7f;
    }

    /// Sets how long an event may go without packets before it is ended (at most 60 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.min(MAX_TONE);
    }

    /// The payload type this receiver handles.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The counters.
    pub fn stats(&self) -> DtmfReceiverStats {
        self.stats
    }

    /// Handles one RTP packet of the stream. `payload` is the packet's payload (after the
    /// header, without padding); packets of other payload types are ignored. Returns the
    /// oldest pending event; call [`Self::poll_event`] for the others.
    pub fn receive(
        &mut self,
        now: Instant,
        header: &RtpHeader,
        payload: &[u8],
    ) -> Option<DtmfEvent> {
        if header.payload_type == self.payload_type {
            self.handle_packet(now, header, payload);
        }
        self.events.pop()
    }

    fn handle_packet(&mut self, now: Instant, header: &RtpHeader, payload: &[u8]) {
        let Ok(event) = TelephoneEvent::parse(payload) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(digit) = event.digit() else {
            self.stats.unsupported += 1;
            return;
        };
        self.stats.packets += 1;
        let Some(current) = self.current.filter(|current| current.ssrc == header.ssrc) else {
            // First event of the stream, or a new source.
            self.begin(now, header, digit, event);
            return;
        };
        // RFC 3550 serial arithmetic: how far this packet's timestamp is after the segment's.
        let ahead = header.timestamp.wrapping_sub(current.segment) as i32;
        if ahead == 0 && digit == current.digit {
            self.update(now, event);
        } else if ahead == 0 {
            // Same timestamp, another event: a sender that does not advance timestamps.
            if self.previous == Some((header.ssrc, header.timestamp, digit)) {
                self.stats.stale += 1;
            } else {
                self.begin(now, header, digit, event);
            }
        } else if ahead < 0 && i64::from(ahead) > -2 * i64::from(self.clock_rate) {
            // Older than the current event (or segment), within a plausible reordering
            // window; a larger jump back is a timestamp reset, hence a new event.
            self.stats.stale += 1;
        } else if ahead > 0 && self.continues(&current, header, digit, ahead.unsigned_abs()) {
            self.next_segment(now, event, header.timestamp, ahead.unsigned_abs());
        } else {
            self.begin(now, header, digit, event);
        }
    }

    /// Whether a packet with a later timestamp is the next segment of the current long event
    /// (§2.5.1.3): the same key, no marker (it is not a new event), the current segment near
    /// the duration field's limit, and the new timestamp where that segment ended.
    fn continues(&self, current: &Tracked, header: &RtpHeader, digit: Digit, ahead: u32) -> bool {
        let seen = u32::from(current.seen);
        !header.marker
            && !current.ended
            && digit == current.digit
            && seen > u32::from(MAX_SEGMENT / 2)
            && ahead >= seen
            && ahead <= seen + self.clock_rate / 5
    }

    fn begin(&mut self, now: Instant, header: &RtpHeader, digit: Digit, event: TelephoneEvent) {
        if let Some(old) = self.current {
            if !old.ended {
                self.end(&old, EndCause::Superseded);
            }
            self.previous = Some((old.ssrc, old.segment, old.digit));
        }
        let tracked = Tracked {
            ssrc: header.ssrc,
            digit,
            start: header.timestamp,
            segment: header.timestamp,
            base: 0,
            seen: event.duration,
            ended: event.end,
            last_packet: now,
        };
        self.current = Some(tracked);
        self.emit(DtmfEvent::Begin {
            digit,
            timestamp: header.timestamp,
        });
        if event.end {
            self.end(&tracked, EndCause::EndPacket);
        }
    }

    fn update(&mut self, now: Instant, event: TelephoneEvent) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if current.ended {
            // A repeated end packet (§2.5.1.4), a duplicate, or a late update after a timeout.
            return;
        }
        current.last_packet = now;
        current.seen = current.seen.max(event.duration);
        if event.end {
            current.ended = true;
            let ended = *current;
            self.end(&ended, EndCause::EndPacket);
        }
    }

    fn next_segment(&mut self, now: Instant, event: TelephoneEvent, timestamp: u32, ahead: u32) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        current.base = current.base.saturating_add(ahead);
        current.segment = timestamp;
        current.seen = event.duration;
        current.last_packet = now;
        if event.end {
            current.ended = true;
            let ended = *current;
            self.end(&ended, EndCause::EndPacket);
        }
    }

    fn end(&mut self, tracked: &Tracked, cause: EndCause) {
        let samples = tracked.samples();
        self.emit(DtmfEvent::End {
            digit: tracked.digit,
            timestamp: tracked.start,
            samples,
            duration: to_duration(u64::from(samples), self.clock_rate),
            cause,
        });
    }

    fn emit(&mut self, event: DtmfEvent) {
        if let Err(event) = self.events.push(event) {
            // The caller does not drain: keep the newest.
            self.events.pop();
            self.stats.dropped_events += 1;
            let _ = self.events.push(event);
        }
    }

    /// The next pending event.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.events.pop()
    }

    /// When [`Self::handle_timeout`] should run: the timeout after the last packet of an event
    /// that has not ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let current = self.current.filter(|current| !current.ended)?;
        Some(current.last_packet + self.timeout)
    }

    /// Ends an event whose packets stopped (its end packets were lost), reporting the last
    /// duration received. Returns the oldest pending event, like [`Self::receive`].
    pub fn handle_timeout(&mut self, now: Instant) -> Option<DtmfEvent> {
        if self.poll_timeout().is_some_and(|deadline| deadline <= now)
            && let Some(current) = self.current.as_mut()
        {
            current.ended = true;
            let ended = *current;
            self.end(&ended, EndCause::Timeout);
        }
        self.events.pop()
    }
}

/// One telephone-event packet for the caller to send.
///
/// The caller owns the outgoing stream's SSRC, sequence numbers and timestamps: it gives the
/// packet the next sequence number (the repeated end packets too), the `telephone-event`
/// payload type, the marker bit, and the RTP timestamp [`Self::timestamp`] computes from the
/// timestamp of `event_start` on its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPacket {
    /// The key.
    pub digit: Digit,
    /// The RTP marker bit: set on the first packet of an event (RFC 4733 §2.2.2).
    pub marker: bool,
    /// Whether this is (a copy of) the final packet, E bit set (§2.5.1.4).
    pub end: bool,
    /// When the event started; every packet of the event carries the RTP timestamp of this
    /// instant (§2.2.1), plus `timestamp_offset`.
    pub event_start: Instant,
    /// For events longer than the duration field holds, where this packet's segment starts,
    /// in RTP timestamp units after `event_start` (§2.5.1.3); 0 otherwise.
    pub timestamp_offset: u32,
    /// The telephone-event payload.
    pub payload: [u8; PAYLOAD_LEN],
}

impl EventPacket {
    /// The packet's RTP timestamp, given the timestamp the caller's stream has at
    /// `event_start`.
    pub fn timestamp(&self, event_start_timestamp: u32) -> u32 {
        event_start_timestamp.wrapping_add(self.timestamp_offset)
    }
}

#[derive(Clone, Copy, Debug)]
struct Queued {
    digit: Digit,
    length: Duration,
    volume: u8,
    not_before: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Sending updates; the next is number `next` (number 0 carries the marker).
    Updates { next: u32 },
    /// Sending the final packet; `sent` copies are out.
    Ending { sent: u8 },
}

/// The digit being sent.
#[derive(Clone, Copy, Debug)]
struct Active {
    digit: Digit,
    volume: u8,
    start: Instant,
    length: Duration,
    /// `length` in timestamp units, at least 1.
    total: u32,
    interval: Duration,
    /// `interval` in timestamp units, 1..=0xFFFF.
    step: u32,
    /// Segment length: the largest multiple of `step` the duration field holds, so segment
    /// boundaries fall on updates.
    segment: u32,
    /// Between the copies of the final packet.
    spacing: Duration,
    gap: Duration,
    phase: Phase,
}

impl Active {
    fn due(&self) -> Instant {
        match self.phase {
            Phase::Updates { next } => self.start + self.interval.saturating_mul(next),
            Phase::Ending { sent } => {
                self.start + self.length + self.spacing.saturating_mul(u32::from(sent))
            }
        }
    }

    /// A packet reporting `elapsed` timestamp units of the event (1..=total).
    fn packet(&self, elapsed: u32, marker: bool, end: bool) -> EventPacket {
        let index = elapsed.saturating_sub(1) / self.segment;
        let offset = index * self.segment;
        let event = TelephoneEvent {
            event: self.digit.code(),
            end,
            volume: self.volume,
            // `elapsed - offset` is in 1..=segment, and segment <= 0xFFFF.
            duration: u16::try_from(elapsed - offset).unwrap_or(MAX_SEGMENT),
        };
        EventPacket {
            digit: self.digit,
            marker,
            end,
            event_start: self.start,
            timestamp_offset: offset,
            payload: event.to_bytes(),
        }
    }
}

/// Produces RFC 4733 event packets for queued digits (§2.5.1.2).
///
/// For each digit: a first packet with the marker bit, then an update every packet interval
/// (50 ms by default) with a growing duration, all with the event's start timestamp; then the
/// final packet, E bit set, sent [`END_REPEATS`] times (§2.5.1.4), spread over the gap before
/// the next digit. An update reports the tone up to the next update (at most the whole
/// tone), so the last update already carries the full length should the final packets be
/// lost. Tones longer than the duration field holds are sent in segments (§2.5.1.3).
///
/// Drive it like every sans-IO core: after [`Self::start`] and at each
/// [`Self::poll_timeout`], call [`Self::poll_transmit`] until it returns `None`.
#[derive(Clone, Debug)]
pub struct DtmfSender {
    clock_rate: u32,
    interval: Duration,
    gap: Duration,
    queue: Ring<Queued, SEND_QUEUE_CAPACITY>,
    active: Option<Active>,
    /// The next digit starts no earlier than this (the previous tone's end plus the gap).
    earliest: Option<Instant>,
}

impl Default for DtmfSender {
    fn default() -> Self {
        Self::new()
    }
}

impl DtmfSender {
    /// A sender at 8000 Hz with 50 ms updates and 50 ms between digits.
    pub fn new() -> Self {
        Self {
            clock_rate: DEFAULT_CLOCK_RATE,
            interval: DEFAULT_PACKET_INTERVAL,
            gap: DEFAULT_MIN_GAP,
            queue: Ring::new(),
            active: None,
            earliest: None,
        }
    }

    /// Sets the clock rate of the negotiated `telephone-event` format (48000 next to Opus);
    /// applies from the next digit.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.clock_rate = clock_rate.max(1);
    }

    /// Sets the time between updates (10 ms to 1 s); applies from the next digit.
    pub fn set_packet_interval(&mut self, interval: Duration) {
        self.interval = interval.clamp(Duration::from_millis(10), Duration::from_secs(1));
    }

    /// Sets the silence between two digits (at most 10 s); applies from the next digit.
    pub fn set_min_gap(&mut self, gap: Duration) {
        self.gap = gap.min(Duration::from_secs(10));
    }

    /// Queues `digit` as a tone of `duration` (clamped to [`MIN_TONE`]..=[`MAX_TONE`]) at
    /// `volume` -dBm0 (clamped to 63). It starts at `now` if nothing else is being sent, or
    /// after the digits before it and the gap.
    pub fn start(
        &mut self,
        now: Instant,
        digit: Digit,
        duration: Duration,
        volume: u8,
    ) -> Result<(), DtmfError> {
        self.queue
            .push(Queued {
                digit,
                length: duration.clamp(MIN_TONE, MAX_TONE),
                volume: volume.min(63),
                not_before: now,
            })
            .map_err(|_| DtmfError::QueueFull)
    }

    /// Queues every digit of `digits` (see [`Self::start`]): all of them, or none if one is
    /// not a digit or the queue cannot take them all.
    pub fn start_digits(
        &mut self,
        now: Instant,
        digits: &str,
        duration: Duration,
        volume: u8,
    ) -> Result<(), DtmfError> {
        let mut count = 0;
        for c in digits.chars() {
            Digit::try_from(c)?;
            count += 1;
        }
        if count > SEND_QUEUE_CAPACITY - self.queue.len {
            return Err(DtmfError::QueueFull);
        }
        for digit in digits.chars().filter_map(Digit::from_char) {
            self.start(now, digit, duration, volume)?;
        }
        Ok(())
    }

    /// Drops the digits not yet started; the one being sent finishes normally.
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// Whether nothing is being sent or queued.
    pub fn is_idle(&self) -> bool {
        self.active.is_none() && self.queue.len == 0
    }

    /// Digits queued and not yet started.
    pub fn queued(&self) -> usize {
        self.queue.len
    }

    /// When the next packet is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(active) = &self.active {
            return Some(active.due());
        }
        let next = self.queue.front()?;
        Some(
            self.earliest
                .map_or(next.not_before, |earliest| earliest.max(next.not_before)),
        )
    }

    /// The next packet to send, if one is due at `now`. A caller that polls late gets the
    /// current state, not every update it missed.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<EventPacket> {
        if self.active.is_none() {
            self.activate(now);
        }
        let active = self.active.as_mut()?;
        if active.due() > now {
            return None;
        }
        let packet = match active.phase {
            Phase::Updates { next } => {
                let elapsed = now.saturating_duration_since(active.start);
                if next > 0 && elapsed >= active.length {
                    // Polled after the tone ended: straight to the final packet.
                    active.phase = Phase::Ending { sent: 1 };
                    active.packet(active.total, false, true)
                } else {
                    let late = u32::try_from(elapsed.as_nanos() / active.interval.as_nanos())
                        .unwrap_or(u32::MAX);
                    let number = if next == 0 { 0 } else { next.max(late) };
                    let reported = number
                        .saturating_add(1)
                        .saturating_mul(active.step)
                        .min(active.total);
                    let following = number.saturating_add(1);
                    active.phase = if active.interval.saturating_mul(following) >= active.length {
                        Phase::Ending { sent: 0 }
                    } else {
                        Phase::Updates { next: following }
                    };
                    active.packet(reported, number == 0, false)
                }
            }
            Phase::Ending { sent } => {
                active.phase = Phase::Ending { sent: sent + 1 };
                active.packet(active.total, false, true)
            }
        };
        if active.phase == (Phase::Ending { sent: END_REPEATS }) {
            self.earliest = Some(active.start + active.length + active.gap);
            self.active = None;
        }
        Some(packet)
    }

    fn activate(&mut self, now: Instant) {
        let Some(next) = self.queue.front() else {
            return;
        };
        let ready = self
            .earliest
            .map_or(next.not_before, |earliest| earliest.max(next.not_before));
        if ready > now {
            return;
        }
        let Some(next) = self.queue.pop() else {
            return;
        };
        let step = u32::try_from(to_ticks(self.interval, self.clock_rate))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::from(MAX_SEGMENT));
        self.active = Some(Active {
            digit: next.digit,
            volume: next.volume,
            start: now,
            length: next.length,
            total: u32::try_from(to_ticks(next.length, self.clock_rate))
                .unwrap_or(u32::MAX)
                .max(1),
            interval: self.interval,
            step,
            segment: u32::from(MAX_SEGMENT) / step * step,
            spacing: self.interval.min(self.gap / u32::from(END_REPEATS)),
            gap: self.gap,
            phase: Phase::Updates { next: 0 },
        });
    }
}

/// `duration` in units of a `clock_rate` Hz clock (rounded down).
fn to_ticks(duration: Duration, clock_rate: u32) -> u64 {
    let ticks = duration.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// `ticks` of a `clock_rate` Hz clock as a duration.
fn to_duration(ticks: u64, clock_rate: u32) -> Duration {
    let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(clock_rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A DTMF digit carried in a SIP INFO request instead of RTP.
///
/// Two body formats exist, neither standardised:
/// - `application/dtmf-relay` (Cisco; sent by SIP.js, JsSIP, Asterisk, most phones): lines of
///   `key=value`, `Signal=5` and `Duration=160` (milliseconds). Keys are case-insensitive,
///   whitespace around keys and values is tolerated, lines end in CRLF or LF, unknown keys
///   are ignored. `Signal` is a digit character or an RFC 4733 event code (`10` is `*`,
///   `16` is flash).
/// - `application/dtmf`: the body is the digit alone.
///
/// [`fmt::Display`] writes the `application/dtmf-relay` body; for `application/dtmf` send
/// `digit.as_char()`.
///
/// ```
/// use std::time::Duration;
/// use switchboard_media::dtmf::{Digit, DtmfInfo};
///
/// let info = DtmfInfo::parse_relay(b"Signal=5\r\nDuration=160\r\n").unwrap();
/// assert_eq!(info, DtmfInfo { digit: Digit::Five, duration: Duration::from_millis(160) });
/// assert_eq!(info.to_string(), "Signal=5\r\nDuration=160\r\n");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfInfo {
    /// The key.
    pub digit: Digit,
    /// How long it was pressed.
    pub duration: Duration,
}

/// Content type of the Cisco `Signal=`/`Duration=` body.
pub const CONTENT_TYPE_RELAY: &str = "application/dtmf-relay";
/// Content type of the digit-only body.
pub const CONTENT_TYPE_DTMF: &str = "application/dtmf";

impl DtmfInfo {
    /// The duration assumed when a body has none (JsSIP's and SIP.js's default).
    pub const DEFAULT_DURATION: Duration = Duration::from_millis(100);

    /// Parses the body of a SIP INFO with Content-Type `content_type` (parameters ignored).
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Self, DtmfError> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case(CONTENT_TYPE_RELAY) {
            Self::parse_relay(body)
        } else if media_type.eq_ignore_ascii_case(CONTENT_TYPE_DTMF) {
            Self::parse_dtmf(body)
        } else {
            Err(DtmfError::UnsupportedContentType)
        }
    }

    /// Parses an `application/dtmf-relay` body.
    pub fn parse_relay(body: &[u8]) -> Result<Self, DtmfError> {
        let mut digit = None;
        let mut duration = None;
        for line in body.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let Some(equals) = line.iter().position(|&b| b == b'=') else {
                return Err(DtmfError::MalformedLine);
            };
            let (key, value) = (line[..equals].trim_ascii(), line[equals + 1..].trim_ascii());
            if key.eq_ignore_ascii_case(b"signal") {
                if digit.replace(parse_signal(value)?).is_some() {
                    return Err(DtmfError::RepeatedKey);
                }
            } else if key.eq_ignore_ascii_case(b"duration")
                && duration.replace(parse_millis(value)?).is_some()
            {
                return Err(DtmfError::RepeatedKey);
            }
        }
        Ok(Self {
            digit: digit.ok_or(DtmfError::MissingSignal)?,
            duration: duration.unwrap_or(Self::DEFAULT_DURATION),
        })
    }

    /// Parses an `application/dtmf` body: the digit alone, whitespace around it tolerated.
    pub fn parse_dtmf(body: &[u8]) -> Result<Self, DtmfError> {
        let value = body.trim_ascii();
        if value.is_empty() {
            return Err(DtmfError::MissingSignal);
        }
        Ok(Self {
            digit: parse_signal(value)?,
            duration: Self::DEFAULT_DURATION,
        })
    }
}

impl fmt::Display for DtmfInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signal={}\r\nDuration={}\r\n",
            self.digit.as_char(),
            self.duration.as_millis()
        )
    }
}

/// A `Signal` value: one digit character, or an RFC 4733 event code of up to two digits.
fn parse_signal(value: &[u8]) -> Result<Digit, DtmfError> {
    match value {
        [c] => Digit::from_char(char::from(*c)).ok_or(DtmfError::InvalidSignal),
        [tens @ b'0'..=b'9', units @ b'0'..=b'9'] => {
            Digit::from_code((tens - b'0') * 10 + (units - b'0')).ok_or(DtmfError::InvalidSignal)
        }
        _ => Err(DtmfError::InvalidSignal),
    }
}

/// A `Duration` value: decimal milliseconds (up to nine digits, so no overflow).
fn parse_millis(value: &[u8]) -> Result<Duration, DtmfError> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return Err(DtmfError::InvalidDuration);
    }
    let millis = value
        .iter()
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use proptest::prelude::*;

    use super::*;

    const PT: u8 = 101;
    const SSRC: u32 = 0x1234_5678;
    const BASE_TS: u32 = 0xFFFF_0000; // wraps during the tests

    /// One packet on the wire.
    #[derive(Clone, Copy, Debug)]
    struct Sent {
        at: Instant,
        header: RtpHeader,
        payload: [u8; PAYLOAD_LEN],
    }

    /// Runs `sender` until idle, building RTP headers as a caller would.
    fn transmit(sender: &mut DtmfSender, origin: Instant, clock_rate: u32) -> Vec<Sent> {
        let mut sent = Vec::new();
        let mut sequence = 1000u16;
        let mut now = origin;
        for _ in 0..100_000 {
            while let Some(packet) = sender.poll_transmit(now) {
                let start =
                    BASE_TS.wrapping_add(to_ticks(packet.event_start - origin, clock_rate) as u32);
                sent.push(Sent {
                    at: now,
                    header: RtpHeader {
                        marker: packet.marker,
                        payload_type: PT,
                        sequence,
                        timestamp: packet.timestamp(start),
                        ssrc: SSRC,
                        payload_offset: 12,
                        payload_len: PAYLOAD_LEN,
                    },
                    payload: packet.payload,
                });
                sequence = sequence.wrapping_add(1);
            }
            match sender.poll_timeout() {
                Some(next) => {
                    assert!(next > now, "poll_timeout must move on after draining");
                    now = next;
                }
                None => return sent,
            }
        }
        panic!("sender never finished");
    }

    fn drain(receiver: &mut DtmfReceiver, first: Option<DtmfEvent>, out: &mut Vec<DtmfEvent>) {
        out.extend(first);
        while let Some(event) = receiver.poll_event() {
            out.push(event);
        }
    }

    /// Feeds `packets` in order (each at its `at`, timeouts in between), then lets every
    /// timeout fire.
    fn receive_all(receiver: &mut DtmfReceiver, packets: &[Sent]) -> Vec<DtmfEvent> {
        let mut events = Vec::new();
        for sent in packets {
            while let Some(deadline) = receiver.poll_timeout().filter(|&d| d <= sent.at) {
                let first = receiver.handle_timeout(deadline);
                drain(receiver, first, &mut events);
            }
            let first = receiver.receive(sent.at, &sent.header, &sent.payload);
            drain(receiver, first, &mut events);
        }
        while let Some(deadline) = receiver.poll_timeout() {
            let first = receiver.handle_timeout(deadline);
            drain(receiver, first, &mut events);
        }
        events
    }

    /// Checks that events alternate Begin/End for the same digit and returns each press's
    /// digit and length.
    fn presses(events: &[DtmfEvent]) -> Vec<(Digit, Duration, EndCause)> {
        assert_eq!(events.len() % 2, 0, "unbalanced: {events:?}");
        events
            .chunks(2)
            .map(|pair| match pair {
                [
                    DtmfEvent::Begin { digit, timestamp },
                    DtmfEvent::End {
                        digit: end_digit,
                        timestamp: end_timestamp,
                        duration,
                        cause,
                        ..
                    },
                ] => {
                    assert_eq!((digit, timestamp), (end_digit, end_timestamp));
                    (*digit, *duration, *cause)
                }
                other => panic!("not Begin then End: {other:?}"),
            })
            .collect()
    }

    fn send(digits: &str, length: Duration, clock_rate: u32) -> (Instant, Vec<Sent>) {
        let origin = Instant::now();
        let mut sender = DtmfSender::new();
        sender.set_clock_rate(clock_rate);
        sender.start_digits(origin, digits, length, 10).unwrap();
        let sent = transmit(&mut sender, origin, clock_rate);
        (origin, sent)
    }

    fn receiver(clock_rate: u32) -> DtmfReceiver {
        let mut receiver = DtmfReceiver::new(PT);
        receiver.set_clock_rate(clock_rate);
        receiver
    }

    fn event(sent: &Sent) -> TelephoneEvent {
        TelephoneEvent::parse(&sent.payload).unwrap()
    }

    #[test]
    fn digits_and_chars_round_trip() {
        for (code, digit) in Digit::ALL.iter().enumerate() {
            assert_eq!(usize::from(digit.code()), code);
            assert_eq!(Digit::from_code(digit.code()), Some(*digit));
            assert_eq!(Digit::from_char(digit.as_char()), Some(*digit));
            assert_eq!(Digit::try_from(char::from(*digit)), Ok(*digit));
        }
        let written: String = Digit::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(written, "0123456789*#ABCD!");
        assert_eq!(Digit::from_char('b'), Some(Digit::B));
        assert_eq!(Digit::from_code(17), None);
        assert_eq!(Digit::try_from('x'), Err(DtmfError::NotADigit('x')));
        assert_eq!(Digit::from_char('é'), None);
    }

    #[test]
    fn payload_round_trips_and_ignores_the_r_bit() {
        let event = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 0x1234,
        };
        assert_eq!(event.to_bytes(), [11, 0x8a, 0x12, 0x34]);
        let mut buffer = [0u8; 6];
        assert_eq!(event.write(&mut buffer), Ok(4));
        assert_eq!(TelephoneEvent::parse(&buffer), Ok(event));
        assert_eq!(event.digit(), Some(Digit::Pound));
        let with_r = [5, 0x40 | 7, 0, 160];
        let parsed = TelephoneEvent::parse(&with_r).unwrap();
        assert_eq!((parsed.end, parsed.volume), (false, 7));
        assert_eq!(parsed.to_bytes(), [5, 7, 0, 160], "R written as zero");
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), Err(DtmfError::Truncated));
        assert_eq!(event.write(&mut [0; 3]), Err(DtmfError::BufferTooSmall));
    }

    #[test]
    fn sender_follows_rfc_4733() {
        let (origin, sent) = send("5", Duration::from_millis(200), 8000);
        let durations: Vec<_> = sent.iter().map(|s| event(s).duration).collect();
        assert_eq!(durations, [400, 800, 1200, 1600, 1600, 1600, 1600]);
        let ends: Vec<_> = sent.iter().map(|s| event(s).end).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        let markers: Vec<_> = sent.iter().map(|s| s.header.marker).collect();
        assert_eq!(markers, [true, false, false, false, false, false, false]);
        assert!(sent.iter().all(|s| s.header.timestamp == BASE_TS));
        assert!(
            sent.iter()
                .all(|s| event(s).event == 5 && event(s).volume == 10)
        );
        let offsets: Vec<_> = sent.iter().map(|s| s.at - origin).collect();
        let ms = Duration::from_millis;
        assert_eq!(&offsets[..5], [ms(0), ms(50), ms(100), ms(150), ms(200)]);
        assert!(offsets[6] < ms(250), "end copies fit in the gap");
    }

    #[test]
    fn sender_spaces_digits_and_bounds_its_queue() {
        let (origin, sent) = send("12", Duration::from_millis(100), 8000);
        let second = sent.iter().find(|s| event(s).event == 2).unwrap();
        assert!(second.header.marker);
        assert_eq!(
            second.at - origin,
            Duration::from_millis(150),
            "100 ms + 50 ms gap"
        );
        assert_eq!(second.header.timestamp, BASE_TS.wrapping_add(1200));

        let now = Instant::now();
        let mut sender = DtmfSender::new();
        assert_eq!(
            sender.start_digits(now, "12x", Duration::from_millis(100), 10),
            Err(DtmfError::NotADigit('x'))
        );
        assert!(sender.is_idle(), "all or nothing");
        for _ in 0..SEND_QUEUE_CAPACITY {
            sender
                .start(now, Digit::Star, Duration::from_millis(100), 10)
                .unwrap();
        }
        assert_eq!(
            sender.start(now, Digit::Star, Duration::from_millis(100), 10),
            Err(DtmfError::QueueFull)
        );
        assert_eq!(sender.poll_timeout(), Some(now));
        assert!(sender.poll_transmit(now).is_some());
        assert_eq!(sender.queued(), SEND_QUEUE_CAPACITY - 1);
        sender.clear();
        assert_eq!(sender.queued(), 0);
        assert!(!sender.is_idle(), "the digit being sent finishes");
    }

    #[test]
    fn late_polls_skip_to_the_current_state() {
        let now = Instant::now();
        let mut sender = DtmfSender::new();
        sender
            .start(now, Digit::Nine, Duration::from_millis(300), 10)
            .unwrap();
        assert!(sender.poll_transmit(now).unwrap().marker);
        let late = sender
            .poll_transmit(now + Duration::from_millis(170))
            .unwrap();
        assert_eq!(TelephoneEvent::parse(&late.payload).unwrap().duration, 1600);
        let after = sender
            .poll_transmit(now + Duration::from_millis(400))
            .unwrap();
        assert!(after.end);
        assert_eq!(
            TelephoneEvent::parse(&after.payload).unwrap().duration,
            2400
        );
    }

    #[test]
    fn clean_stream_gives_one_begin_and_one_end_per_digit() {
        let (_, sent) = send("159#", Duration::from_millis(120), 8000);
        let mut receiver = receiver(8000);
        let events = receive_all(&mut receiver, &sent);
        let got = presses(&events);
        let digits: String = got.iter().map(|p| p.0.as_char()).collect();
        assert_eq!(digits, "159#");
        for (_, duration, cause) in got {
            assert_eq!(duration, Duration::from_millis(120));
            assert_eq!(cause, EndCause::EndPacket);
        }
        assert!(matches!(
            events[0],
            DtmfEvent::Begin {
                timestamp: BASE_TS,
                ..
            }
        ));
        assert_eq!(receiver.stats().packets, sent.len() as u64);
    }

    #[test]
    fn survives_loss_of_first_packets_and_missing_markers() {
        let (_, mut sent) = send("73", Duration::from_millis(200), 8000);
        sent.retain(|s| !s.header.marker); // first packets lost
        let events = receive_all(&mut receiver(8000), &sent);
        let got = presses(&events);
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            [Digit::Seven, Digit::Three]
        );
        assert!(got.iter().all(|p| p.1 == Duration::from_millis(200)));

        // A sender that never sets the marker bit.
        let (_, mut sent) = send("44", Duration::from_millis(100), 8000);
        for s in &mut sent {
            s.header.marker = false;
        }
        let got = presses(&receive_all(&mut receiver(8000), &sent));
        assert_eq!(got.len(), 2, "same key twice is two presses: {got:?}");
    }

    #[test]
    fn only_end_packets_still_make_a_press() {
        let (_, mut sent) = send("8", Duration::from_millis(100), 8000);
        sent.retain(|s| event(s).end);
        let got = presses(&receive_all(&mut receiver(8000), &sent));
        assert_eq!(
            got,
            [(
                Digit::Eight,
                Duration::from_millis(100),
                EndCause::EndPacket
            )]
        );
    }

    #[test]
    fn lost_end_packets_time_out_with_the_last_duration() {
        let (origin, all) = send("0", Duration::from_millis(150), 8000);
        let sent: Vec<_> = all.iter().filter(|s| !event(s).end).copied().collect();
        let mut receiver = receiver(8000);
        let mut events = Vec::new();
        for s in &sent {
            let first = receiver.receive(s.at, &s.header, &s.payload);
            drain(&mut receiver, first, &mut events);
        }
        let last = sent.last().unwrap().at;
        assert_eq!(receiver.poll_timeout(), Some(last + DEFAULT_TIMEOUT));
        assert_eq!(
            receiver.handle_timeout(last + Duration::from_millis(199)),
            None
        );
        let end = receiver.handle_timeout(origin + Duration::from_secs(1));
        assert_eq!(
            end,
            Some(DtmfEvent::End {
                digit: Digit::Zero,
                timestamp: BASE_TS,
                samples: 1200,
                duration: Duration::from_millis(150),
                cause: EndCause::Timeout,
            })
        );
        assert_eq!(receiver.poll_timeout(), None);
        // A late end packet after the timeout reports nothing more.
        let late = all.iter().find(|s| event(s).end).unwrap();
        let at = origin + Duration::from_secs(2);
        assert_eq!(receiver.receive(at, &late.header, &late.payload), None);
    }

    #[test]
    fn next_digit_before_the_end_supersedes() {
        let (_, mut sent) = send("12", Duration::from_millis(100), 8000);
        sent.retain(|s| !(event(s).end && event(s).event == 1));
        let mut receiver = receiver(8000);
        receiver.set_timeout(Duration::from_secs(5));
        let got = presses(&receive_all(&mut receiver, &sent));
        assert_eq!(
            got[0],
            (Digit::One, Duration::from_millis(100), EndCause::Superseded)
        );
        assert_eq!(got[1].0, Digit::Two);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn duplicates_and_reordering_report_once() {
        let (_, sent) = send("6*", Duration::from_millis(250), 8000);
        let mut mangled = Vec::new();
        for s in &sent {
            mangled.push(*s);
            mangled.push(*s); // every packet duplicated
        }
        // Reorder updates: swap the contents of the 3rd and 5th packets (times stay).
        let (a, b) = (mangled[2], mangled[4]);
        (mangled[2].header, mangled[2].payload) = (b.header, b.payload);
        (mangled[4].header, mangled[4].payload) = (a.header, a.payload);
        // A late duplicate of the first digit after the second began.
        let late_first = Sent {
            at: sent.last().unwrap().at,
            ..sent[1]
        };
        mangled.push(late_first);
        let mut receiver = receiver(8000);
        let got = presses(&receive_all(&mut receiver, &mangled));
        assert_eq!(
            got,
            [
                (Digit::Six, Duration::from_millis(250), EndCause::EndPacket),
                (Digit::Star, Duration::from_millis(250), EndCause::EndPacket),
            ]
        );
        assert_eq!(receiver.stats().stale, 1);
    }

    #[test]
    fn reordered_updates_keep_the_longest_duration() {
        // The last two updates swap places and the end packets are lost: the timeout still
        // reports the longest duration received.
        let (_, sent) = send("9", Duration::from_millis(200), 8000);
        let mut updates: Vec<_> = sent.iter().filter(|s| !event(s).end).copied().collect();
        let last = updates.len() - 1;
        let (a, b) = (updates[last - 1], updates[last]);
        (updates[last - 1].header, updates[last - 1].payload) = (b.header, b.payload);
        (updates[last].header, updates[last].payload) = (a.header, a.payload);
        let got = presses(&receive_all(&mut receiver(8000), &updates));
        assert_eq!(
            got,
            [(Digit::Nine, Duration::from_millis(200), EndCause::Timeout)]
        );
    }

    #[test]
    fn long_events_are_segmented_and_reported_once() {
        // 2 s at 48 kHz is 96000 units: more than the 16-bit duration field.
        let (_, sent) = send("#", Duration::from_secs(2), 48_000);
        let offsets: Vec<u32> = sent
            .iter()
            .map(|s| s.header.timestamp.wrapping_sub(BASE_TS))
            .collect();
        assert!(offsets.contains(&64_800), "a second segment");
        assert!(sent.iter().all(|s| event(s).duration <= 64_800));
        assert_eq!(sent.iter().filter(|s| s.header.marker).count(), 1);
        let got = presses(&receive_all(&mut receiver(48_000), &sent));
        assert_eq!(
            got,
            [(Digit::Pound, Duration::from_secs(2), EndCause::EndPacket)]
        );
        // Losing the last packets of the first segment changes nothing.
        let trimmed: Vec<_> = sent
            .iter()
            .filter(|s| {
                let event = event(s);
                s.header.timestamp != BASE_TS || event.duration < 62_000
            })
            .copied()
            .collect();
        let got = presses(&receive_all(&mut receiver(48_000), &trimmed));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, Duration::from_secs(2));
    }

    #[test]
    fn other_payload_types_sources_and_events() {
        let now = Instant::now();
        let mut receiver = receiver(8000);
        let mut header = RtpHeader {
            marker: true,
            payload_type: 0,
            sequence: 1,
            timestamp: 160,
            ssrc: 1,
            payload_offset: 12,
            payload_len: 4,
        };
        let press = TelephoneEvent {
            event: 3,
            end: false,
            volume: 10,
            duration: 160,
        }
        .to_bytes();
        assert_eq!(receiver.receive(now, &header, &press), None, "audio PT");
        header.payload_type = PT;
        assert_eq!(receiver.receive(now, &header, &[3, 0]), None);
        let tone = [40, 0, 0, 160]; // RFC 4734 tone, not DTMF
        assert_eq!(receiver.receive(now, &header, &tone), None);
        assert_eq!(
            receiver.receive(now, &header, &press),
            Some(DtmfEvent::Begin {
                digit: Digit::Three,
                timestamp: 160
            })
        );
        // Another SSRC (a transfer): the event in progress ends, the new one begins.
        header.ssrc = 2;
        header.timestamp = 999;
        let first = receiver.receive(now, &header, &press);
        assert!(matches!(
            first,
            Some(DtmfEvent::End {
                cause: EndCause::Superseded,
                ..
            })
        ));
        assert!(matches!(
            receiver.poll_event(),
            Some(DtmfEvent::Begin { timestamp: 999, .. })
        ));
        let stats = receiver.stats();
        assert_eq!(
            (stats.malformed, stats.unsupported, stats.packets),
            (1, 1, 2)
        );
    }

    #[test]
    fn sip_info_bodies() {
        let ms = Duration::from_millis;
        let parsed = DtmfInfo::parse_relay(b"signal= 5\nDURATION =160\n").unwrap();
        assert_eq!(
            parsed,
            DtmfInfo {
                digit: Digit::Five,
                duration: ms(160)
            }
        );
        let cisco = DtmfInfo::parse(
            "Application/DTMF-Relay; charset=x",
            b"Signal=#\r\nDuration=250\r\n",
        )
        .unwrap();
        assert_eq!(cisco.digit, Digit::Pound);
        assert_eq!(
            DtmfInfo::parse_relay(b"Signal=10").unwrap(),
            DtmfInfo {
                digit: Digit::Star,
                duration: DtmfInfo::DEFAULT_DURATION
            }
        );
        assert_eq!(
            DtmfInfo::parse_relay(b"Signal=16").unwrap().digit,
            Digit::Flash
        );
        assert_eq!(
            DtmfInfo::parse_relay(b"Signal=!").unwrap().digit,
            Digit::Flash
        );
        assert_eq!(
            DtmfInfo::parse("application/dtmf", b" c\r\n")
                .unwrap()
                .digit,
            Digit::C
        );
        assert_eq!(
            DtmfInfo {
                digit: Digit::A,
                duration: ms(90)
            }
            .to_string(),
            "Signal=A\r\nDuration=90\r\n"
        );
        let bad: [(&[u8], DtmfError); 9] = [
            (b"", DtmfError::MissingSignal),
            (b"Duration=100", DtmfError::MissingSignal),
            (b"Signal=x", DtmfError::InvalidSignal),
            (b"Signal=17", DtmfError::InvalidSignal),
            (b"Signal=", DtmfError::InvalidSignal),
            (b"Signal=1\nDuration=-5", DtmfError::InvalidDuration),
            (
                b"Signal=1\nDuration=99999999999",
                DtmfError::InvalidDuration,
            ),
            (b"Signal=1\nSignal=2", DtmfError::RepeatedKey),
            (b"Signal=1\ngarbage", DtmfError::MalformedLine),
        ];
        for (body, error) in bad {
            assert_eq!(DtmfInfo::parse_relay(body), Err(error), "{body:?}");
        }
        assert_eq!(DtmfInfo::parse_dtmf(b"  "), Err(DtmfError::MissingSignal));
        assert_eq!(DtmfInfo::parse_dtmf(b"12").unwrap().digit, Digit::A);
        assert_eq!(
            DtmfInfo::parse("text/plain", b"Signal=1"),
            Err(DtmfError::UnsupportedContentType)
        );
    }

    fn digit_strategy() -> impl Strategy<Value = Digit> {
        (0u8..17).prop_map(|code| Digit::from_code(code).unwrap())
    }

    proptest! {
        #[test]
        fn hostile_packets_never_panic_and_presses_stay_balanced(
            packets in proptest::collection::vec(
                (any::<bool>(), 100u8..103, any::<u32>(), 0u32..3,
                 proptest::collection::vec(any::<u8>(), 0..8), 0u64..300),
                0..60,
            ),
        ) {
            let mut receiver = DtmfReceiver::new(PT);
            let mut now = Instant::now();
            let mut events = Vec::new();
            for (marker, payload_type, timestamp, ssrc, payload, step) in packets {
                now += Duration::from_millis(step);
                let header = RtpHeader {
                    marker,
                    payload_type,
                    sequence: 0,
                    timestamp: timestamp % 4 * 8000 + timestamp / 4 % 3, // collisions
                    ssrc,
                    payload_offset: 12,
                    payload_len: payload.len(),
                };
                let first = receiver.handle_timeout(now);
                drain(&mut receiver, first, &mut events);
                let first = receiver.receive(now, &header, &payload);
                drain(&mut receiver, first, &mut events);
            }
            if let Some(deadline) = receiver.poll_timeout() {
                let first = receiver.handle_timeout(deadline);
                drain(&mut receiver, first, &mut events);
            }
            presses(&events);
            prop_assert_eq!(receiver.stats().dropped_events, 0);
        }

        #[test]
        fn payloads_round_trip(event: u8, end: bool, volume in 0u8..64, duration: u16) {
            let payload = TelephoneEvent { event, end, volume, duration };
            prop_assert_eq!(TelephoneEvent::parse(&payload.to_bytes()), Ok(payload));
        }

        #[test]
        fn info_bodies_never_panic_and_round_trip(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            digit in digit_strategy(),
            millis in 0u64..100_000,
        ) {
            let _ = DtmfInfo::parse_relay(&bytes);
            let _ = DtmfInfo::parse_dtmf(&bytes);
            let info = DtmfInfo { digit, duration: Duration::from_millis(millis) };
            prop_assert_eq!(DtmfInfo::parse_relay(info.to_string().as_bytes()), Ok(info));
        }

        #[test]
        fn receiver_reports_what_the_sender_sent(
            digits in proptest::collection::vec(digit_strategy(), 1..8),
            millis in 40u64..600,
            lost in proptest::collection::vec(any::<bool>(), 0..200),
            duplicated in proptest::collection::vec(any::<bool>(), 0..200),
            opus: bool,
        ) {
            let clock_rate = if opus { 48_000 } else { 8000 };
            let text: String = digits.iter().map(|d| d.as_char()).collect();
            let length = Duration::from_millis(millis);
            let (_, sent) = send(&text, length, clock_rate);

            // Clean: exactly the digits, with their length.
            let got = presses(&receive_all(&mut receiver(clock_rate), &sent));
            let expected: Vec<_> = digits
                .iter()
                .map(|&d| (d, length, EndCause::EndPacket))
                .collect();
            let tolerance = Duration::from_micros(1_000_000 / u64::from(clock_rate));
            prop_assert_eq!(got.len(), expected.len());
            for (got, expected) in got.iter().zip(&expected) {
                prop_assert_eq!((got.0, got.2), (expected.0, expected.2));
                prop_assert!(expected.1.abs_diff(got.1) <= tolerance);
            }

            // Lossy and duplicated: every digit with a packet through is reported once,
            // never longer than sent, and at least one packet interval if an update or
            // the end got through.
            let mut mangled = Vec::new();
            for (index, s) in sent.iter().enumerate() {
                if lost.get(index).copied().unwrap_or(false) {
                    continue;
                }
                mangled.push(*s);
                if duplicated.get(index).copied().unwrap_or(false) {
                    mangled.push(*s);
                }
            }
            let mut through: Vec<Digit> = Vec::new();
            let mut last_start = None;
            for s in &mangled {
                if last_start != Some(s.header.timestamp) {
                    through.push(Digit::from_code(event(s).event).unwrap());
                    last_start = Some(s.header.timestamp);
                }
            }
            let got = presses(&receive_all(&mut receiver(clock_rate), &mangled));
            prop_assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), through);
            for press in &got {
                prop_assert!(press.1 <= length);
                prop_assert!(press.1 + tolerance >= length.min(DEFAULT_PACKET_INTERVAL));
            }
        }
    }
}
