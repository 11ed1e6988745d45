//! The forwarding core of a bridged call: two legs, packets in, rewritten packets out.
//!
//! Each leg is one endpoint's media: the address its SDP announced, the address it actually
//! sends from (symmetric RTP latching, RFC 4961 practice for NAT), and the stream we send it.
//! A packet from leg A is checked against A's latching policy, rewritten in place and sent to
//! B's address. The stream each leg receives keeps one SSRC and continuous sequence numbers
//! and timestamps even when the other side's source changes (a re-INVITE to another phone, a
//! transfer, re-bridging): on a new incoming SSRC the offsets are recomputed so numbering
//! continues, and the marker bit flags the new talk spurt. The SSRC a leg receives is the one
//! of the first stream forwarded to it (transparent, as rtpengine does without transcoding),
//! unless we reported under our own SSRC before that stream came.
//!
//! No allocation and no lock per packet: [`Bridge::forward`] works on the caller's buffer.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::dtmf::{Digit, DtmfError, DtmfEvent, DtmfReceiver, DtmfSender};
use crate::quality::{self, Codec};
use crate::rtcp::{self, RtcpSession};
use crate::rtp::{self, RtpHeader};

/// DTMF events held per leg until polled.
const DTMF_QUEUE: usize = 8;

/// Which leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller's leg.
    A,
    /// The callee's leg.
    B,
}

impl Side {
    /// The other leg.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// How strictly a leg accepts packets from addresses other than its SDP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latching {
    /// Latch to the first source (phones behind NAT send from an address their SDP can't
    /// know). Afterwards, only that source is accepted.
    FirstSource,
    /// Latch to the first source with the IP address of the SDP (any port).
    SameAddress,
    /// Only the SDP address and port are accepted (no latching).
    Strict,
}

/// Why a packet was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not RTP (or RTCP on an RTP-only path).
    Malformed,
    /// From an address the leg's latching refuses: possible injection.
    ForeignSource,
    /// The other leg has no address to send to yet.
    NoDestination,
}

/// Counters of one leg (what it sent us, what we sent it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegStats {
    /// RTP packets received from this leg.
    pub packets_in: u64,
    /// Payload bytes received from this leg.
    pub bytes_in: u64,
    /// RTP packets forwarded to this leg.
    pub packets_out: u64,
    /// Packets dropped because of their source.
    pub foreign: u64,
    /// Packets dropped as malformed.
    pub malformed: u64,
}

/// One leg's addresses and the stream we send it.
#[derive(Clone, Debug)]
pub struct Leg {
    latching: Latching,
    /// Address from the SDP, if known.
    expected: Option<SocketAddr>,
    /// Where packets from this leg really come from (and where we send).
    latched: Option<SocketAddr>,
    /// The SSRC of the stream we send to this leg: our fallback until the first forwarded
    /// stream's is adopted (`adopted`).
    out_ssrc: u32,
    adopted: bool,
    /// Whether we sent this leg an RTCP report (its SSRC is then fixed).
    reported: bool,
    /// Offsets from the incoming stream to ours.
    seq_offset: u16,
    ts_offset: u32,
    /// The incoming SSRC the offsets were computed for.
    source_ssrc: Option<u32>,
    last_sent: Option<(u16, u32, Instant)>,
    clock_rate: u32,
    stats: LegStats,
    last_received: Option<Instant>,
    /// Our RTCP with this leg: reports on what it sends us and what we send it (set up by
    /// [`Bridge::new`]).
    rtcp: Option<RtcpSession>,
    /// Where this leg sends RTCP from (latched), and whether on its RTP port (RFC 5761 mux).
    rtcp_source: Option<SocketAddr>,
    rtcp_mux: bool,
    /// RFC 4733 events this leg sends us, when its SDP negotiated telephone-event.
    dtmf_in: Option<DtmfReceiver>,
    /// Events taken from the receiver and not handed out yet (bounded: a caller that never
    /// polls loses events, never memory).
    dtmf_events: VecDeque<DtmfEvent>,
    /// Events we send this leg (SIP INFO from the other leg, converted), with the payload
    /// type it negotiated and the RTP timestamp of the event being sent.
    dtmf_out: Option<DtmfOut>,
}

/// DTMF we send a leg.
#[derive(Clone, Debug)]
struct DtmfOut {
    sender: DtmfSender,
    payload_type: u8,
    /// The event being sent: when it started, and its RTP timestamp.
    event: Option<(Instant, u32)>,
}

impl Leg {
    /// When we last sent this leg a packet (forwarded or our own).
    pub fn last_sent_at(&self) -> Option<Instant> {
        self.last_sent.map(|(_, _, at)| at)
    }

    /// A leg whose SDP announced `expected`, receiving a stream at `clock_rate` Hz with the
    /// SSRC of the first source forwarded to it, or `out_ssrc` if we report first.
    pub fn new(
        expected: Option<SocketAddr>,
        latching: Latching,
        out_ssrc: u32,
        clock_rate: u32,
    ) -> Self {
        Self {
            latching,
            expected,
            latched: None,
            out_ssrc,
            adopted: false,
            reported: false,
            seq_offset: 0,
            ts_offset: 0,
            source_ssrc: None,
            last_sent: None,
            clock_rate: clock_rate.max(1),
            stats: LegStats::default(),
            last_received: None,
            rtcp: None,
            rtcp_source: None,
            rtcp_mux: false,
            dtmf_in: None,
            dtmf_events: VecDeque::new(),
            dtmf_out: None,
        }
    }

    /// The telephone-event payload type this leg negotiated (RFC 4733 §7.1.1), if any: its
    /// events are reported (and still relayed), and events can be sent to it.
    pub fn set_dtmf_payload_type(&mut self, payload_type: Option<u8>) {
        match payload_type {
            Some(pt) => {
                let mut receiver = DtmfReceiver::new(pt);
                receiver.set_clock_rate(self.clock_rate);
                self.dtmf_in = Some(receiver);
                self.dtmf_events = VecDeque::with_capacity(DTMF_QUEUE);
                let mut sender = DtmfSender::new();
                sender.set_clock_rate(self.clock_rate);
                self.dtmf_out = Some(DtmfOut {
                    sender,
                    payload_type: pt,
                    event: None,
                });
            }
            None => {
                self.dtmf_in = None;
                self.dtmf_out = None;
            }
        }
    }

    /// The RTP timestamp this leg's stream has at `now` (continuing from the last packet we
    /// sent it at the clock rate), and the next sequence number, which is taken: forwarded
    /// packets continue after it.
    fn take_sequence(&mut self, now: Instant) -> (u16, u32) {
        let (seq, ts) = match self.last_sent {
            Some((seq, ts, at)) => {
                let elapsed = now.saturating_duration_since(at);
                let ticks = (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000) as u32;
                (seq.wrapping_add(1), ts.wrapping_add(ticks))
            }
            None => (0, 0),
        };
        self.seq_offset = self.seq_offset.wrapping_add(1);
        self.last_sent = Some((seq, ts, now));
        // Our packets carry our SSRC: a stream forwarded later keeps it.
        self.adopted = true;
        (seq, ts)
    }

    /// Where RTCP for this leg goes: where it sends its RTCP from, else (RFC 3550 §11) the
    /// port after its RTP port, or the RTP port itself when it multiplexes (RFC 5761).
    pub fn rtcp_destination(&self) -> Option<(SocketAddr, bool)> {
        if let Some(source) = self.rtcp_source {
            return Some((source, self.rtcp_mux));
        }
        let rtp = self.destination()?;
        Some((SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)), false))
    }

    /// RTCP statistics of this leg: what it sent us (loss, jitter), what we sent it, the
    /// round-trip time and what it reported about our stream.
    pub fn rtcp_stats(&self) -> rtcp::Stats {
        self.rtcp
            .as_ref()
            .map(RtcpSession::stats)
            .unwrap_or_default()
    }

    /// A MOS estimate (ITU-T G.107 E-model) of the audio this leg sent us: its loss and
    /// jitter, with the round-trip time when known. `None` before any audio.
    pub fn mos(&self) -> Option<f64> {
        let stats = self.rtcp_stats();
        let lost = u64::try_from(stats.packets_lost.max(0)).unwrap_or(0);
        let expected = stats.packets_received + lost;
        if expected == 0 {
            return None;
        }
        let loss = lost as f64 / expected as f64;
        Some(quality::estimate_mos(
            loss,
            stats.jitter_ms,
            stats.rtt_ms,
            Codec::G711,
        ))
    }

    /// A new SDP from this endpoint (re-INVITE): new expected address; latching starts over.
    pub fn update_expected(&mut self, expected: Option<SocketAddr>) {
        if expected != self.expected {
            self.expected = expected;
            self.latched = None;
        }
    }

    /// Where packets for this leg go.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.expected)
    }

    /// The counters.
    pub fn stats(&self) -> LegStats {
        self.stats
    }

    fn accepts(&mut self, source: SocketAddr) -> bool {
        if let Some(latched) = self.latched {
            return latched == source;
        }
        let ok = match (self.latching, self.expected) {
            (Latching::FirstSource, _) => true,
            (Latching::SameAddress, Some(expected)) => same_ip(expected.ip(), source.ip()),
            (Latching::SameAddress, None) => true,
            (Latching::Strict, Some(expected)) => expected == source,
            (Latching::Strict, None) => false,
        };
        if ok && self.latching != Latching::Strict {
            self.latched = Some(source);
        }
        ok
    }

    /// Rewrites an incoming packet of the other leg into this leg's stream.
    fn rewrite(&mut self, now: Instant, packet: &mut [u8], header: &RtpHeader) {
        if !self.adopted && !self.reported {
            self.out_ssrc = header.ssrc;
            if let Some(rtcp) = &mut self.rtcp {
                rtcp.set_ssrc(header.ssrc);
            }
        }
        self.adopted = true;
        if self.source_ssrc != Some(header.ssrc) {
            // A new source: continue our numbering from where it stopped. The timestamp jumps
            // by the wall-clock time since our last packet (at least one 20 ms frame).
            let (seq, ts) = match self.last_sent {
                Some((seq, ts, at)) => {
                    let elapsed = now
                        .saturating_duration_since(at)
                        .max(Duration::from_millis(20));
                    let ticks =
                        (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000) as u32;
                    (seq.wrapping_add(1), ts.wrapping_add(ticks))
                }
                None => (header.sequence, header.timestamp),
            };
            self.seq_offset = seq.wrapping_sub(header.sequence);
            self.ts_offset = ts.wrapping_sub(header.timestamp);
            if self.source_ssrc.is_some() {
                packet[1] |= 0x80; // marker: a new talk spurt
            }
            self.source_ssrc = Some(header.ssrc);
        }
        let sequence = header.sequence.wrapping_add(self.seq_offset);
        let timestamp = header.timestamp.wrapping_add(self.ts_offset);
        rtp::rewrite(packet, self.out_ssrc, sequence, timestamp);
        self.last_sent = Some((sequence, timestamp, now));
        self.stats.packets_out += 1;
        if let Some(rtcp) = &mut self.rtcp {
            let sent = RtpHeader {
                ssrc: self.out_ssrc,
                sequence,
                timestamp,
                ..*header
            };
            rtcp.on_rtp_sent(now, &sent, self.clock_rate);
        }
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

/// Events of a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeEvent {
    /// Neither leg sent anything for the inactivity timeout (and the call is not on hold).
    Inactive,
}

/// Two legs forwarding to each other.
#[derive(Clone, Debug)]
pub struct Bridge {
    a: Leg,
    b: Leg,
    inactivity: Duration,
    on_hold: bool,
    started: Instant,
    reported_inactive: bool,
}

impl Bridge {
    /// A bridge created at `now`; it reports [`BridgeEvent::Inactive`] after `inactivity`
    /// without media from either leg.
    pub fn new(now: Instant, mut a: Leg, mut b: Leg, inactivity: Duration) -> Self {
        for leg in [&mut a, &mut b] {
            // RFC 7022: a CNAME unique to the session; the SSRC is ours and unique per port.
            let cname = format!("{:08x}@switchboard", leg.out_ssrc);
            leg.rtcp = RtcpSession::new(now, leg.out_ssrc, &cname, leg.out_ssrc).ok();
        }
        Self {
            a,
            b,
            inactivity,
            on_hold: false,
            started: now,
            reported_inactive: false,
        }
    }

    /// A leg.
    pub fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// A leg, to update after a re-INVITE.
    pub fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Marks the call held (no inactivity timeout while held) or resumed.
    pub fn set_hold(&mut self, now: Instant, held: bool) {
        self.on_hold = held;
        if !held {
            self.started = now;
            self.reported_inactive = false;
        }
    }

    /// Handles an RTP packet that arrived on `side`'s socket from `source`: on success the
    /// packet has been rewritten in place and must be sent to the returned address from the
    /// other leg's socket.
    pub fn forward(
        &mut self,
        now: Instant,
        side: Side,
        source: SocketAddr,
        packet: &mut [u8],
    ) -> Result<SocketAddr, Refused> {
        let (from, to) = match side {
            Side::A => (&mut self.a, &mut self.b),
            Side::B => (&mut self.b, &mut self.a),
        };
        let Ok(header) = RtpHeader::parse(packet) else {
            from.stats.malformed += 1;
            return Err(Refused::Malformed);
        };
        if !from.accepts(source) {
            from.stats.foreign += 1;
            return Err(Refused::ForeignSource);
        }
        from.stats.packets_in += 1;
        from.stats.bytes_in += header.payload_len as u64;
        from.last_received = Some(now);
        if let Some(rtcp) = &mut from.rtcp {
            rtcp.on_rtp_received(now, &header, from.clock_rate);
        }
        if let Some(receiver) = &mut from.dtmf_in
            && header.payload_type == receiver.payload_type()
        {
            let payload = &packet[header.payload_offset..][..header.payload_len];
            // Events are queued in the receiver; `poll_dtmf` hands them out.
            if let Some(event) = receiver.receive(now, &header, payload)
                && from.dtmf_events.len() < DTMF_QUEUE
            {
                from.dtmf_events.push_back(event);
            }
        }
        let destination = to.destination().ok_or(Refused::NoDestination)?;
        to.rewrite(now, packet, &header);
        Ok(destination)
    }

    /// Handles RTCP that arrived on `side`'s RTCP socket (or its RTP socket, `mux`) from
    /// `source`. RTCP is terminated per leg, not relayed: the other leg's reports describe
    /// streams this leg never sees (we rewrite SSRCs), so each leg gets our own reports.
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        ntp: u64,
        side: Side,
        source: SocketAddr,
        packet: &[u8],
        mux: bool,
    ) -> Result<(), Refused> {
        let leg = self.leg_mut(side);
        let trusted = match leg.latched.or(leg.expected) {
            // Same host as its RTP (RTCP comes from another port unless multiplexed).
            Some(rtp) => same_ip(rtp.ip(), source.ip()),
            None => leg.latching != Latching::Strict,
        };
        if !trusted {
            leg.stats.foreign += 1;
            return Err(Refused::ForeignSource);
        }
        let Some(rtcp) = &mut leg.rtcp else {
            return Ok(());
        };
        if rtcp.receive_rtcp(now, ntp, packet).is_err() {
            leg.stats.malformed += 1;
            return Err(Refused::Malformed);
        }
        leg.rtcp_source = Some(source);
        leg.rtcp_mux = mux;
        Ok(())
    }

    /// The next DTMF event a leg sent (RFC 4733): which leg, and the event (a key going down,
    /// or up with its duration). Call until `None` after every packet and timeout.
    pub fn poll_dtmf(&mut self) -> Option<(Side, DtmfEvent)> {
        for side in [Side::A, Side::B] {
            let leg = self.leg_mut(side);
            if let Some(event) = leg.dtmf_events.pop_front() {
                return Some((side, event));
            }
            if let Some(event) = leg.dtmf_in.as_mut().and_then(DtmfReceiver::poll_event) {
                return Some((side, event));
            }
        }
        None
    }

    /// When a DTMF receiver gives up waiting for an event's end (then call
    /// [`Self::handle_dtmf_timeout`]).
    pub fn dtmf_timeout(&self) -> Option<Instant> {
        [&self.a, &self.b]
            .into_iter()
            .filter_map(|leg| leg.dtmf_in.as_ref()?.poll_timeout())
            .min()
    }

    /// When the next DTMF packet for `side` is due (see [`Self::poll_dtmf_transmit`]); `None`
    /// when nothing is being sent.
    pub fn dtmf_send_timeout(&self, side: Side) -> Option<Instant> {
        self.leg(side).dtmf_out.as_ref()?.sender.poll_timeout()
    }

    /// Ends DTMF events whose end packets never came (then poll `poll_dtmf`).
    pub fn handle_dtmf_timeout(&mut self, now: Instant) {
        for leg in [&mut self.a, &mut self.b] {
            if let Some(receiver) = &mut leg.dtmf_in
                && let Some(event) = receiver.handle_timeout(now)
                && leg.dtmf_events.len() < DTMF_QUEUE
            {
                leg.dtmf_events.push_back(event);
            }
        }
    }

    /// Queues `digit` to be sent to `side` as RFC 4733 events in its stream (a SIP INFO
    /// from the other leg, converted). Fails if the leg negotiated no telephone-event or the
    /// queue is full.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        side: Side,
        digit: Digit,
        duration: Duration,
    ) -> Result<(), DtmfError> {
        let Some(out) = &mut self.leg_mut(side).dtmf_out else {
            return Err(DtmfError::UnsupportedContentType);
        };
        out.sender.start(now, digit, duration, 10)
    }

    /// The next RFC 4733 packet due for `side`, written into `buffer`: its length and where
    /// to send it (from `side`'s own RTP socket).
    pub fn poll_dtmf_transmit(
        &mut self,
        now: Instant,
        side: Side,
        buffer: &mut Vec<u8>,
    ) -> Option<(usize, SocketAddr)> {
        let leg = self.leg_mut(side);
        let destination = leg.destination()?;
        let event = leg.dtmf_out.as_mut()?.sender.poll_transmit(now)?;
        let (sequence, current) = leg.take_sequence(now);
        let out = leg.dtmf_out.as_mut()?;
        // Every packet of an event carries the timestamp of its start (RFC 4733 §2.2.1).
        let start_ts = match out.event {
            Some((at, ts)) if at == event.event_start => ts,
            _ => {
                out.event = Some((event.event_start, current));
                current
            }
        };
        rtp::build(
            buffer,
            out.payload_type,
            event.marker,
            sequence,
            event.timestamp(start_ts),
            leg.out_ssrc,
            &event.payload,
        );
        Some((buffer.len(), destination))
    }

    /// One packet of our own audio for `side` (a prompt the call is played), in its stream:
    /// `payload` of `payload_type`, `samples` long, written into `buffer`. Returns its length
    /// and where to send it (from `side`'s own RTP socket); `None` while the leg has no
    /// address. Timestamps advance by whole frames of the wall-clock time since our last
    /// packet, so a stream forwarded later continues from them.
    #[allow(clippy::too_many_arguments)]
    pub fn audio_transmit(
        &mut self,
        now: Instant,
        side: Side,
        payload_type: u8,
        marker: bool,
        payload: &[u8],
        samples: u32,
        buffer: &mut Vec<u8>,
    ) -> Option<(usize, SocketAddr)> {
        let leg = self.leg_mut(side);
        let destination = leg.destination()?;
        let samples = samples.max(1);
        let (sequence, timestamp) = match leg.last_sent {
            Some((seq, ts, at)) => {
                let elapsed = now.saturating_duration_since(at);
                let ticks = elapsed.as_micros() * u128::from(leg.clock_rate) / 1_000_000;
                let frames = ((ticks + u128::from(samples / 2)) / u128::from(samples)).max(1);
                let ticks = (frames * u128::from(samples)) as u32;
                (seq.wrapping_add(1), ts.wrapping_add(ticks))
            }
            None => (0, 0),
        };
        leg.seq_offset = leg.seq_offset.wrapping_add(1);
        leg.last_sent = Some((sequence, timestamp, now));
        leg.adopted = true;
        leg.stats.packets_out += 1;
        rtp::build(
            buffer,
            payload_type,
            marker,
            sequence,
            timestamp,
            leg.out_ssrc,
            payload,
        );
        Some((buffer.len(), destination))
    }

    /// When the next RTCP report of either leg is due.
    pub fn rtcp_timeout(&self) -> Option<Instant> {
        [&self.a, &self.b]
            .into_iter()
            .filter_map(|leg| leg.rtcp.as_ref()?.poll_timeout())
            .min()
    }

    /// If `side`'s report is due at `now`, writes it (SR or RR, and SDES CNAME) into `buffer`;
    /// returns its length, where to send it, and whether from the RTP socket (mux). `ntp` is
    /// the wallclock as a 64-bit NTP timestamp.
    pub fn poll_rtcp(
        &mut self,
        now: Instant,
        ntp: u64,
        side: Side,
        buffer: &mut [u8],
    ) -> Option<(usize, SocketAddr, bool)> {
        let leg = self.leg_mut(side);
        let (destination, mux) = leg.rtcp_destination()?;
        let rtcp = leg.rtcp.as_mut()?;
        if !rtcp.handle_timeout(now) {
            return None;
        }
        let len = rtcp.build_report(now, ntp, buffer).ok()?;
        leg.reported = true;
        Some((len, destination, mux))
    }

    /// When [`Self::handle_timeout`] should run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.on_hold || self.reported_inactive {
            return None;
        }
        let last = [
            self.a.last_received,
            self.b.last_received,
            Some(self.started),
        ]
        .into_iter()
        .flatten()
        .max()?;
        Some(last + self.inactivity)
    }

    /// Reports inactivity once the timeout passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<BridgeEvent> {
        match self.poll_timeout() {
            Some(deadline) if deadline <= now => {
                self.reported_inactive = true;
                Some(BridgeEvent::Inactive)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = Vec::new();
        rtp::build(&mut p, 0, false, seq, ts, ssrc, &[0xff; 160]);
        p
    }

    fn bridge(now: Instant, latching: Latching) -> Bridge {
        let a = Leg::new(Some(addr(4000)), latching, 0xA0A0_A0A0, 8000);
        let b = Leg::new(Some(addr(5000)), latching, 0xB0B0_B0B0, 8000);
        Bridge::new(now, a, b, Duration::from_secs(30))
    }

    #[test]
    fn our_audio_paces_whole_frames_and_forwarded_audio_continues_it() {
        let now = Instant::now();
        let mut bridge = bridge(now, Latching::FirstSource);
        let mut buffer = Vec::new();
        let mut sent = Vec::new();
        // Timer jitter of a few milliseconds still gives 160-sample steps.
        for (i, ms) in [0u64, 19, 41, 60].into_iter().enumerate() {
            let at = now + Duration::from_millis(ms);
            let (len, to) = bridge
                .audio_transmit(at, Side::A, 0, i == 0, &[0xff; 160], 160, &mut buffer)
                .unwrap();
            assert_eq!(to, addr(4000));
            let h = RtpHeader::parse(&buffer[..len]).unwrap();
            sent.push((h.sequence, h.timestamp, h.ssrc, h.marker));
        }
        assert_eq!(
            sent,
            [
                (0, 0, 0xA0A0_A0A0, true),
                (1, 160, 0xA0A0_A0A0, false),
                (2, 320, 0xA0A0_A0A0, false),
                (3, 480, 0xA0A0_A0A0, false)
            ]
        );
        // B's audio forwarded to A afterwards keeps our SSRC and numbering.
        let mut p = packet(5000, 90_000, 0x2222);
        let at = now + Duration::from_millis(80);
        bridge.forward(at, Side::B, addr(5000), &mut p).unwrap();
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!((h.ssrc, h.sequence, h.timestamp), (0xA0A0_A0A0, 4, 640));
        // No address for the leg, nothing to send.
        let mut lonely = Bridge::new(
            now,
            Leg::new(None, Latching::FirstSource, 1, 8000),
            Leg::new(None, Latching::FirstSource, 2, 8000),
            Duration::from_secs(30),
        );
        assert_eq!(
            lonely.audio_transmit(now, Side::A, 0, true, &[0xff; 160], 160, &mut buffer),
            None
        );
    }

    #[test]
    fn forwards_with_the_other_legs_ssrc_and_latches() {
        let now = Instant::now();
        let mut bridge = bridge(now, Latching::FirstSource);
        // A is behind NAT: it sends from another port than its SDP says.
        let nat = SocketAddr::from(([198, 51, 100, 9], 61_000));
        let mut p = packet(100, 16_000, 0x1111);
        assert_eq!(bridge.forward(now, Side::A, nat, &mut p), Ok(addr(5000)));
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp),
            (0x1111, 100, 16_000),
            "B sees A's stream as it is"
        );
        // B's packets now go to where A really is.
        let mut reply = packet(7, 700, 0x2222);
        assert_eq!(
            bridge.forward(now, Side::B, addr(5000), &mut reply),
            Ok(nat)
        );
        assert_eq!(RtpHeader::parse(&reply).unwrap().ssrc, 0x2222);
        // Once latched, another source for A is refused as injection.
        let mut injected = packet(101, 16_160, 0x1111);
        assert_eq!(
            bridge.forward(now, Side::A, addr(9999), &mut injected),
            Err(Refused::ForeignSource)
        );
        assert_eq!(bridge.leg(Side::A).stats().foreign, 1);
    }

    #[test]
    fn latching_policies() {
        let now = Instant::now();
        let mut strict = bridge(now, Latching::Strict);
        let mut p = packet(1, 160, 1);
        assert_eq!(
            strict.forward(now, Side::A, addr(4001), &mut p),
            Err(Refused::ForeignSource)
        );
        assert_eq!(
            strict.forward(now, Side::A, addr(4000), &mut p),
            Ok(addr(5000))
        );
        let mut same = bridge(now, Latching::SameAddress);
        assert_eq!(
            same.forward(
                now,
                Side::A,
                SocketAddr::from(([192, 0, 2, 2], 4000)),
                &mut p
            ),
            Err(Refused::ForeignSource)
        );
        assert_eq!(
            same.forward(now, Side::A, addr(4444), &mut p),
            Ok(addr(5000))
        );
        assert_eq!(same.leg(Side::A).destination(), Some(addr(4444)));
    }

    #[test]
    fn numbering_continues_across_a_source_change() {
        let now = Instant::now();
        let mut bridge = bridge(now, Latching::FirstSource);
        for i in 0..3u16 {
            let mut p = packet(1000 + i, 80_000 + u32::from(i) * 160, 0x1111);
            bridge
                .forward(
                    now + Duration::from_millis(20 * u64::from(i)),
                    Side::A,
                    addr(4000),
                    &mut p,
                )
                .unwrap();
        }
        // A re-INVITE moves A to another phone: new address, new SSRC, unrelated numbering.
        bridge.leg_mut(Side::A).update_expected(Some(addr(6000)));
        let mut p = packet(7, 3_000_000, 0x3333);
        let at = now + Duration::from_millis(60);
        bridge.forward(at, Side::A, addr(6000), &mut p).unwrap();
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.ssrc, 0x1111, "B keeps seeing the first source's SSRC");
        assert_eq!(h.sequence, 1003, "continues after 1002");
        assert_eq!(h.timestamp, 80_320 + 160, "one 20 ms frame after the last");
        assert!(h.marker, "marks the new talk spurt");
        let mut next = packet(8, 3_000_160, 0x3333);
        bridge
            .forward(
                at + Duration::from_millis(20),
                Side::A,
                addr(6000),
                &mut next,
            )
            .unwrap();
        let h = RtpHeader::parse(&next).unwrap();
        assert_eq!((h.sequence, h.timestamp, h.marker), (1004, 80_640, false));
    }

    #[test]
    fn sequence_wraps_and_malformed_is_counted() {
        let now = Instant::now();
        let mut bridge = bridge(now, Latching::FirstSource);
        let mut p = packet(65_535, u32::MAX, 1);
        bridge.forward(now, Side::A, addr(4000), &mut p).unwrap();
        let mut q = packet(0, 159, 1);
        bridge.forward(now, Side::A, addr(4000), &mut q).unwrap();
        assert_eq!(RtpHeader::parse(&q).unwrap().sequence, 0);
        let mut junk = vec![0u8; 8];
        assert_eq!(
            bridge.forward(now, Side::A, addr(4000), &mut junk),
            Err(Refused::Malformed)
        );
        assert_eq!(bridge.leg(Side::A).stats().malformed, 1);
        assert_eq!(bridge.leg(Side::B).stats().packets_out, 2);
    }

    #[test]
    fn inactivity_is_reported_once_and_not_on_hold() {
        let now = Instant::now();
        let mut bridge = bridge(now, Latching::FirstSource);
        assert_eq!(bridge.poll_timeout(), Some(now + Duration::from_secs(30)));
        let mut p = packet(1, 160, 1);
        bridge
            .forward(now + Duration::from_secs(10), Side::A, addr(4000), &mut p)
            .unwrap();
        assert_eq!(bridge.handle_timeout(now + Duration::from_secs(39)), None);
        assert_eq!(
            bridge.handle_timeout(now + Duration::from_secs(40)),
            Some(BridgeEvent::Inactive)
        );
        assert_eq!(bridge.handle_timeout(now + Duration::from_secs(80)), None);
        let mut held = self::bridge(now, Latching::FirstSource);
        held.set_hold(now, true);
        assert_eq!(held.poll_timeout(), None);
        held.set_hold(now + Duration::from_secs(100), false);
        assert_eq!(held.poll_timeout(), Some(now + Duration::from_secs(130)));
    }

    #[test]
    fn each_leg_gets_our_own_reports_with_its_loss_and_the_round_trip() {
        let start = Instant::now();
        let mut bridge = bridge(start, Latching::FirstSource);
        let ntp = |at: Instant| (at - start).as_millis() as u64 * (1u64 << 32) / 1000 + (1 << 40);
        // A sends 50 packets to B, every fifth lost on the way to us.
        for n in 0..50u16 {
            let now = start + Duration::from_millis(20 * u64::from(n));
            if n % 5 != 4 {
                let mut p = packet(n, u32::from(n) * 160, 0x1111);
                bridge.forward(now, Side::A, addr(4000), &mut p).unwrap();
            }
        }
        let stats = bridge.leg(Side::A).rtcp_stats();
        assert_eq!((stats.packets_received, stats.packets_lost), (40, 9));
        assert_eq!(bridge.leg(Side::B).rtcp_stats().packets_sent, 40);
        let mos = bridge.leg(Side::A).mos().unwrap();
        assert!((1.0..4.0).contains(&mos), "18% loss is poor: {mos}");
        assert_eq!(bridge.leg(Side::B).mos(), None, "B sent nothing");

        // Reports are due within the first interval; B (to whom we send) gets an SR on the
        // port after its RTP port, A an RR with a report block about its stream.
        let mut buffer = [0u8; 1500];
        let due = bridge.rtcp_timeout().unwrap();
        assert!(due <= start + rtcp::REPORT_INTERVAL);
        let later = start + Duration::from_secs(8);
        let (len, to, mux) = bridge
            .poll_rtcp(later, ntp(later), Side::B, &mut buffer)
            .unwrap();
        assert_eq!((to, mux), (addr(5001), false));
        assert_eq!(buffer[1], rtcp::PT_SENDER_REPORT);
        let sender_report = buffer[..len].to_vec();
        let (len, to, _) = bridge
            .poll_rtcp(later, ntp(later), Side::A, &mut buffer)
            .unwrap();
        assert_eq!(to, addr(4001));
        assert_eq!(buffer[1], rtcp::PT_RECEIVER_REPORT);
        assert!(rtcp::Compound::parse(&buffer[..len]).is_ok());
        assert!(
            bridge
                .poll_rtcp(later, ntp(later), Side::A, &mut buffer)
                .is_none(),
            "not due again"
        );

        // B answers our SR with an RR 100 ms later, having held it 40 ms: RTT 60 ms.
        let sr = rtcp::Compound::parse(&sender_report).unwrap();
        let Some(rtcp::RtcpPacket::SenderReport(report)) = sr.packets().next() else {
            panic!("an SR first");
        };
        let block = rtcp::ReportBlock {
            ssrc: report.ssrc(),
            fraction_lost: 0,
            cumulative_lost: 0,
            extended_highest_sequence: 39,
            jitter: 0,
            last_sr: rtcp::ntp_middle32(report.sender_info().ntp_timestamp),
            delay_since_last_sr: rtcp::duration_to_ntp_short(Duration::from_millis(40)),
        };
        let mut rr = [0u8; 64];
        let len = rtcp::write_receiver_report(&mut rr, 0x2222, &[block]).unwrap();
        let arrival = later + Duration::from_millis(100);
        bridge
            .handle_rtcp(
                arrival,
                ntp(arrival),
                Side::B,
                addr(5001),
                &rr[..len],
                false,
            )
            .unwrap();
        let rtt = bridge.leg(Side::B).rtcp_stats().rtt_ms.unwrap();
        assert!((rtt - 60.0).abs() < 1.0, "{rtt}");
        assert_eq!(
            report.ssrc(),
            0x1111,
            "B's stream (and our SR) carry A's SSRC"
        );
        // A got our report before any stream: B's audio reaches A under our own SSRC.
        let mut reply = packet(1, 160, 0x2222);
        bridge
            .forward(arrival, Side::B, addr(5000), &mut reply)
            .unwrap();
        assert_eq!(RtpHeader::parse(&reply).unwrap().ssrc, 0xA0A0_A0A0);
        // RTCP from elsewhere is refused.
        let stranger = SocketAddr::from(([198, 51, 100, 9], 5001));
        assert_eq!(
            bridge.handle_rtcp(arrival, ntp(arrival), Side::B, stranger, &rr[..len], false),
            Err(Refused::ForeignSource)
        );
    }

    #[test]
    fn dtmf_is_reported_and_can_be_sent_into_a_leg_stream() {
        let start = Instant::now();
        let mut bridge = bridge(start, Latching::FirstSource);
        bridge.leg_mut(Side::A).set_dtmf_payload_type(Some(101));
        bridge.leg_mut(Side::B).set_dtmf_payload_type(Some(101));
        // A's audio, then a '5' from A's phone (generated by our own sender, as a phone would).
        let mut p = packet(10, 1_600, 0x1111);
        bridge.forward(start, Side::A, addr(4000), &mut p).unwrap();
        let mut phone = DtmfSender::new();
        phone
            .start(start, Digit::Five, Duration::from_millis(120), 10)
            .unwrap();
        let mut seq = 11u16;
        let mut buffer = Vec::new();
        let mut events = Vec::new();
        let mut now = start;
        while let Some(at) = phone.poll_timeout() {
            now = at;
            while let Some(event) = phone.poll_transmit(now) {
                rtp::build(
                    &mut buffer,
                    101,
                    event.marker,
                    seq,
                    event.timestamp(1_760),
                    0x1111,
                    &event.payload,
                );
                seq += 1;
                bridge
                    .forward(now, Side::A, addr(4000), &mut buffer)
                    .unwrap();
                events.extend(std::iter::from_fn(|| bridge.poll_dtmf()));
            }
        }
        assert!(
            matches!(
                events[..],
                [
                    (
                        Side::A,
                        DtmfEvent::Begin {
                            digit: Digit::Five,
                            ..
                        }
                    ),
                    (
                        Side::A,
                        DtmfEvent::End {
                            digit: Digit::Five,
                            ..
                        }
                    )
                ]
            ),
            "{events:?}"
        );

        // A '#' sent to B (an INFO from A, converted): RFC 4733 packets in B's stream, between
        // A's forwarded audio, with continuous sequence numbers.
        bridge
            .send_dtmf(now, Side::B, Digit::Pound, Duration::from_millis(100))
            .unwrap();
        let mut sent = Vec::new();
        while let Some(at) = bridge.dtmf_send_timeout(Side::B) {
            now = now.max(at);
            while let Some((len, to)) = bridge.poll_dtmf_transmit(now, Side::B, &mut buffer) {
                assert_eq!(to, addr(5000));
                sent.push(RtpHeader::parse(&buffer[..len]).unwrap());
            }
        }
        assert!(sent.len() >= 4, "{sent:?}");
        assert!(
            sent.iter()
                .all(|h| h.payload_type == 101 && h.ssrc == 0x1111)
        );
        assert!(sent[0].marker && sent[1..].iter().all(|h| !h.marker));
        assert!(
            sent.iter().all(|h| h.timestamp == sent[0].timestamp),
            "one event, one timestamp"
        );
        for pair in sent.windows(2) {
            assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
        }
        let last = sent.last().unwrap().sequence;
        let mut audio = packet(seq, 9_000, 0x1111);
        bridge
            .forward(now, Side::A, addr(4000), &mut audio)
            .unwrap();
        assert_eq!(
            RtpHeader::parse(&audio).unwrap().sequence,
            last.wrapping_add(1)
        );
    }
}
