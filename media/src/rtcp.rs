//! RTCP (RFC 3550 §6): reception statistics, sender and receiver reports, SDES CNAME, BYE and
//! round-trip time, sans-IO.
//!
//! - [`ReceiverStats`] follows one incoming RTP stream the way RFC 3550 Appendix A prescribes:
//!   source validation and extended sequence numbers (A.1), expected and lost packets and the
//!   fraction lost per report interval (A.3), interarrival jitter (A.8). It never allocates.
//! - [`SenderStats`] counts what we send, for the sender info of an SR (§6.4.1).
//! - [`Compound::parse`] checks a whole compound packet (§6.1, A.2) and then hands out borrowed
//!   views of its SR, RR, SDES and BYE packets; other packet types (APP, RTP/AVPF feedback, XR)
//!   come out as [`RtcpPacket::Other`]. The `write_*` functions build packets into a caller
//!   buffer and return their length; nothing allocates.
//! - [`RtcpSession`] ties them together for one leg: when to report, SR or RR plus SDES CNAME,
//!   and what the peer reports about our stream, including the round-trip time (§6.4.1).
//!
//! Time comes in as `now: Instant`. The NTP wallclock an SR carries comes in as a 64-bit NTP
//! timestamp the caller reads from its clock (see [`ntp_from_system_time`]).

use std::slice::ChunksExact;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::rtp::RtpHeader;

/// Packet type of a sender report (RFC 3550 §6.4.1).
pub const PT_SENDER_REPORT: u8 = 200;
/// Packet type of a receiver report (RFC 3550 §6.4.2).
pub const PT_RECEIVER_REPORT: u8 = 201;
/// Packet type of a source description (RFC 3550 §6.5).
pub const PT_SOURCE_DESCRIPTION: u8 = 202;
/// Packet type of a BYE (RFC 3550 §6.6).
pub const PT_BYE: u8 = 203;
/// SDES item type of the canonical name (RFC 3550 §6.5.1).
pub const SDES_CNAME: u8 = 1;
/// Most report blocks, SDES chunks or BYE sources one packet can count (a 5-bit field).
pub const MAX_COUNT: usize = 31;
/// The report interval before randomisation: the minimum of RFC 3550 §6.2.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Length of the common RTCP header (RFC 3550 §6.4.1).
const HEADER_LEN: usize = 4;
/// Length of the sender info of an SR (RFC 3550 §6.4.1).
const SENDER_INFO_LEN: usize = 20;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// RFC 3550 A.1: a forward jump of up to this many is loss, not a restart.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a backward step of up to this many is reordering, not a restart.
const MAX_MISORDER: u16 = 100;
/// RFC 3550 A.1: sequential packets needed before a source is valid.
const MIN_SEQUENTIAL: u32 = 2;
/// `bad_seq` value no sequence number can equal (RFC 3550 A.1 `RTP_SEQ_MOD + 1`).
const NO_BAD_SEQ: u32 = 0x1_0001;
/// Sequence numbers remembered behind the highest one, to recognise duplicates. Larger than
/// `MAX_MISORDER`, so every packet A.1 treats as reordered is inside the window.
const DUPLICATE_WINDOW: u16 = 128;

/// Why bytes are not a valid RTCP compound packet (RFC 3550 A.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Empty, or shorter than a header or length field says.
    #[error("truncated RTCP packet")]
    Truncated,
    /// Version is not 2.
    #[error("not RTCP version 2")]
    Version,
    /// Padding on a packet that is not the last of the compound, or longer than the packet.
    #[error("bad RTCP padding")]
    Padding,
    /// An SR or RR counts more report blocks than it holds.
    #[error("RTCP report count exceeds the packet")]
    ReportCount,
    /// An SDES chunk runs past its packet or lacks its terminating null item.
    #[error("malformed RTCP SDES chunk")]
    Sdes,
    /// A BYE counts more sources than it holds, or its reason runs past the packet.
    #[error("malformed RTCP BYE")]
    Bye,
}

/// Why an RTCP packet could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The buffer is shorter than the packet.
    #[error("buffer too small for the RTCP packet")]
    BufferTooSmall,
    /// More than [`MAX_COUNT`] report blocks or BYE sources.
    #[error("more than 31 report blocks or sources")]
    TooMany,
    /// An SDES item or BYE reason longer than 255 bytes (an 8-bit length, §6.5 and §6.6).
    #[error("RTCP text longer than 255 bytes")]
    TooLong,
}

/// The 64-bit NTP timestamp (RFC 3550 §4: seconds since 1900 in the high 32 bits, the fraction
/// in the low 32) of a wallclock time. Times before 1970 map to 1970; the seconds wrap in 2036
/// as NTP era 0 does (RFC 5905 §6).
pub fn ntp_from_system_time(time: SystemTime) -> u64 {
    let since_unix = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    seconds << 32 | fraction
}

/// The middle 32 bits of an NTP timestamp, the form LSR and RTT use (RFC 3550 §6.4.1).
pub fn ntp_middle32(ntp: u64) -> u32 {
    // Truncation keeps exactly the bits wanted: 16 of seconds, 16 of fraction.
    (ntp >> 16) as u32
}

/// A span in units of 1/65536 s (the DLSR unit of RFC 3550 §6.4.1) as a [`Duration`].
pub fn ntp_short_to_duration(units: u32) -> Duration {
    let nanos = (u64::from(units & 0xffff) * 1_000_000_000) >> 16;
    // Below 10^9: the fraction is less than one second.
    Duration::new(u64::from(units >> 16), nanos as u32)
}

/// A [`Duration`] in units of 1/65536 s (RFC 3550 §6.4.1 DLSR), rounded down and saturating at
/// `u32::MAX` (about 18 hours).
pub fn duration_to_ntp_short(duration: Duration) -> u32 {
    let units = duration.as_nanos() * 65_536 / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// The round-trip time from a report block about our stream (RFC 3550 §6.4.1): the arrival
/// time `arrival` (middle 32 bits of our NTP clock when the report arrived) minus the block's
/// LSR minus its DLSR.
///
/// `None` when the peer has not received an SR from us yet (LSR 0), or when the result is
/// negative by more than about a millisecond (clocks the peer lied about). A result negative
/// by less than that is rounding in the 1/65536 s units and counts as zero.
pub fn round_trip_time(arrival: u32, last_sr: u32, delay_since_last_sr: u32) -> Option<Duration> {
    if last_sr == 0 {
        return None;
    }
    // Modulo 2^32 the difference is the RTT; read as signed, it tells late from early.
    let rtt = arrival
        .wrapping_sub(last_sr)
        .wrapping_sub(delay_since_last_sr) as i32;
    match rtt {
        0.. => Some(ntp_short_to_duration(rtt.unsigned_abs())),
        -66..0 => Some(Duration::ZERO),
        _ => None,
    }
}

/// One reception report block of an SR or RR (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Packets lost since the previous report, as a fixed-point fraction of 256 (A.3).
    pub fraction_lost: u8,
    /// Packets lost since reception began (a 24-bit signed field; duplicates can make it
    /// negative).
    pub cumulative_lost: i32,
    /// Highest sequence number received, with the count of wraps in the high 16 bits (A.1).
    pub extended_highest_sequence: u32,
    /// Interarrival jitter in timestamp units (A.8).
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from the source, 0 if none (LSR).
    pub last_sr: u32,
    /// Time since that SR in 1/65536 s, 0 if none (DLSR).
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// Length of a report block on the wire.
    pub const LEN: usize = 24;

    /// Reads a report block.
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        // Sign-extend the 24-bit cumulative count.
        let lost = (u32::from_be_bytes([bytes[5], bytes[6], bytes[7], 0]) as i32) >> 8;
        Self {
            ssrc: word(0),
            fraction_lost: bytes[4],
            cumulative_lost: lost,
            extended_highest_sequence: word(8),
            jitter: word(12),
            last_sr: word(16),
            delay_since_last_sr: word(20),
        }
    }

    /// Writes the report block; `cumulative_lost` is clamped to the 24-bit signed range.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let lost = self
            .cumulative_lost
            .clamp(-0x80_0000, 0x7f_ffff)
            .to_be_bytes();
        let mut bytes = [0; Self::LEN];
        bytes[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        bytes[4] = self.fraction_lost;
        bytes[5..8].copy_from_slice(&lost[1..4]);
        bytes[8..12].copy_from_slice(&self.extended_highest_sequence.to_be_bytes());
        bytes[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        bytes[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        bytes[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
        bytes
    }

    /// The fraction lost as a ratio in 0..1.
    pub fn fraction_lost_ratio(&self) -> f64 {
        f64::from(self.fraction_lost) / 256.0
    }
}

/// The sender info of an SR (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wallclock time of the report, 64-bit NTP format.
    pub ntp_timestamp: u64,
    /// The same instant in the stream's RTP timestamp units.
    pub rtp_timestamp: u32,
    /// RTP packets sent (wraps at 2^32).
    pub packet_count: u32,
    /// RTP payload octets sent, without headers or padding (wraps at 2^32).
    pub octet_count: u32,
}

impl SenderInfo {
    fn from_bytes(bytes: &[u8; SENDER_INFO_LEN]) -> Self {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Self {
            ntp_timestamp: u64::from(word(0)) << 32 | u64::from(word(4)),
            rtp_timestamp: word(8),
            packet_count: word(12),
            octet_count: word(16),
        }
    }
}

/// What [`ReceiverStats::on_rtp`] made of a packet's sequence number (RFC 3550 A.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SequenceStatus {
    /// Newer than every packet so far, possibly after a gap (lost packets); or the packet that
    /// ends probation and makes the source valid.
    InOrder,
    /// Older than the highest packet so far and not seen before: reordered in the network.
    Reordered,
    /// Seen before (RFC 3550 A.1 counts these as received; we recognise them within the last
    /// 128 sequence numbers and leave them out of the loss statistics).
    Duplicate,
    /// The source is not yet valid: fewer than two sequential packets (A.1 probation).
    Probation,
    /// A jump of 3000 or more forward, or 100 or more back, held back until the next packet shows
    /// whether the sender restarted (A.1 `bad_seq`). Not counted.
    Jump,
    /// The packet after a [`Self::Jump`] continued from it: the sender restarted its sequence
    /// and statistics start over from this packet (A.1).
    Restarted,
}

/// Reception statistics of one incoming RTP stream (RFC 3550 A.1, A.3, A.8).
///
/// It follows one source at a time: a packet with another SSRC starts a new source on
/// probation (A.1), as when a re-INVITE moved the call to another phone. The packet and byte
/// counters span all sources. Nothing here allocates.
#[derive(Clone, Debug)]
pub struct ReceiverStats {
    ssrc: Option<u32>,
    // RFC 3550 A.1.
    max_seq: u16,
    /// Wraps of the sequence number since `base_seq`.
    cycles: u64,
    base_seq: u16,
    bad_seq: u32,
    probation: u32,
    received: u64,
    // RFC 3550 A.3.
    expected_prior: u64,
    received_prior: u64,
    fraction_lost: u8,
    /// Bit `i` set: the sequence number `i` behind the highest was received.
    window: u128,
    // RFC 3550 A.8.
    clock_rate: u32,
    origin: Option<Instant>,
    transit: Option<u32>,
    /// Jitter in timestamp units, times 16 (A.8's integer form).
    jitter_q4: u64,
    // Counters and report state.
    packets: u64,
    bytes: u64,
    duplicates: u64,
    heard_since_report: bool,
    last_sr: Option<(u32, Instant)>,
}

impl Default for ReceiverStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiverStats {
    /// Statistics that have heard nothing yet.
    pub fn new() -> Self {
        Self {
            ssrc: None,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: NO_BAD_SEQ,
            probation: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            fraction_lost: 0,
            window: 0,
            clock_rate: 0,
            origin: None,
            transit: None,
            jitter_q4: 0,
            packets: 0,
            bytes: 0,
            duplicates: 0,
            heard_since_report: false,
            last_sr: None,
        }
    }

    /// Accounts for an RTP packet received at `now`, its stream clocked at `clock_rate` Hz.
    ///
    /// Counts its payload bytes (`header.payload_len`), runs A.1's sequence checks, and updates
    /// the jitter (A.8) for packets of a valid source that are not duplicates or jumps.
    pub fn on_rtp(&mut self, now: Instant, header: &RtpHeader, clock_rate: u32) -> SequenceStatus {
        self.packets += 1;
        self.bytes += header.payload_len as u64;
        if self.ssrc != Some(header.ssrc) {
            // A new source (A.1): probation starts, as if the previous packet was `seq - 1`.
            self.ssrc = Some(header.ssrc);
            self.init_seq(header.sequence);
            self.max_seq = header.sequence.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
            self.fraction_lost = 0;
            self.transit = None;
            self.jitter_q4 = 0;
            self.last_sr = None;
        }
        if clock_rate != self.clock_rate {
            // Jitter in the old units means nothing in the new ones.
            self.clock_rate = clock_rate;
            self.transit = None;
            self.jitter_q4 = 0;
        }
        let status = self.update_seq(header.sequence);
        match status {
            SequenceStatus::InOrder | SequenceStatus::Reordered => {
                self.heard_since_report = true;
                self.update_jitter(now, header.timestamp, false);
            }
            SequenceStatus::Probation => self.update_jitter(now, header.timestamp, true),
            SequenceStatus::Restarted => {
                self.heard_since_report = true;
                self.transit = None;
                self.update_jitter(now, header.timestamp, true);
            }
            SequenceStatus::Duplicate => self.duplicates += 1,
            SequenceStatus::Jump => {}
        }
        status
    }

    /// RFC 3550 A.1 `init_seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = NO_BAD_SEQ;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.window = 1;
    }

    /// RFC 3550 A.1 `update_seq`, with duplicates recognised in a window.
    fn update_seq(&mut self, seq: u16) -> SequenceStatus {
        let delta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return SequenceStatus::InOrder;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SequenceStatus::Probation;
        }
        let status = if delta == 0 {
            // A.1 would count the highest packet again; it is a duplicate.
            SequenceStatus::Duplicate
        } else if delta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += 1;
            }
            self.max_seq = seq;
            self.window = if delta < DUPLICATE_WINDOW {
                self.window << delta | 1
            } else {
                1
            };
            SequenceStatus::InOrder
        } else if delta <= MAX_MISORDER.wrapping_neg() {
            // A very large jump: a restart if the next packet follows this one.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
                SequenceStatus::Restarted
            } else {
                self.bad_seq = u32::from(seq.wrapping_add(1));
                return SequenceStatus::Jump;
            }
        } else {
            // Behind the highest by less than MAX_MISORDER: reordered, or a duplicate.
            let behind = delta.wrapping_neg();
            let bit = 1u128 << behind;
            if self.window & bit != 0 {
                SequenceStatus::Duplicate
            } else {
                self.window |= bit;
                SequenceStatus::Reordered
            }
        };
        if status != SequenceStatus::Duplicate {
            self.received += 1;
        }
        status
    }

    /// RFC 3550 A.8, in the integer form (jitter kept times 16).
    fn update_jitter(&mut self, now: Instant, timestamp: u32, reset_only: bool) {
        if self.clock_rate == 0 {
            return;
        }
        let origin = *self.origin.get_or_insert(now);
        let ticks = now.saturating_duration_since(origin).as_nanos() * u128::from(self.clock_rate)
            / 1_000_000_000;
        // The arrival clock runs modulo 2^32 like RTP timestamps: A.8 only uses differences.
        let arrival = ticks as u32;
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(previous) = self.transit.replace(transit)
            && !reset_only
        {
            let d = u64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            self.jitter_q4 = self.jitter_q4 - ((self.jitter_q4 + 8) >> 4) + d;
        }
    }

    /// Records an SR from the source, received at `now`, for the LSR and DLSR of our next
    /// report block (RFC 3550 §6.4.1). `ntp_middle32` is the middle 32 bits of the SR's NTP
    /// timestamp ([`ntp_middle32`]). The caller checks that the SR is from [`Self::ssrc`].
    pub fn on_sender_report(&mut self, now: Instant, ntp_middle32: u32) {
        self.last_sr = Some((ntp_middle32, now));
    }

    /// The report block about the source at `now`, or `None` while no source is valid.
    ///
    /// Starts a new report interval: the fraction lost is the loss since the previous call
    /// (A.3). RFC 3550 §6.4 only reports sources heard since the last report; see
    /// [`Self::heard_since_report`].
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let ssrc = self.ssrc?;
        if self.probation > 0 {
            return None;
        }
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        self.fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            u8::try_from((lost_interval << 8) / expected_interval).unwrap_or(u8::MAX)
        };
        self.heard_since_report = false;
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => (
                lsr,
                duration_to_ntp_short(now.saturating_duration_since(at)),
            ),
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost: self.fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_highest_sequence: self.extended_highest_sequence(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        })
    }

    /// The source followed, once a packet arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Whether the source passed probation (A.1).
    pub fn is_valid(&self) -> bool {
        self.ssrc.is_some() && self.probation == 0
    }

    /// Whether a packet of the valid source arrived since the last [`Self::report_block`].
    pub fn heard_since_report(&self) -> bool {
        self.heard_since_report
    }

    /// RTP packets handed to [`Self::on_rtp`], all sources, duplicates included.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Payload bytes of those packets.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Duplicates recognised.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Packets of the current source counted as received (A.1: since validation or restart,
    /// without duplicates).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the current source (A.3: extended highest minus base, plus one).
    pub fn expected(&self) -> u64 {
        if !self.is_valid() {
            return 0;
        }
        let highest = self.cycles << 16 | u64::from(self.max_seq);
        (highest + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Packets lost since reception began (A.3). Negative when late packets from before the
    /// base sequence number arrived.
    pub fn cumulative_lost(&self) -> i64 {
        let expected = i64::try_from(self.expected()).unwrap_or(i64::MAX);
        let received = i64::try_from(self.received).unwrap_or(i64::MAX);
        expected - received
    }

    /// The fraction lost in the last report interval, out of 256 (A.3).
    pub fn fraction_lost(&self) -> u8 {
        self.fraction_lost
    }

    /// Highest sequence number received with the wrap count in the high 16 bits, as a report
    /// block carries it (A.1).
    pub fn extended_highest_sequence(&self) -> u32 {
        // The wire field keeps the low 16 bits of the wrap count.
        ((self.cycles << 16) as u32) | u32::from(self.max_seq)
    }

    /// Interarrival jitter in timestamp units (A.8).
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter as time, at the stream's clock rate.
    pub fn jitter_duration(&self) -> Duration {
        if self.clock_rate == 0 {
            return Duration::ZERO;
        }
        let nanos = u64::from(self.jitter()) * 1_000_000_000 / u64::from(self.clock_rate);
        Duration::from_nanos(nanos)
    }

    /// The clock rate of the last packet, Hz.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }
}

/// What we send on a leg, for the sender info of our SRs (RFC 3550 §6.4.1).
#[derive(Clone, Debug, Default)]
pub struct SenderStats {
    packets: u64,
    octets: u64,
    last: Option<(u32, Instant)>,
    clock_rate: u32,
    sent_this_interval: bool,
    sent_last_interval: bool,
}

impl SenderStats {
    /// Statistics of a stream that has sent nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts for an RTP packet sent at `now` (after any rewriting), its stream clocked at
    /// `clock_rate` Hz.
    pub fn on_rtp_sent(&mut self, now: Instant, header: &RtpHeader, clock_rate: u32) {
        self.packets += 1;
        self.octets += header.payload_len as u64;
        self.last = Some((header.timestamp, now));
        self.clock_rate = clock_rate;
        self.sent_this_interval = true;
    }

    /// The sender info for an SR at `now`, wallclock `ntp`. The RTP timestamp is the last one
    /// sent, advanced by the time since at the clock rate: §6.4.1 wants the RTP time of the
    /// same instant as the NTP timestamp, not that of the last packet.
    pub fn sender_info(&self, now: Instant, ntp: u64) -> SenderInfo {
        let rtp_timestamp = match self.last {
            Some((timestamp, at)) => {
                let ticks = now.saturating_duration_since(at).as_nanos()
                    * u128::from(self.clock_rate)
                    / 1_000_000_000;
                // RTP time runs modulo 2^32.
                timestamp.wrapping_add(ticks as u32)
            }
            None => 0,
        };
        SenderInfo {
            ntp_timestamp: ntp,
            rtp_timestamp,
            // The counts wrap modulo 2^32 on the wire (§6.4.1).
            packet_count: self.packets as u32,
            octet_count: self.octets as u32,
        }
    }

    /// Whether we count as a sender: RTP went out since the last report or the one before, so
    /// the next report is an SR rather than an RR (RFC 3550 §6.4).
    pub fn is_sender(&self) -> bool {
        self.sent_this_interval || self.sent_last_interval
    }

    /// Starts a new report interval (call when a report went out).
    pub fn on_report_sent(&mut self) {
        self.sent_last_interval = self.sent_this_interval;
        self.sent_this_interval = false;
    }

    /// RTP packets sent.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// RTP payload octets sent.
    pub fn octets(&self) -> u64 {
        self.octets
    }

    /// The RTP timestamp of the last packet sent.
    pub fn last_rtp_timestamp(&self) -> Option<u32> {
        self.last.map(|(timestamp, _)| timestamp)
    }

    /// The clock rate of the last packet sent, Hz (0 before the first).
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }
}

/// A checked RTCP compound packet (RFC 3550 §6.1): one or more RTCP packets back to back.
///
/// [`Self::parse`] runs the validity checks of RFC 3550 A.2 on every packet (version 2, lengths
/// adding up to the datagram, padding only on the last) and checks the insides of SR, RR, SDES
/// and BYE packets, so [`Self::packets`] hands out views that cannot fail. The first packet is
/// not required to be an SR or RR: reduced-size RTCP (RFC 5506) drops that rule. The work is
/// linear in the datagram's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compound<'a> {
    bytes: &'a [u8],
}

impl<'a> Compound<'a> {
    /// Checks a (decrypted) RTCP datagram.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RtcpError> {
        if bytes.is_empty() {
            return Err(RtcpError::Truncated);
        }
        for packet in (RawPackets { rest: bytes }) {
            packet?;
        }
        Ok(Self { bytes })
    }

    /// The packets, in order.
    pub fn packets(&self) -> Packets<'a> {
        Packets {
            raw: RawPackets { rest: self.bytes },
        }
    }
}

/// The packets of a [`Compound`].
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    raw: RawPackets<'a>,
}

impl<'a> Iterator for Packets<'a> {
    type Item = RtcpPacket<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // `Compound::parse` saw every packet parse, so no error ends this early.
        self.raw.next()?.ok()
    }
}

/// Walks packets, yielding the first error and then stopping.
#[derive(Clone, Debug)]
struct RawPackets<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RawPackets<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = self.split_packet();
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

impl<'a> RawPackets<'a> {
    fn split_packet(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let &[first, packet_type, length_high, length_low] = self
            .rest
            .first_chunk::<HEADER_LEN>()
            .ok_or(RtcpError::Truncated)?;
        if first >> 6 != 2 {
            return Err(RtcpError::Version);
        }
        // The length counts 32-bit words minus one (§6.4.1).
        let len = (usize::from(u16::from_be_bytes([length_high, length_low])) + 1) * 4;
        let (packet, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(RtcpError::Truncated)?;
        self.rest = rest;
        let mut body = packet.get(HEADER_LEN..).unwrap_or_default();
        if first & 0x20 != 0 {
            // Only the last packet of a compound may be padded (§6.4.1 P bit).
            let padding = usize::from(*packet.last().ok_or(RtcpError::Truncated)?);
            if !rest.is_empty() || padding == 0 || padding > body.len() {
                return Err(RtcpError::Padding);
            }
            body = body.get(..body.len() - padding).unwrap_or_default();
        }
        let count = first & 0x1f;
        Ok(match packet_type {
            PT_SENDER_REPORT => RtcpPacket::SenderReport(SenderReport::parse(count, body)?),
            PT_RECEIVER_REPORT => RtcpPacket::ReceiverReport(ReceiverReport::parse(count, body)?),
            PT_SOURCE_DESCRIPTION => {
                RtcpPacket::SourceDescription(SourceDescription::parse(count, body)?)
            }
            PT_BYE => RtcpPacket::Bye(Bye::parse(count, body)?),
            _ => RtcpPacket::Other {
                packet_type,
                count,
                body,
            },
        })
    }
}

/// One packet of a compound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpPacket<'a> {
    /// A sender report (PT 200).
    SenderReport(SenderReport<'a>),
    /// A receiver report (PT 201).
    ReceiverReport(ReceiverReport<'a>),
    /// A source description (PT 202).
    SourceDescription(SourceDescription<'a>),
    /// A BYE (PT 203).
    Bye(Bye<'a>),
    /// Any other type (APP, RTP/AVPF feedback, XR, unknown), unchecked.
    Other {
        /// The packet type.
        packet_type: u8,
        /// The 5-bit count or subtype field.
        count: u8,
        /// The packet after its 4-byte header, padding removed.
        body: &'a [u8],
    },
}

/// A sender report (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport<'a> {
    ssrc: u32,
    info: SenderInfo,
    blocks: &'a [u8],
}

impl<'a> SenderReport<'a> {
    fn parse(count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let (ssrc, rest) = body.split_first_chunk::<4>().ok_or(RtcpError::Truncated)?;
        let (info, rest) = rest
            .split_first_chunk::<SENDER_INFO_LEN>()
            .ok_or(RtcpError::Truncated)?;
        // Profile-specific extensions may follow the blocks (§6.4.1); they are ignored.
        let blocks = rest
            .get(..usize::from(count) * ReportBlock::LEN)
            .ok_or(RtcpError::ReportCount)?;
        Ok(Self {
            ssrc: u32::from_be_bytes(*ssrc),
            info: SenderInfo::from_bytes(info),
            blocks,
        })
    }

    /// The sender.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// What the sender sent.
    pub fn sender_info(&self) -> SenderInfo {
        self.info
    }

    /// What the sender received.
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks {
            chunks: self.blocks.chunks_exact(ReportBlock::LEN),
        }
    }
}

/// A receiver report (RFC 3550 §6.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    ssrc: u32,
    blocks: &'a [u8],
}

impl<'a> ReceiverReport<'a> {
    fn parse(count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let (ssrc, rest) = body.split_first_chunk::<4>().ok_or(RtcpError::Truncated)?;
        let blocks = rest
            .get(..usize::from(count) * ReportBlock::LEN)
            .ok_or(RtcpError::ReportCount)?;
        Ok(Self {
            ssrc: u32::from_be_bytes(*ssrc),
            blocks,
        })
    }

    /// The reporter.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// What the reporter received.
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks {
            chunks: self.blocks.chunks_exact(ReportBlock::LEN),
        }
    }
}

/// The report blocks of an SR or RR.
#[derive(Clone, Debug)]
pub struct ReportBlocks<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<Self::Item> {
        let chunk = self.chunks.next()?;
        chunk
            .first_chunk::<{ ReportBlock::LEN }>()
            .map(ReportBlock::from_bytes)
    }
}

/// A source description (RFC 3550 §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceDescription<'a> {
    count: u8,
    body: &'a [u8],
}

impl<'a> SourceDescription<'a> {
    fn parse(count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let mut rest = body;
        for _ in 0..count {
            rest = split_sdes_chunk(rest)?.1;
        }
        Ok(Self { count, body })
    }

    /// The chunks, one per source.
    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            remaining: self.count,
            rest: self.body,
        }
    }

    /// The CNAME of `ssrc`, if this packet carries it.
    pub fn cname(&self, ssrc: u32) -> Option<&'a [u8]> {
        self.chunks()
            .find(|chunk| chunk.ssrc() == ssrc)
            .and_then(|chunk| chunk.cname())
    }
}

/// Splits the first SDES chunk off `bytes`, which starts 32-bit aligned (§6.5).
fn split_sdes_chunk(bytes: &[u8]) -> Result<(SdesChunk<'_>, &[u8]), RtcpError> {
    let (ssrc, items) = bytes.split_first_chunk::<4>().ok_or(RtcpError::Sdes)?;
    let mut at = 0;
    loop {
        match items.get(at) {
            None => return Err(RtcpError::Sdes),
            Some(0) => break,
            Some(_) => {
                let len = *items.get(at + 1).ok_or(RtcpError::Sdes)?;
                at += 2 + usize::from(len);
            }
        }
    }
    let chunk = SdesChunk {
        ssrc: u32::from_be_bytes(*ssrc),
        items: items.get(..at).ok_or(RtcpError::Sdes)?,
    };
    // The null item ends the list; more nulls pad to the next 32-bit boundary.
    let end = (4 + at + 1).next_multiple_of(4);
    Ok((chunk, bytes.get(end..).unwrap_or_default()))
}

/// The chunks of a [`SourceDescription`].
#[derive(Clone, Debug)]
pub struct SdesChunks<'a> {
    remaining: u8,
    rest: &'a [u8],
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.remaining = self.remaining.checked_sub(1)?;
        // `SourceDescription::parse` split every chunk already, so this does not fail.
        let (chunk, rest) = split_sdes_chunk(self.rest).ok()?;
        self.rest = rest;
        Some(chunk)
    }
}

/// The items about one source in an SDES packet (RFC 3550 §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    ssrc: u32,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// The source described.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The items.
    pub fn items(&self) -> SdesItems<'a> {
        SdesItems { rest: self.items }
    }

    /// The CNAME item's text (UTF-8 by §6.5, but unchecked: it came from the network).
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items()
            .find(|item| item.kind == SDES_CNAME)
            .map(|item| item.text)
    }
}

/// The items of an [`SdesChunk`].
#[derive(Clone, Debug)]
pub struct SdesItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = SdesItem<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&[kind, len], rest) = self.rest.split_first_chunk::<2>()?;
        let (text, rest) = rest.split_at_checked(usize::from(len))?;
        self.rest = rest;
        Some(SdesItem { kind, text })
    }
}

/// One SDES item (RFC 3550 §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdesItem<'a> {
    /// The item type ([`SDES_CNAME`] is 1).
    pub kind: u8,
    /// Its text, unchecked.
    pub text: &'a [u8],
}

/// A BYE (RFC 3550 §6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bye<'a> {
    sources: &'a [u8],
    reason: Option<&'a [u8]>,
}

impl<'a> Bye<'a> {
    fn parse(count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let (sources, rest) = body
            .split_at_checked(usize::from(count) * 4)
            .ok_or(RtcpError::Bye)?;
        let reason = match rest.split_first() {
            None | Some((0, _)) => None,
            Some((&len, text)) => Some(text.get(..usize::from(len)).ok_or(RtcpError::Bye)?),
        };
        Ok(Self { sources, reason })
    }

    /// The sources leaving.
    pub fn sources(&self) -> impl Iterator<Item = u32> + 'a {
        self.sources.chunks_exact(4).filter_map(|word| {
            word.first_chunk::<4>()
                .map(|word| u32::from_be_bytes(*word))
        })
    }

    /// Why they leave, if said (unchecked text).
    pub fn reason(&self) -> Option<&'a [u8]> {
        self.reason
    }
}

/// Writes into a buffer whose length was checked against the whole packet first.
struct Writer<'b> {
    buffer: &'b mut [u8],
    at: usize,
}

impl<'b> Writer<'b> {
    /// A writer of a `len`-byte packet (a multiple of 4) with the common header (§6.4.1).
    fn packet(
        buffer: &'b mut [u8],
        len: usize,
        count: usize,
        packet_type: u8,
    ) -> Result<Self, BuildError> {
        let buffer = buffer.get_mut(..len).ok_or(BuildError::BufferTooSmall)?;
        let mut writer = Self { buffer, at: 0 };
        let count = u8::try_from(count)
            .ok()
            .filter(|&count| usize::from(count) <= MAX_COUNT)
            .ok_or(BuildError::TooMany)?;
        let words = u16::try_from((len / 4).saturating_sub(1)).map_err(|_| BuildError::TooMany)?;
        writer.put(&[0x80 | count, packet_type]);
        writer.put(&words.to_be_bytes());
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        // The packet's length was checked against the buffer up front; nothing falls outside.
        if let Some(target) = self.buffer.get_mut(self.at..end) {
            target.copy_from_slice(bytes);
        }
        self.at = end;
    }

    /// Zeroes the rest of the packet (SDES and BYE padding) and returns its length.
    fn finish(self) -> usize {
        if let Some(rest) = self.buffer.get_mut(self.at..) {
            rest.fill(0);
        }
        self.buffer.len()
    }
}

/// Writes a sender report (RFC 3550 §6.4.1) at the start of `buffer`; returns its length.
pub fn write_sender_report(
    buffer: &mut [u8],
    ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, BuildError> {
    if blocks.len() > MAX_COUNT {
        return Err(BuildError::TooMany);
    }
    let len = HEADER_LEN + 4 + SENDER_INFO_LEN + blocks.len() * ReportBlock::LEN;
    let mut writer = Writer::packet(buffer, len, blocks.len(), PT_SENDER_REPORT)?;
    writer.put(&ssrc.to_be_bytes());
    writer.put(&info.ntp_timestamp.to_be_bytes());
    writer.put(&info.rtp_timestamp.to_be_bytes());
    writer.put(&info.packet_count.to_be_bytes());
    writer.put(&info.octet_count.to_be_bytes());
    for block in blocks {
        writer.put(&block.to_bytes());
    }
    Ok(writer.finish())
}

/// Writes a receiver report (RFC 3550 §6.4.2) at the start of `buffer`; returns its length.
/// With no blocks it is the empty RR that opens a compound when there is nothing to report.
pub fn write_receiver_report(
    buffer: &mut [u8],
    ssrc: u32,
    blocks: &[ReportBlock],
) -> Result<usize, BuildError> {
    if blocks.len() > MAX_COUNT {
        return Err(BuildError::TooMany);
    }
    let len = HEADER_LEN + 4 + blocks.len() * ReportBlock::LEN;
    let mut writer = Writer::packet(buffer, len, blocks.len(), PT_RECEIVER_REPORT)?;
    writer.put(&ssrc.to_be_bytes());
    for block in blocks {
        writer.put(&block.to_bytes());
    }
    Ok(writer.finish())
}

/// Length of an SDES packet with one chunk holding only a CNAME of `cname_len` bytes.
fn sdes_cname_len(cname_len: usize) -> usize {
    // SSRC, type, length, text, at least one null, padded to 32 bits (§6.5).
    HEADER_LEN + (4 + 2 + cname_len + 1).next_multiple_of(4)
}

/// Writes an SDES packet (RFC 3550 §6.5) with our CNAME (§6.5.1), the item every compound
/// packet must carry (§6.1), at the start of `buffer`; returns its length.
pub fn write_sdes_cname(buffer: &mut [u8], ssrc: u32, cname: &[u8]) -> Result<usize, BuildError> {
    let cname_len = u8::try_from(cname.len()).map_err(|_| BuildError::TooLong)?;
    let mut writer = Writer::packet(
        buffer,
        sdes_cname_len(cname.len()),
        1,
        PT_SOURCE_DESCRIPTION,
    )?;
    writer.put(&ssrc.to_be_bytes());
    writer.put(&[SDES_CNAME, cname_len]);
    writer.put(cname);
    Ok(writer.finish())
}

/// Length of a BYE for `sources` sources with an optional reason of `reason_len` bytes.
fn bye_len(sources: usize, reason_len: Option<usize>) -> usize {
    HEADER_LEN + 4 * sources + reason_len.map_or(0, |len| (1 + len).next_multiple_of(4))
}

/// Writes a BYE (RFC 3550 §6.6) for `sources`, with an optional reason, at the start of
/// `buffer`; returns its length.
pub fn write_bye(
    buffer: &mut [u8],
    sources: &[u32],
    reason: Option<&[u8]>,
) -> Result<usize, BuildError> {
    if sources.len() > MAX_COUNT {
        return Err(BuildError::TooMany);
    }
    let reason_len = match reason {
        Some(text) => Some(u8::try_from(text.len()).map_err(|_| BuildError::TooLong)?),
        None => None,
    };
    let len = bye_len(sources.len(), reason.map(<[u8]>::len));
    let mut writer = Writer::packet(buffer, len, sources.len(), PT_BYE)?;
    for source in sources {
        writer.put(&source.to_be_bytes());
    }
    if let (Some(len), Some(text)) = (reason_len, reason) {
        writer.put(&[len]);
        writer.put(text);
    }
    Ok(writer.finish())
}

/// A snapshot of one leg's RTCP view, for metrics and [`crate::quality`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// RTP packets we sent.
    pub packets_sent: u64,
    /// RTP payload bytes we sent.
    pub bytes_sent: u64,
    /// RTP packets we received (duplicates included).
    pub packets_received: u64,
    /// RTP payload bytes we received.
    pub bytes_received: u64,
    /// Duplicate packets we received.
    pub duplicates: u64,
    /// Packets of the current incoming source we never received (A.3).
    pub packets_lost: i64,
    /// Fraction of incoming packets lost in the last report interval, 0..1 (A.3).
    pub fraction_lost: f64,
    /// Interarrival jitter of the incoming stream, ms (A.8).
    pub jitter_ms: f64,
    /// Latest round-trip time, ms (§6.4.1), once the peer reported on one of our SRs.
    pub rtt_ms: Option<f64>,
    /// Cumulative loss of our stream, as the peer reported it.
    pub remote_packets_lost: Option<i32>,
    /// Fraction of our stream lost, as the peer reported it, 0..1.
    pub remote_fraction_lost: Option<f64>,
    /// Jitter of our stream at the peer, ms, as it reported it.
    pub remote_jitter_ms: Option<f64>,
}

/// The RTCP side of one leg: our SSRC and CNAME, what we send and receive, when to report and
/// what the peer reports.
///
/// # Report timing
///
/// A simplification of RFC 3550 §6.2/§6.3 for two-party legs, where the bandwidth rule always
/// yields less than the 5 s minimum: each interval is [`REPORT_INTERVAL`] times a factor drawn
/// uniformly from [0.5, 1.5) (§6.3.1), the first one half that (§6.2 "initial"). The factor
/// comes from a small xorshift generator seeded by the caller, so a test with a fixed seed is
/// deterministic and sessions seeded differently do not report in lockstep. There is no
/// timer reconsideration (§6.3.3): with two members it changes nothing.
///
/// # Loop
///
/// Feed RTP with [`Self::on_rtp_sent`] and [`Self::on_rtp_received`], RTCP with
/// [`Self::receive_rtcp`]; when [`Self::poll_timeout`] passes, [`Self::handle_timeout`] says a
/// report is due and [`Self::build_report`] writes it.
#[derive(Clone, Debug)]
pub struct RtcpSession {
    ssrc: u32,
    cname: String,
    sender: SenderStats,
    receiver: ReceiverStats,
    next_report: Instant,
    random: u32,
    closed: bool,
    rtt: Option<Duration>,
    remote: Option<ReportBlock>,
    remote_bye: bool,
}

impl RtcpSession {
    /// A session created at `now` sending as `ssrc` with `cname` (at most 255 bytes; RFC 7022
    /// §4.2 suggests a random one per RTP session), randomising report intervals from
    /// `random_seed`.
    pub fn new(now: Instant, ssrc: u32, cname: &str, random_seed: u32) -> Result<Self, BuildError> {
        if cname.len() > 255 {
            return Err(BuildError::TooLong);
        }
        let mut session = Self {
            ssrc,
            cname: cname.to_owned(),
            sender: SenderStats::new(),
            receiver: ReceiverStats::new(),
            next_report: now,
            // xorshift needs a nonzero state.
            random: (random_seed ^ 0x9e37_79b9).max(1),
            closed: false,
            rtt: None,
            remote: None,
            remote_bye: false,
        };
        session.next_report = now + session.next_interval() / 2;
        Ok(session)
    }

    /// One report interval, randomised (§6.3.1).
    fn next_interval(&mut self) -> Duration {
        // xorshift32 (Marsaglia 2003): ample for spreading timers.
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.random = x;
        REPORT_INTERVAL * (500 + x % 1000) / 1000
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Changes our SSRC. Only for a session that has not reported yet (a relay that adopts
    /// the SSRC of the first stream it forwards); afterwards a new SSRC would be a new source.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.ssrc = ssrc;
    }

    /// Our CNAME.
    pub fn cname(&self) -> &str {
        &self.cname
    }

    /// What we sent.
    pub fn sender(&self) -> &SenderStats {
        &self.sender
    }

    /// What we received.
    pub fn receiver(&self) -> &ReceiverStats {
        &self.receiver
    }

    /// Accounts for an RTP packet we sent at `now`.
    pub fn on_rtp_sent(&mut self, now: Instant, header: &RtpHeader, clock_rate: u32) {
        self.sender.on_rtp_sent(now, header, clock_rate);
    }

    /// Accounts for an RTP packet we received at `now` (see [`ReceiverStats::on_rtp`]).
    pub fn on_rtp_received(
        &mut self,
        now: Instant,
        header: &RtpHeader,
        clock_rate: u32,
    ) -> SequenceStatus {
        self.receiver.on_rtp(now, header, clock_rate)
    }

    /// When the next report is due; `None` once we said BYE.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.closed).then_some(self.next_report)
    }

    /// Whether a report is due at `now`: if so, call [`Self::build_report`].
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        !self.closed && now >= self.next_report
    }

    /// Whether the report is an SR, and whether it carries a block about the incoming source
    /// (only when heard since the last report, §6.4).
    fn report_shape(&self) -> (bool, bool) {
        (
            self.sender.is_sender(),
            self.receiver.is_valid() && self.receiver.heard_since_report(),
        )
    }

    fn report_len(&self) -> usize {
        let (sender, block) = self.report_shape();
        let report = if sender {
            HEADER_LEN + 4 + SENDER_INFO_LEN
        } else {
            HEADER_LEN + 4
        };
        report + usize::from(block) * ReportBlock::LEN + sdes_cname_len(self.cname.len())
    }

    /// Writes our report at `now`, wallclock `ntp` (64-bit NTP), into `buffer` and schedules
    /// the next: an SR if we sent RTP since the last report or the one before, else an RR
    /// (§6.4), then SDES with our CNAME (§6.1). Returns its length. On error nothing changed.
    pub fn build_report(
        &mut self,
        now: Instant,
        ntp: u64,
        buffer: &mut [u8],
    ) -> Result<usize, BuildError> {
        if buffer.len() < self.report_len() {
            return Err(BuildError::BufferTooSmall);
        }
        self.write_report(now, ntp, buffer)
    }

    /// The report and SDES; the buffer was checked to be long enough.
    fn write_report(
        &mut self,
        now: Instant,
        ntp: u64,
        buffer: &mut [u8],
    ) -> Result<usize, BuildError> {
        let (sender, with_block) = self.report_shape();
        let block = if with_block {
            self.receiver.report_block(now)
        } else {
            None
        };
        let mut len = if sender {
            let info = self.sender.sender_info(now, ntp);
            write_sender_report(buffer, self.ssrc, &info, block.as_slice())?
        } else {
            write_receiver_report(buffer, self.ssrc, block.as_slice())?
        };
        len += write_sdes_cname(
            buffer.get_mut(len..).unwrap_or_default(),
            self.ssrc,
            self.cname.as_bytes(),
        )?;
        self.sender.on_report_sent();
        self.next_report = now + self.next_interval();
        Ok(len)
    }

    /// Writes our last report with a BYE (§6.6: SR or RR, SDES, then BYE) into `buffer` and
    /// stops the report timer. `reason` is at most 255 bytes. Returns its length.
    pub fn build_bye(
        &mut self,
        now: Instant,
        ntp: u64,
        reason: Option<&str>,
        buffer: &mut [u8],
    ) -> Result<usize, BuildError> {
        let reason = reason.map(str::as_bytes);
        if reason.is_some_and(|text| text.len() > 255) {
            return Err(BuildError::TooLong);
        }
        if buffer.len() < self.report_len() + bye_len(1, reason.map(<[u8]>::len)) {
            return Err(BuildError::BufferTooSmall);
        }
        let len = self.write_report(now, ntp, buffer)?;
        let len = len
            + write_bye(
                buffer.get_mut(len..).unwrap_or_default(),
                &[self.ssrc],
                reason,
            )?;
        self.closed = true;
        Ok(len)
    }

    /// Takes in an RTCP compound packet from the peer, received at `now`, wallclock `ntp_now`
    /// (64-bit NTP, the same clock our SRs carry).
    ///
    /// An SR from the source we receive sets the LSR of our next block; a report block about
    /// our SSRC is what the peer saw of our stream and gives the round-trip time (§6.4.1); a
    /// BYE for the source we receive is remembered. Anything else is ignored. A malformed
    /// packet changes nothing.
    pub fn receive_rtcp(
        &mut self,
        now: Instant,
        ntp_now: u64,
        packet: &[u8],
    ) -> Result<(), RtcpError> {
        let compound = Compound::parse(packet)?;
        let arrival = ntp_middle32(ntp_now);
        for packet in compound.packets() {
            match packet {
                RtcpPacket::SenderReport(report) => {
                    if self.receiver.ssrc() == Some(report.ssrc()) {
                        let ntp = report.sender_info().ntp_timestamp;
                        self.receiver.on_sender_report(now, ntp_middle32(ntp));
                    }
                    for block in report.report_blocks() {
                        self.on_report_block(arrival, block);
                    }
                }
                RtcpPacket::ReceiverReport(report) => {
                    for block in report.report_blocks() {
                        self.on_report_block(arrival, block);
                    }
                }
                RtcpPacket::Bye(bye)
                    if bye
                        .sources()
                        .any(|source| Some(source) == self.receiver.ssrc()) =>
                {
                    self.remote_bye = true;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn on_report_block(&mut self, arrival: u32, block: ReportBlock) {
        if block.ssrc != self.ssrc {
            return;
        }
        self.remote = Some(block);
        if let Some(rtt) = round_trip_time(arrival, block.last_sr, block.delay_since_last_sr) {
            self.rtt = Some(rtt);
        }
    }

    /// The latest round-trip time (§6.4.1).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The latest report block the peer sent about our stream.
    pub fn remote_report(&self) -> Option<ReportBlock> {
        self.remote
    }

    /// Whether the peer said BYE for the source we receive.
    pub fn remote_bye(&self) -> bool {
        self.remote_bye
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        let clock_rate = self.sender.clock_rate();
        let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
        Stats {
            packets_sent: self.sender.packets(),
            bytes_sent: self.sender.octets(),
            packets_received: self.receiver.packets(),
            bytes_received: self.receiver.bytes(),
            duplicates: self.receiver.duplicates(),
            packets_lost: self.receiver.cumulative_lost(),
            fraction_lost: f64::from(self.receiver.fraction_lost()) / 256.0,
            jitter_ms: millis(self.receiver.jitter_duration()),
            rtt_ms: self.rtt.map(millis),
            remote_packets_lost: self.remote.map(|block| block.cumulative_lost),
            remote_fraction_lost: self.remote.map(|block| block.fraction_lost_ratio()),
            remote_jitter_ms: self
                .remote
                .filter(|_| clock_rate > 0)
                .map(|block| f64::from(block.jitter) * 1000.0 / f64::from(clock_rate)),
        }
    }
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const SSRC: u32 = 0x5151_5151;

    fn header(sequence: u16, timestamp: u32, ssrc: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence,
            timestamp,
            ssrc,
            payload_offset: 12,
            payload_len: 160,
        }
    }

    /// Feeds sequence numbers at one instant (sequence tracking ignores time).
    fn feed(rx: &mut ReceiverStats, now: Instant, sequences: &[u16]) -> Vec<SequenceStatus> {
        sequences
            .iter()
            .map(|&seq| rx.on_rtp(now, &header(seq, u32::from(seq) * 160, SSRC), 8000))
            .collect()
    }

    use SequenceStatus::{Duplicate, InOrder, Jump, Probation, Reordered, Restarted};

    #[test]
    fn validates_after_two_sequential_packets_and_counts_loss() {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        assert_eq!(feed(&mut rx, t0, &[100]), [Probation]);
        assert!(!rx.is_valid());
        assert_eq!(rx.report_block(t0), None);
        assert_eq!(feed(&mut rx, t0, &[101]), [InOrder]);
        // 103 and 106 are lost. A.1 starts counting at the packet that ends probation (101).
        let statuses = feed(&mut rx, t0, &[102, 104, 105, 107, 108, 109, 110]);
        assert!(statuses.iter().all(|&status| status == InOrder));
        assert_eq!(
            (rx.expected(), rx.received(), rx.cumulative_lost()),
            (10, 8, 2)
        );
        let block = rx.report_block(t0).unwrap();
        assert_eq!(block.ssrc, SSRC);
        assert_eq!(block.fraction_lost, 51, "A.3: (2 << 8) / 10, 2 of 10 lost");
        assert_eq!(block.cumulative_lost, 2);
        assert_eq!(block.extended_highest_sequence, 110);
        assert_eq!((block.last_sr, block.delay_since_last_sr), (0, 0));
        // A clean interval: the fraction drops to zero, the cumulative count stays.
        feed(&mut rx, t0, &(111..=120).collect::<Vec<_>>());
        let block = rx.report_block(t0).unwrap();
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, 2));
        assert_eq!(block.extended_highest_sequence, 120);
        assert_eq!((rx.packets(), rx.bytes()), (19, 19 * 160));
    }

    #[test]
    fn probation_starts_over_on_a_gap() {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        assert_eq!(
            feed(&mut rx, t0, &[100, 102, 103, 104]),
            [Probation, Probation, InOrder, InOrder]
        );
        assert_eq!((rx.expected(), rx.cumulative_lost()), (2, 0));
        // A new SSRC is a new source: probation again.
        let other = header(5000, 0, SSRC + 1);
        assert_eq!(rx.on_rtp(t0, &other, 8000), Probation);
        assert_eq!(rx.ssrc(), Some(SSRC + 1));
        assert_eq!(rx.expected(), 0);
    }

    #[test]
    fn reordering_and_duplicates() {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        let statuses = feed(&mut rx, t0, &[200, 201, 203, 202, 202, 203, 201]);
        assert_eq!(
            statuses,
            [
                Probation, InOrder, InOrder, Reordered, Duplicate, Duplicate, Duplicate
            ]
        );
        assert_eq!(
            (rx.expected(), rx.received(), rx.cumulative_lost()),
            (3, 3, 0)
        );
        assert_eq!((rx.duplicates(), rx.packets()), (3, 7));
        assert_eq!(rx.report_block(t0).unwrap().fraction_lost, 0);
    }

    #[test]
    fn sequence_wraps_at_65535() {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        let statuses = feed(&mut rx, t0, &[65_533, 65_534, 65_535, 0, 1]);
        assert_eq!(statuses, [Probation, InOrder, InOrder, InOrder, InOrder]);
        assert_eq!(rx.extended_highest_sequence(), 0x0001_0001);
        assert_eq!((rx.expected(), rx.cumulative_lost()), (4, 0));
        assert_eq!(feed(&mut rx, t0, &[65_535]), [Duplicate], "behind the wrap");
        assert_eq!(feed(&mut rx, t0, &[4]), [InOrder]);
        assert_eq!((rx.expected(), rx.cumulative_lost()), (7, 2));
        assert_eq!(
            rx.report_block(t0).unwrap().extended_highest_sequence,
            0x0001_0004
        );
    }

    #[test]
    fn big_jump_restarts_on_the_second_packet() {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        feed(&mut rx, t0, &[1000, 1001, 1002, 1003, 1004, 1005]);
        // One stray packet far ahead is held back and then forgotten.
        assert_eq!(feed(&mut rx, t0, &[9000, 1006]), [Jump, InOrder]);
        assert_eq!((rx.expected(), rx.received()), (6, 6));
        // Two in a row: the sender restarted. Statistics start over (A.1).
        assert_eq!(
            feed(&mut rx, t0, &[20_000, 20_001, 20_002]),
            [Jump, Restarted, InOrder]
        );
        assert_eq!(
            (rx.expected(), rx.received(), rx.cumulative_lost()),
            (2, 2, 0)
        );
        assert_eq!(rx.extended_highest_sequence(), 20_002);
        // Far behind is a jump too; just under MAX_DROPOUT ahead is loss.
        assert_eq!(feed(&mut rx, t0, &[500]), [Jump]);
        assert_eq!(feed(&mut rx, t0, &[20_002 + 2999]), [InOrder]);
        assert_eq!(rx.cumulative_lost(), 2998);
        // 100 behind is A.1's first "jump" backwards; 99 behind is still reordering.
        assert_eq!(
            feed(&mut rx, t0, &[20_002 + 2999 - 100, 20_002 + 2999 - 99]),
            [Jump, Reordered]
        );
    }

    /// Packets every 20 ms (160 ticks at 8 kHz), each delayed by `delays_ms[i]`.
    fn jitter_after(delays_ms: &[u64]) -> (ReceiverStats, Vec<u32>) {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        let mut jitters = Vec::new();
        for (i, &delay) in delays_ms.iter().enumerate() {
            let at = t0 + Duration::from_millis(20 * i as u64 + delay);
            let seq = 40_000u16.wrapping_add(i as u16);
            rx.on_rtp(at, &header(seq, 7_777 + 160 * i as u32, SSRC), 8000);
            jitters.push(rx.jitter());
        }
        (rx, jitters)
    }

    #[test]
    fn constant_delay_has_no_jitter() {
        let (rx, jitters) = jitter_after(&[30; 100]);
        assert!(jitters.iter().all(|&jitter| jitter == 0));
        assert_eq!(rx.jitter_duration(), Duration::ZERO);
    }

    #[test]
    fn jitter_follows_a8_by_hand() {
        // Delays alternate 0 and 10 ms: every |D(i-1, i)| is 80 ticks. A.8's integer form,
        // J16 += d - (J16 + 8) / 16, reported as J16 / 16:
        //   80 → 5, 80 + 80 - 5 = 155 → 9, 155 + 80 - 10 = 225 → 14.
        let delays: Vec<u64> = (0..400).map(|i| if i % 2 == 0 { 0 } else { 10 }).collect();
        let (mut rx, jitters) = jitter_after(&delays);
        assert_eq!(jitters[..4], [0, 5, 9, 14]);
        // It converges on |D| itself: 80 ticks, 10 ms.
        assert!((78..=80).contains(&rx.jitter()), "{}", rx.jitter());
        let ms = rx.jitter_duration().as_secs_f64() * 1000.0;
        assert!((9.7..=10.0).contains(&ms), "{ms}");
        assert_eq!(rx.report_block(Instant::now()).unwrap().jitter, rx.jitter());
    }

    #[test]
    fn report_block_carries_lsr_and_dlsr() {
        let t0 = Instant::now();
        let mut rx = ReceiverStats::new();
        feed(&mut rx, t0, &[1, 2, 3]);
        rx.on_sender_report(t0, 0xb705_2000);
        let block = rx.report_block(t0 + Duration::from_millis(5250)).unwrap();
        assert_eq!(block.last_sr, 0xb705_2000);
        assert_eq!(
            block.delay_since_last_sr, 0x0005_4000,
            "5.25 s in 1/65536 s"
        );
    }

    #[test]
    fn rtt_follows_the_rfc_3550_example() {
        // §6.4.1: A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000 (46853.125 s),
        // DLSR = 0x0005:4000 (5.250 s): the round trip is 0x0006:2000 (6.125 s).
        let rtt = round_trip_time(0xb710_8000, 0xb705_2000, 0x0005_4000);
        assert_eq!(rtt, Some(Duration::from_millis(6125)));
        assert_eq!(round_trip_time(0xb710_8000, 0, 0), None, "no SR seen yet");
        assert_eq!(
            round_trip_time(0x1000, 0x1000, 0x10),
            Some(Duration::ZERO),
            "rounding"
        );
        assert_eq!(
            round_trip_time(0x1000, 0x1000, 0x10_0000),
            None,
            "lying clocks"
        );
    }

    #[test]
    fn ntp_conversions() {
        assert_eq!(ntp_from_system_time(UNIX_EPOCH), 2_208_988_800 << 32);
        let half = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(
            ntp_from_system_time(half),
            (2_208_988_801 << 32) | 0x8000_0000
        );
        assert_eq!(ntp_middle32(0x1234_5678_9abc_def0), 0x5678_9abc);
        assert_eq!(
            duration_to_ntp_short(Duration::from_millis(5250)),
            0x0005_4000
        );
        assert_eq!(
            ntp_short_to_duration(0x0005_4000),
            Duration::from_millis(5250)
        );
        assert_eq!(
            duration_to_ntp_short(Duration::from_secs(1 << 20)),
            u32::MAX
        );
    }

    #[test]
    fn sender_info_extrapolates_the_rtp_clock() {
        let t0 = Instant::now();
        let mut tx = SenderStats::new();
        tx.on_rtp_sent(t0, &header(1, 1_000, SSRC), 8000);
        tx.on_rtp_sent(
            t0 + Duration::from_millis(20),
            &header(2, 1_160, SSRC),
            8000,
        );
        let info = tx.sender_info(t0 + Duration::from_millis(70), 42);
        assert_eq!(
            info,
            SenderInfo {
                ntp_timestamp: 42,
                rtp_timestamp: 1_160 + 400,
                packet_count: 2,
                octet_count: 320
            }
        );
        assert_eq!(tx.last_rtp_timestamp(), Some(1_160));
        assert!(tx.is_sender());
        tx.on_report_sent();
        assert!(tx.is_sender(), "sent during the previous interval");
        tx.on_report_sent();
        assert!(!tx.is_sender());
    }

    fn block(ssrc: u32, cumulative_lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost,
            extended_highest_sequence: 0x0002_0010,
            jitter: 123,
            last_sr: 0xb705_2000,
            delay_since_last_sr: 0x0005_4000,
        }
    }

    #[test]
    fn sr_sdes_bye_round_trip() {
        let mut buffer = [0xAA; 1500];
        let info = SenderInfo {
            ntp_timestamp: 0xdead_beef_0123_4567,
            rtp_timestamp: 160_000,
            packet_count: 1000,
            octet_count: 160_000,
        };
        let blocks = [block(1, -5), block(2, 0x7f_ffff)];
        let mut len = write_sender_report(&mut buffer, SSRC, &info, &blocks).unwrap();
        assert_eq!(len, 28 + 2 * 24);
        let sdes = write_sdes_cname(&mut buffer[len..], SSRC, b"alice@example.com").unwrap();
        assert_eq!(sdes, 4 + 24, "17 bytes of CNAME pad to a 24-byte chunk");
        len += sdes;
        let bye = write_bye(&mut buffer[len..], &[SSRC], Some(b"bye now")).unwrap();
        assert_eq!(bye, 4 + 4 + 8);
        len += bye;

        let compound = Compound::parse(&buffer[..len]).unwrap();
        let packets: Vec<_> = compound.packets().collect();
        assert_eq!(packets.len(), 3);
        let RtcpPacket::SenderReport(sr) = packets[0] else {
            panic!("{:?}", packets[0]);
        };
        assert_eq!((sr.ssrc(), sr.sender_info()), (SSRC, info));
        assert_eq!(sr.report_blocks().collect::<Vec<_>>(), blocks);
        let RtcpPacket::SourceDescription(sdes) = packets[1] else {
            panic!("{:?}", packets[1]);
        };
        assert_eq!(sdes.cname(SSRC), Some(&b"alice@example.com"[..]));
        assert_eq!(sdes.cname(SSRC + 1), None);
        let chunk = sdes.chunks().next().unwrap();
        assert_eq!(
            chunk.items().collect::<Vec<_>>(),
            [SdesItem {
                kind: SDES_CNAME,
                text: b"alice@example.com"
            }]
        );
        let RtcpPacket::Bye(bye) = packets[2] else {
            panic!("{:?}", packets[2]);
        };
        assert_eq!(bye.sources().collect::<Vec<_>>(), [SSRC]);
        assert_eq!(bye.reason(), Some(&b"bye now"[..]));
    }

    #[test]
    fn rr_round_trip_and_unknown_types() {
        let mut buffer = [0; 200];
        let len = write_receiver_report(&mut buffer, SSRC, &[]).unwrap();
        assert_eq!(len, 8);
        let len = len + write_receiver_report(&mut buffer[len..], SSRC, &[block(9, -1)]).unwrap();
        // An RTP/AVPF generic NACK (RFC 4585 §6.2.1), passed through unchecked.
        let nack = [0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 7, 0, 0];
        buffer[len..len + nack.len()].copy_from_slice(&nack);
        let packets: Vec<_> = Compound::parse(&buffer[..len + nack.len()])
            .unwrap()
            .packets()
            .collect();
        let [
            RtcpPacket::ReceiverReport(empty),
            RtcpPacket::ReceiverReport(rr),
            other,
        ] = packets[..]
        else {
            panic!("{packets:?}");
        };
        assert_eq!(empty.report_blocks().count(), 0);
        assert_eq!(
            (rr.ssrc(), rr.report_blocks().collect::<Vec<_>>()),
            (SSRC, vec![block(9, -1)])
        );
        assert_eq!(
            other,
            RtcpPacket::Other {
                packet_type: 205,
                count: 1,
                body: &nack[4..]
            }
        );
    }

    #[test]
    fn padding_only_on_the_last_packet() {
        let mut buffer = [0; 64];
        let rr = write_receiver_report(&mut buffer, SSRC, &[]).unwrap();
        let sdes = write_sdes_cname(&mut buffer[rr..], SSRC, b"x").unwrap();
        let len = rr + sdes;
        // Pad the SDES with 4 bytes: P bit, one more word, the count in the last byte.
        buffer[rr] |= 0x20;
        buffer[rr + 3] += 1;
        buffer[len + 3] = 4;
        let compound = Compound::parse(&buffer[..len + 4]).unwrap();
        let RtcpPacket::SourceDescription(sdes) = compound.packets().nth(1).unwrap() else {
            panic!();
        };
        assert_eq!(sdes.cname(SSRC), Some(&b"x"[..]));
        // Padding on the first packet of two is invalid (A.2).
        let mut bad = buffer;
        bad[0] |= 0x20;
        assert_eq!(Compound::parse(&bad[..len + 4]), Err(RtcpError::Padding));
        // Padding longer than the packet is too.
        buffer[len + 3] = 40;
        assert_eq!(Compound::parse(&buffer[..len + 4]), Err(RtcpError::Padding));
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(Compound::parse(&[]), Err(RtcpError::Truncated));
        assert_eq!(Compound::parse(&[0x80, 201, 0]), Err(RtcpError::Truncated));
        assert_eq!(Compound::parse(&[0x40, 201, 0, 0]), Err(RtcpError::Version));
        // The length says two words; one is there.
        assert_eq!(
            Compound::parse(&[0x80, 201, 0, 2, 0, 0, 0, 1]),
            Err(RtcpError::Truncated)
        );
        // Two report blocks counted, none present.
        assert_eq!(
            Compound::parse(&[0x82, 201, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::ReportCount)
        );
        // An SR too short for its sender info.
        assert_eq!(
            Compound::parse(&[0x80, 200, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::Truncated)
        );
        // SDES whose item runs on without a null terminator.
        assert_eq!(
            Compound::parse(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 2, b'a', b'b']),
            Err(RtcpError::Sdes)
        );
        // BYE counting two sources, holding one; BYE whose reason overruns.
        assert_eq!(
            Compound::parse(&[0x82, 203, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::Bye)
        );
        assert_eq!(
            Compound::parse(&[0x80, 203, 0, 1, 9, b'a', b'b', b'c']),
            Err(RtcpError::Bye)
        );
        // Stray bytes after a valid packet.
        assert_eq!(
            Compound::parse(&[0x80, 201, 0, 1, 0, 0, 0, 1, 0x80]),
            Err(RtcpError::Truncated)
        );
    }

    #[test]
    fn builders_check_their_limits() {
        let mut small = [0; 27];
        let info = SenderInfo::default();
        assert_eq!(
            write_sender_report(&mut small, SSRC, &info, &[]),
            Err(BuildError::BufferTooSmall)
        );
        let mut buffer = [0; 2000];
        let blocks = [ReportBlock::default(); MAX_COUNT + 1];
        assert_eq!(
            write_receiver_report(&mut buffer, SSRC, &blocks),
            Err(BuildError::TooMany)
        );
        assert_eq!(
            write_receiver_report(&mut buffer, SSRC, &blocks[..MAX_COUNT]),
            Ok(8 + 31 * 24)
        );
        assert_eq!(
            write_sdes_cname(&mut buffer, SSRC, &[b'a'; 256]),
            Err(BuildError::TooLong)
        );
        assert_eq!(
            write_bye(&mut buffer, &[0; 32], None),
            Err(BuildError::TooMany)
        );
        assert_eq!(
            write_bye(&mut buffer, &[1], Some(&[b'a'; 256])),
            Err(BuildError::TooLong)
        );
        assert!(RtcpSession::new(Instant::now(), 1, &"a".repeat(256), 0).is_err());
    }

    /// NTP wallclock of a virtual instant.
    fn ntp_at(t0: Instant, now: Instant) -> u64 {
        ntp_from_system_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (now - t0))
    }

    fn packet_types(packet: &[u8]) -> Vec<u8> {
        Compound::parse(packet)
            .unwrap()
            .packets()
            .map(|packet| match packet {
                RtcpPacket::SenderReport(_) => PT_SENDER_REPORT,
                RtcpPacket::ReceiverReport(_) => PT_RECEIVER_REPORT,
                RtcpPacket::SourceDescription(_) => PT_SOURCE_DESCRIPTION,
                RtcpPacket::Bye(_) => PT_BYE,
                RtcpPacket::Other { packet_type, .. } => packet_type,
            })
            .collect()
    }

    #[test]
    fn session_schedules_and_chooses_sr_or_rr() {
        let t0 = Instant::now();
        let mut session = RtcpSession::new(t0, SSRC, "a@example.net", 7).unwrap();
        let first = session.poll_timeout().unwrap();
        assert!(
            first >= t0 + Duration::from_millis(1250) && first < t0 + Duration::from_millis(3750)
        );
        assert!(!session.handle_timeout(first - Duration::from_millis(1)));
        assert!(session.handle_timeout(first));
        let mut buffer = [0; 1500];
        // Nothing sent, nothing heard: an empty RR and our CNAME.
        let len = session
            .build_report(first, ntp_at(t0, first), &mut buffer)
            .unwrap();
        assert_eq!(
            packet_types(&buffer[..len]),
            [PT_RECEIVER_REPORT, PT_SOURCE_DESCRIPTION]
        );
        let next = session.poll_timeout().unwrap();
        assert!(
            next >= first + Duration::from_millis(2500)
                && next < first + Duration::from_millis(7500)
        );
        // A too-small buffer changes nothing.
        assert_eq!(
            session.build_report(next, 0, &mut buffer[..20]),
            Err(BuildError::BufferTooSmall)
        );
        assert_eq!(session.poll_timeout(), Some(next));

        session.on_rtp_sent(next, &header(1, 160, SSRC), 8000);
        let mut at = next;
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let len = session
                .build_report(at, ntp_at(t0, at), &mut buffer)
                .unwrap();
            kinds.push(packet_types(&buffer[..len])[0]);
            at = session.poll_timeout().unwrap();
        }
        // SR while we sent in this interval or the one before (§6.4), then RR again.
        assert_eq!(
            kinds,
            [PT_SENDER_REPORT, PT_SENDER_REPORT, PT_RECEIVER_REPORT]
        );
        // Different seeds spread the intervals.
        let other = RtcpSession::new(t0, SSRC, "a@example.net", 8).unwrap();
        assert_ne!(other.poll_timeout(), Some(first));
    }

    #[test]
    fn two_sessions_measure_rtt_loss_and_jitter() {
        let t0 = Instant::now();
        let one_way = Duration::from_millis(40);
        let mut a = RtcpSession::new(t0, 0xA, "a@example.net", 1).unwrap();
        let mut b = RtcpSession::new(t0, 0xB, "b@example.net", 2).unwrap();
        let mut in_flight: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let mut buffer = [0; 1500];
        for i in 0..600u32 {
            let now = t0 + Duration::from_millis(20) * i;
            // RTP both ways; every tenth of A's packets is lost on the way to B.
            let seq = 10_000u16.wrapping_add(i as u16);
            let from_a = header(seq, 160 * i, 0xA);
            a.on_rtp_sent(now, &from_a, 8000);
            if i % 10 != 5 {
                b.on_rtp_received(now + one_way, &from_a, 8000);
            }
            let from_b = header(seq, 80_000 + 160 * i, 0xB);
            b.on_rtp_sent(now, &from_b, 8000);
            a.on_rtp_received(now + one_way, &from_b, 8000);
            // RTCP: deliver what arrives now, then report if due.
            for (_, to_b, packet) in in_flight.extract_if(.., |(at, _, _)| *at <= now) {
                let to = if to_b { &mut b } else { &mut a };
                to.receive_rtcp(now, ntp_at(t0, now), &packet).unwrap();
            }
            for (session, to_b) in [(&mut a, true), (&mut b, false)] {
                if session.handle_timeout(now) {
                    let len = session
                        .build_report(now, ntp_at(t0, now), &mut buffer)
                        .unwrap();
                    in_flight.push((now + one_way, to_b, buffer[..len].to_vec()));
                }
            }
        }
        let (a, b) = (a.stats(), b.stats());
        for rtt in [a.rtt_ms, b.rtt_ms] {
            let rtt = rtt.expect("both sides heard a block about their SR");
            assert!((rtt - 80.0).abs() < 0.1, "{rtt}");
        }
        // B lost a tenth of A's stream and told A so.
        assert!((b.fraction_lost - 0.1).abs() < 0.02, "{}", b.fraction_lost);
        assert!(b.packets_lost >= 50, "{}", b.packets_lost);
        let remote_fraction = a.remote_fraction_lost.unwrap();
        assert!((remote_fraction - 0.1).abs() < 0.02, "{remote_fraction}");
        assert!(a.remote_packets_lost.unwrap() > 0);
        assert_eq!(
            (a.packets_lost, a.remote_jitter_ms, b.jitter_ms),
            (0, Some(0.0), 0.0)
        );
        assert_eq!(
            (a.packets_sent, a.bytes_sent, b.packets_received),
            (600, 96_000, 540)
        );
    }

    #[test]
    fn bye_closes_and_is_heard() {
        let t0 = Instant::now();
        let mut a = RtcpSession::new(t0, 0xA, "a@example.net", 1).unwrap();
        let mut b = RtcpSession::new(t0, 0xB, "b@example.net", 2).unwrap();
        for seq in 0..3 {
            let packet = header(seq, u32::from(seq) * 160, 0xA);
            a.on_rtp_sent(t0, &packet, 8000);
            b.on_rtp_received(t0, &packet, 8000);
        }
        let mut buffer = [0; 1500];
        let len = a
            .build_bye(t0, ntp_at(t0, t0), Some("hangup"), &mut buffer)
            .unwrap();
        assert_eq!(
            packet_types(&buffer[..len]),
            [PT_SENDER_REPORT, PT_SOURCE_DESCRIPTION, PT_BYE]
        );
        assert_eq!(a.poll_timeout(), None);
        assert!(!a.handle_timeout(t0 + Duration::from_secs(60)));
        assert_eq!(
            b.receive_rtcp(t0, ntp_at(t0, t0), &buffer[5..len]),
            Err(RtcpError::Version)
        );
        assert!(!b.remote_bye());
        b.receive_rtcp(t0, ntp_at(t0, t0), &buffer[..len]).unwrap();
        assert!(b.remote_bye());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..400)) {
            walk(&bytes);
        }

        #[test]
        fn parsing_well_framed_garbage_never_panics(
            packets in vec(
                (196u8..=206, any::<u8>(), vec(any::<u8>(), 0..40)),
                1..5,
            ),
        ) {
            // Valid headers and lengths around random bodies reach the inner parsers.
            let mut bytes = Vec::new();
            for (packet_type, first, body) in packets {
                let words = body.len().div_ceil(4);
                bytes.extend_from_slice(&[0x80 | (first & 0x3f), packet_type]);
                bytes.extend_from_slice(&(words as u16).to_be_bytes());
                bytes.extend_from_slice(&body);
                bytes.resize(bytes.len() + (words * 4 - body.len()), 0);
            }
            walk(&bytes);
        }

        #[test]
        fn report_blocks_round_trip(
            ssrc: u32, fraction_lost: u8, lost in -0x80_0000..=0x7f_ffffi32,
            highest: u32, jitter: u32, last_sr: u32, delay: u32,
        ) {
            let block = ReportBlock {
                ssrc, fraction_lost, cumulative_lost: lost,
                extended_highest_sequence: highest, jitter, last_sr, delay_since_last_sr: delay,
            };
            prop_assert_eq!(ReportBlock::from_bytes(&block.to_bytes()), block);
        }

        #[test]
        fn sdes_and_bye_text_round_trips(cname in vec(1u8..=255, 0..=255), ssrc: u32) {
            let mut buffer = [0; 600];
            let len = write_sdes_cname(&mut buffer, ssrc, &cname).unwrap();
            let len = len + write_bye(&mut buffer[len..], &[ssrc], Some(&cname)).unwrap();
            prop_assert_eq!(len % 4, 0);
            let packets: Vec<_> = Compound::parse(&buffer[..len]).unwrap().packets().collect();
            let [RtcpPacket::SourceDescription(sdes), RtcpPacket::Bye(bye)] = packets[..] else {
                panic!("{packets:?}");
            };
            prop_assert_eq!(sdes.cname(ssrc), Some(&cname[..]));
            let reason = if cname.is_empty() { None } else { Some(&cname[..]) };
            prop_assert_eq!(bye.reason(), reason);
        }

        #[test]
        fn loss_is_the_sum_of_gaps(start: u16, steps in vec(1u16..50, 1..300)) {
            let t0 = Instant::now();
            let mut rx = ReceiverStats::new();
            let mut seq = start;
            feed(&mut rx, t0, &[seq, seq.wrapping_add(1)]);
            seq = seq.wrapping_add(1);
            let mut gaps = 0;
            for step in steps {
                seq = seq.wrapping_add(step);
                gaps += i64::from(step - 1);
                prop_assert_eq!(feed(&mut rx, t0, &[seq]), [InOrder]);
            }
            prop_assert_eq!(rx.cumulative_lost(), gaps);
            let block = rx.report_block(t0).unwrap();
            prop_assert_eq!(block.extended_highest_sequence & 0xffff, u32::from(seq));
        }

        #[test]
        fn receiver_stats_survive_any_sequence(
            packets in vec((any::<u16>(), 0u32..3, any::<u32>(), 0u64..100), 0..200),
        ) {
            let t0 = Instant::now();
            let mut rx = ReceiverStats::new();
            for (i, (seq, ssrc, timestamp, delay)) in packets.into_iter().enumerate() {
                let at = t0 + Duration::from_millis(20 * i as u64 + delay);
                rx.on_rtp(at, &header(seq, timestamp, ssrc), 8000);
                if i % 17 == 0 {
                    rx.on_sender_report(at, timestamp);
                    if let Some(block) = rx.report_block(at) {
                        prop_assert_eq!(Some(block.ssrc), rx.ssrc());
                    }
                }
            }
        }
    }

    /// Parses and reads everything, as a receiver would.
    fn walk(bytes: &[u8]) {
        let Ok(compound) = Compound::parse(bytes) else {
            return;
        };
        for packet in compound.packets() {
            match packet {
                RtcpPacket::SenderReport(sr) => {
                    let _ = sr.sender_info();
                    assert!(sr.report_blocks().count() <= MAX_COUNT);
                }
                RtcpPacket::ReceiverReport(rr) => assert!(rr.report_blocks().count() <= MAX_COUNT),
                RtcpPacket::SourceDescription(sdes) => {
                    for chunk in sdes.chunks() {
                        let _ = chunk.cname();
                        assert!(chunk.items().all(|item| item.kind != 0));
                    }
                }
                RtcpPacket::Bye(bye) => {
                    let _ = (bye.sources().count(), bye.reason());
                }
                RtcpPacket::Other { body, .. } => assert!(body.len() <= bytes.len()),
            }
        }
    }
}
