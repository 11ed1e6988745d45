//! WebRTC legs through str0m: a browser's media session (ICE-lite on our RTP port,
//! DTLS-SRTP, rtcp-mux, BUNDLE) seen from the rest of the media plane as plain RTP.
//!
//! Sans-IO like str0m itself: datagrams and time come in, datagrams to send, plain RTP
//! packets received and deadlines come out. str0m runs in RTP mode, so payloads pass
//! through untouched: G.711 and telephone-event (RFC 4733) from a browser reach a SIP phone
//! as they were sent, only SRTP is removed (and added the other way).
//!
//! The leg negotiates only what the other leg of the call can take (PCMU or PCMA and
//! telephone-event, with the other side's payload type numbers), so nothing needs to be
//! rewritten between the two.
//!
//! One DTLS certificate serves every leg of a process ([`Certificate`]); its fingerprint is
//! in every SDP we write, and each leg still gets fresh ICE credentials and SRTP keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::rtp::{self, RtpHeader};

/// Why a WebRTC leg could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// The peer's SDP is not a WebRTC session description we can use.
    #[error("unusable WebRTC SDP: {0}")]
    Sdp(String),
    /// Nothing in common: the peer offered none of the codecs the call can carry.
    #[error("no common audio codec")]
    NoCodec,
    /// str0m refused.
    #[error("WebRTC: {0}")]
    Rtc(String),
}

fn rtc_error(error: impl std::fmt::Display) -> WebRtcError {
    WebRtcError::Rtc(error.to_string())
}

/// The process's DTLS certificate, shared by every leg (cheap to clone).
#[derive(Clone)]
pub struct Certificate(Arc<DtlsCert>);

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certificate(..)")
    }
}

impl Certificate {
    /// Generates one, installing the crypto provider (aws-lc-rs) for the process first.
    pub fn generate() -> Result<Self, WebRtcError> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| WebRtcError::Rtc("could not generate a DTLS certificate".into()))?;
        provider.install_process_default();
        Ok(Self(Arc::new(cert)))
    }
}

/// The audio a leg may carry: G.711 payload types in order of preference, telephone-event's
/// payload type, and Opus's, which a peer without G.711 gets (transcoded to G.711 by
/// [`crate::transcode::Transcoder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioFormats {
    /// 0 (PCMU) and/or 8 (PCMA), preferred first.
    pub g711: Vec<u8>,
    /// telephone-event/8000, if the call carries RFC 4733 keys.
    pub telephone_event: Option<u8>,
    /// Opus's payload type, for a peer that has no G.711.
    pub opus: Option<u8>,
}

/// One WebRTC leg.
pub struct WebRtcLeg {
    rtc: Rtc,
    /// The audio m-line, once negotiated.
    mid: Option<Mid>,
    /// Our offer, until the browser answers.
    pending: Option<SdpPendingOffer>,
    /// The local candidate: where the browser sends (our RTP socket, advertised address).
    local: SocketAddr,
    /// Outgoing sequence numbers extended past 16 bits (SRTP needs the rollover count).
    last_seq: Option<u64>,
    connected: bool,
    /// The latest time given.
    last_now: Instant,
    /// Opus's payload type, when it carries Opus.
    opus: Option<u8>,
    /// Opus's payload type, when we configured it.
    opus_offered: Option<u8>,
}

/// How long a failed leg waits before being polled again.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg")
            .field("local", &self.local)
            .field("mid", &self.mid)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

/// What a leg has for the shell.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Send `bytes` from our socket to `destination`.
    Transmit {
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A plain RTP packet the browser sent (decrypted; header extensions dropped).
    Rtp(Vec<u8>),
    /// Call [`WebRtcLeg::handle_timeout`] at this time.
    Timeout(Instant),
}

fn config(cert: &Certificate, formats: &AudioFormats) -> RtcConfig {
    let mut config = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_dtls_cert((*cert.0).clone())
        .clear_codecs();
    let codecs = config.codec_config();
    // G.711 has static payload types (RFC 3551): 0 and 8 everywhere.
    for &pt in &formats.g711 {
        match pt {
            0 => codecs.enable_pcmu(true, false),
            8 => codecs.enable_pcma(true, false),
            _ => {}
        }
    }
    // Opus after G.711: it is only chosen by a peer that has no G.711 (and is transcoded).
    if let Some(pt) = formats.opus {
        codecs.add_config(
            pt.into(),
            None,
            Codec::Opus,
            Frequency::FORTY_EIGHT_KHZ,
            Some(2),
            FormatParams {
                min_p_time: Some(10),
                use_inband_fec: Some(true),
                ..FormatParams::default()
            },
        );
    }
    if let Some(pt) = formats.telephone_event {
        codecs.add_config(
            pt.into(),
            None,
            Codec::Tele,
            Frequency::EIGHT_KHZ,
            None,
            FormatParams::parse_line("0-16"),
        );
    }
    config
}

impl WebRtcLeg {
    fn new(
        now: Instant,
        cert: &Certificate,
        formats: &AudioFormats,
        local: SocketAddr,
    ) -> Result<Self, WebRtcError> {
        if formats.opus.is_none() && !formats.g711.iter().any(|pt| matches!(pt, 0 | 8)) {
            return Err(WebRtcError::NoCodec);
        }
        let mut rtc = config(cert, formats).build(now);
        let candidate = Candidate::host(local, "udp").map_err(rtc_error)?;
        rtc.add_local_candidate(candidate);
        Ok(Self {
            rtc,
            mid: None,
            pending: None,
            local,
            last_seq: None,
            connected: false,
            last_now: now,
            opus: None,
            opus_offered: formats.opus,
        })
    }

    /// Answers a browser's offer with `formats` only, reachable at `local` (the leg's RTP
    /// socket at the advertised address). Returns the leg and our answer.
    pub fn answer(
        now: Instant,
        cert: &Certificate,
        offer: &str,
        formats: &AudioFormats,
        local: SocketAddr,
    ) -> Result<(Self, String), WebRtcError> {
        let mid = first_audio_mid(offer)?;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
        let mut leg = Self::new(now, cert, formats, local)?;
        let answer = leg.rtc.sdp_api().accept_offer(offer).map_err(rtc_error)?;
        leg.accepted(mid)?;
        Ok((leg, answer.to_sdp_string()))
    }

    /// Offers a browser one sendrecv audio m-line with `formats`, reachable at `local`.
    /// Returns the leg (waiting for [`Self::accept_answer`]) and our offer.
    pub fn offer(
        now: Instant,
        cert: &Certificate,
        formats: &AudioFormats,
        local: SocketAddr,
    ) -> Result<(Self, String), WebRtcError> {
        let mut leg = Self::new(now, cert, formats, local)?;
        let mut change = leg.rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| WebRtcError::Rtc("nothing to offer".into()))?;
        leg.mid = Some(mid);
        leg.pending = Some(pending);
        Ok((leg, offer.to_sdp_string()))
    }

    /// Takes the browser's answer to our offer.
    pub fn accept_answer(&mut self, answer: &str) -> Result<(), WebRtcError> {
        let answer =
            SdpAnswer::from_sdp_string(answer).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| WebRtcError::Rtc("no offer of ours is pending".into()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(rtc_error)?;
        match self.mid {
            Some(mid) => self.accepted(mid),
            None => Err(WebRtcError::NoCodec),
        }
    }

    /// Checks that audio m-line `mid` was agreed with one of our codecs.
    fn accepted(&mut self, mid: Mid) -> Result<(), WebRtcError> {
        let pts: Vec<u8> = self
            .rtc
            .media(mid)
            .map(|media| media.remote_pts().iter().map(|pt| **pt).collect())
            .unwrap_or_default();
        // G.711 when the peer has it (passed through), else Opus if we offered it.
        let g711 = pts.iter().any(|pt| matches!(pt, 0 | 8));
        let opus = self.opus_offered.filter(|pt| pts.contains(pt));
        if !g711 && opus.is_none() {
            return Err(WebRtcError::NoCodec);
        }
        self.opus = if g711 { None } else { opus };
        self.mid = Some(mid);
        Ok(())
    }

    /// Opus's payload type when the leg carries Opus rather than G.711 (its audio must be
    /// transcoded).
    pub fn opus(&self) -> Option<u8> {
        self.opus
    }

    /// Where the browser reaches us.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Whether ICE and DTLS completed.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A datagram from `source` to our socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        self.last_now = now;
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, bytes) else {
            return;
        };
        let _ = self.rtc.handle_input(Input::Receive(now, receive));
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        let _ = self.rtc.handle_input(Input::Timeout(now));
    }

    /// Sends a plain RTP packet (12-byte header, no extensions or CSRCs) to the browser,
    /// encrypted. Dropped until the leg is connected.
    pub fn send_rtp(&mut self, now: Instant, packet: &[u8]) {
        let (Some(mid), true) = (self.mid, self.connected) else {
            return;
        };
        let Ok(header) = RtpHeader::parse(packet) else {
            return;
        };
        let payload = &packet[header.payload_offset..header.payload_offset + header.payload_len];
        let seq = extend(&mut self.last_seq, header.sequence);
        let mut direct = self.rtc.direct_api();
        let Some(stream) = direct.stream_tx_by_mid(mid, None) else {
            return;
        };
        let write = RtpWrite::new(
            header.payload_type.into(),
            SeqNo::from(seq),
            header.timestamp,
            now,
            payload.to_vec(),
        )
        .marker(header.marker);
        stream.write_rtp(write);
    }

    /// The next thing for the shell; call until [`Poll::Timeout`].
    pub fn poll(&mut self) -> Poll {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => return Poll::Timeout(at),
                Ok(Output::Transmit(transmit)) => {
                    return Poll::Transmit {
                        destination: transmit.destination,
                        bytes: transmit.contents.to_vec(),
                    };
                }
                Ok(Output::Event(Event::RtpPacket(packet))) => {
                    let header = &packet.header;
                    let mut plain = Vec::with_capacity(12 + packet.payload.len());
                    rtp::build(
                        &mut plain,
                        *header.payload_type,
                        header.marker,
                        header.sequence_number,
                        header.timestamp,
                        *header.ssrc,
                        &packet.payload,
                    );
                    return Poll::Rtp(plain);
                }
                Ok(Output::Event(Event::Connected)) => self.connected = true,
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => self.connected = false,
                Ok(Output::Event(_)) => {}
                // A leg that failed (DTLS refused, say) goes quiet: the call's media
                // inactivity timeout ends it.
                Err(_) => return Poll::Timeout(self.last_now + IDLE),
            }
        }
    }
}

/// The `a=mid` of the first audio m-line of a session description.
fn first_audio_mid(sdp: &str) -> Result<Mid, WebRtcError> {
    let parsed =
        crate::sdp::Sdp::parse(sdp.as_bytes()).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
    let audio = parsed
        .media
        .iter()
        .find(|m| m.kind == "audio" && m.port != 0)
        .ok_or(WebRtcError::NoCodec)?;
    let mid = audio
        .attribute("mid")
        .ok_or_else(|| WebRtcError::Sdp("the audio m-line has no a=mid".into()))?;
    Ok(Mid::from(mid))
}

/// Extends a 16-bit RTP sequence number by the rollovers seen so far.
fn extend(last: &mut Option<u64>, seq: u16) -> u64 {
    let extended = match *last {
        None => u64::from(seq),
        Some(previous) => {
            let roc = previous >> 16;
            let candidates = [roc.wrapping_sub(1), roc, roc + 1]
                .into_iter()
                .filter(|r| *r <= roc + 1)
                .map(|r| (r << 16) | u64::from(seq));
            candidates
                .min_by_key(|c| c.abs_diff(previous))
                .unwrap_or(u64::from(seq))
        }
    };
    if last.is_none_or(|l| extended > l) {
        *last = Some(extended);
    }
    extended
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use std::time::Duration;

    use super::*;

    const OURS: &str = "192.0.2.1:30000";
    const BROWSER: &str = "198.51.100.7:50000";

    /// A browser stand-in: a full (not lite) str0m peer in frame-less RTP mode with Opus,
    /// PCMU, PCMA and telephone-event, as Chromium offers them.
    fn browser(now: Instant) -> Rtc {
        let mut config = Rtc::builder().set_rtp_mode(true).clear_codecs();
        let codecs = config.codec_config();
        codecs.enable_opus(true, false);
        codecs.enable_pcmu(true, false);
        codecs.enable_pcma(true, false);
        codecs.add_config(
            126.into(),
            None,
            Codec::Tele,
            Frequency::EIGHT_KHZ,
            None,
            FormatParams::parse_line("0-16"),
        );
        let mut rtc = config.build(now);
        rtc.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
        rtc
    }

    fn pcmu() -> AudioFormats {
        AudioFormats {
            g711: vec![0],
            telephone_event: Some(126),
            opus: None,
        }
    }

    /// Runs both sides on virtual time until `done` or 5 s pass; returns what our leg
    /// received as plain RTP and what the browser received.
    fn run(
        now: &mut Instant,
        leg: &mut WebRtcLeg,
        browser: &mut Rtc,
        mut each_tick: impl FnMut(Instant, &mut WebRtcLeg, &mut Rtc),
    ) -> (Vec<Vec<u8>>, Vec<str0m::rtp::RtpPacket>) {
        let (ours, theirs): (SocketAddr, SocketAddr) =
            (OURS.parse().unwrap(), BROWSER.parse().unwrap());
        let (mut at_leg, mut at_browser) = (Vec::new(), Vec::new());
        let end = *now + Duration::from_secs(5);
        while *now < end {
            *now += Duration::from_millis(10);
            leg.handle_timeout(*now);
            let _ = browser.handle_input(Input::Timeout(*now));
            each_tick(*now, leg, browser);
            // Exchange until both are quiet for this tick.
            for _ in 0..50 {
                let mut moved = false;
                loop {
                    match leg.poll() {
                        Poll::Transmit { destination, bytes } => {
                            assert_eq!(destination, theirs);
                            let receive =
                                Receive::new(Protocol::Udp, ours, theirs, &bytes).unwrap();
                            browser.handle_input(Input::Receive(*now, receive)).unwrap();
                            moved = true;
                        }
                        Poll::Rtp(packet) => at_leg.push(packet),
                        Poll::Timeout(_) => break,
                    }
                }
                loop {
                    match browser.poll_output().unwrap() {
                        Output::Transmit(t) => {
                            leg.handle_datagram(*now, t.source, &t.contents);
                            moved = true;
                        }
                        Output::Event(Event::RtpPacket(p)) => at_browser.push(p),
                        Output::Event(_) => {}
                        Output::Timeout(_) => break,
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        (at_leg, at_browser)
    }

    fn plain(seq: u16, payload_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::new();
        let timestamp = u32::from(seq) * 160;
        rtp::build(
            &mut packet,
            payload_type,
            false,
            seq,
            timestamp,
            0x5b00_7530,
            payload,
        );
        packet
    }

    #[test]
    fn a_browser_offer_is_answered_and_g711_flows_both_ways() {
        let cert = Certificate::generate().unwrap();
        let mut now = Instant::now();
        let mut browser = browser(now);
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let (mut leg, answer) = WebRtcLeg::answer(
            now,
            &cert,
            &offer.to_sdp_string(),
            &pcmu(),
            OURS.parse().unwrap(),
        )
        .unwrap();
        // ICE-lite, our candidate, DTLS, and only what the call can carry.
        assert!(answer.contains("a=ice-lite"), "{answer}");
        assert!(answer.contains("192.0.2.1 30000 typ host"), "{answer}");
        assert!(answer.contains("a=fingerprint:sha-256"), "{answer}");
        assert!(answer.contains("UDP/TLS/RTP/SAVPF 0 126"), "{answer}");
        assert!(
            !answer.contains("opus") && !answer.contains("a=crypto"),
            "{answer}"
        );
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();

        let mut seq = 0u16;
        let (at_leg, at_browser) = run(&mut now, &mut leg, &mut browser, |now, leg, browser| {
            if !leg.is_connected() {
                return;
            }
            seq += 1;
            leg.send_rtp(now, &plain(seq, 0, &[0xff; 160]));
            let mut direct = browser.direct_api();
            if let Some(stream) = direct.stream_tx_by_mid(mid, None) {
                let time = u32::from(seq) * 160;
                stream.write_rtp(RtpWrite::new(
                    0.into(),
                    u64::from(seq).into(),
                    time,
                    now,
                    vec![0x7f; 160],
                ));
            }
        });
        assert!(leg.is_connected());
        assert!(at_leg.len() > 100, "{}", at_leg.len());
        let header = RtpHeader::parse(&at_leg[10]).unwrap();
        let payload = &at_leg[10][header.payload_offset..];
        assert_eq!((header.payload_type, payload), (0, &[0x7f; 160][..]));
        assert!(at_browser.len() > 100, "{}", at_browser.len());
        assert_eq!(*at_browser[10].header.payload_type, 0);
        assert_eq!(&at_browser[10].payload[..], &[0xff; 160][..]);
    }

    #[test]
    fn we_offer_to_a_browser_with_the_other_legs_payload_types() {
        let cert = Certificate::generate().unwrap();
        let mut now = Instant::now();
        let formats = AudioFormats {
            g711: vec![8, 0],
            telephone_event: Some(101),
            opus: Some(111),
        };
        let (mut leg, offer) =
            WebRtcLeg::offer(now, &cert, &formats, OURS.parse().unwrap()).unwrap();
        assert!(offer.contains("UDP/TLS/RTP/SAVPF 8 0 111 101"), "{offer}");
        assert!(offer.contains("a=setup:actpass"), "{offer}");
        let mut browser = browser(now);
        let answer = browser
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap();
        leg.accept_answer(&answer.to_sdp_string()).unwrap();
        assert_eq!(leg.opus(), None, "G.711 is passed through");
        let mut seq = 0u16;
        let (_, at_browser) = run(&mut now, &mut leg, &mut browser, |now, leg, _| {
            seq += 1;
            // A key as RFC 4733 goes through with its payload type.
            leg.send_rtp(
                now,
                &plain(
                    seq,
                    if seq.is_multiple_of(2) { 101 } else { 8 },
                    &[1, 2, 3, 4],
                ),
            );
        });
        assert!(at_browser.iter().any(|p| *p.header.payload_type == 101));
        assert!(at_browser.iter().any(|p| *p.header.payload_type == 8));
    }

    #[test]
    fn a_peer_without_g711_answers_our_offer_with_opus() {
        let cert = Certificate::generate().unwrap();
        let now = Instant::now();
        let formats = AudioFormats {
            g711: vec![0],
            telephone_event: Some(101),
            opus: Some(111),
        };
        let (mut leg, offer) =
            WebRtcLeg::offer(now, &cert, &formats, OURS.parse().unwrap()).unwrap();
        let mut config = Rtc::builder().set_rtp_mode(true).clear_codecs();
        config.codec_config().enable_opus(true, false);
        let mut opus_only = config.build(now);
        let answer = opus_only
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap();
        leg.accept_answer(&answer.to_sdp_string()).unwrap();
        assert_eq!(leg.opus(), Some(111), "to be transcoded");
    }

    #[test]
    fn nothing_in_common_is_refused() {
        let cert = Certificate::generate().unwrap();
        let now = Instant::now();
        let mut config = Rtc::builder().clear_codecs();
        config.codec_config().enable_opus(true, false);
        let mut opus_only = config.build(now);
        let mut change = opus_only.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, _) = change.apply().unwrap();
        let refused = WebRtcLeg::answer(
            now,
            &cert,
            &offer.to_sdp_string(),
            &pcmu(),
            OURS.parse().unwrap(),
        );
        assert!(matches!(refused, Err(WebRtcError::NoCodec)), "{refused:?}");
        let garbage = WebRtcLeg::answer(now, &cert, "v=0\r\n", &pcmu(), OURS.parse().unwrap());
        assert!(garbage.is_err());
    }

    #[test]
    fn sequence_numbers_extend_across_rollovers() {
        let mut last = None;
        assert_eq!(extend(&mut last, 65_534), 65_534);
        assert_eq!(extend(&mut last, 65_535), 65_535);
        assert_eq!(extend(&mut last, 0), 65_536);
        assert_eq!(
            extend(&mut last, 65_535),
            65_535,
            "a late packet from before"
        );
        assert_eq!(extend(&mut last, 1), 65_537);
    }
}
