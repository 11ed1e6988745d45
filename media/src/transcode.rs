//! Opus ⇄ G.711 for a browser leg that carries no G.711 (a browser told to use Opus only),
//! bridged to a phone that speaks PCMU or PCMA. Sans-IO: packets and time in, packets out.
//!
//! - **Browser to phone.** Opus RTP (RFC 7587: a 48 kHz timestamp clock whatever the audio)
//!   goes into a [`JitterBuffer`]; what it hands out when due is decoded by libopus straight
//!   to 8 kHz mono, or concealed by libopus's packet loss concealment for a packet that never
//!   came, and leaves as one G.711 RTP packet per output (timestamps on the 8 kHz clock,
//!   sequence numbers our own).
//! - **Phone to browser.** G.711 RTP is decoded and encoded by libopus (VoIP mode, 8 kHz
//!   input, 20 ms frames) as it comes: the browser's own jitter buffer smooths it. Samples
//!   of packets that are not 20 ms long are carried over to the next frame.
//! - The phone's law is learnt from what it sends (µ-law until then).
//!
//! Other payload types (RFC 4733 telephone-event) are dropped both ways: their timestamps
//! and durations are on the other side's clock.

use std::time::{Duration, Instant};

use crate::g711::Law;
use crate::jitter::{self, JitterBuffer};
use crate::rtp::{self, RtpHeader};

/// Samples of 20 ms at 8 kHz.
const FRAME: usize = 160;
/// The Opus RTP clock (RFC 7587 §4.1) over our 8 kHz.
const CLOCK_RATIO: u32 = 6;
/// The largest Opus packet (RFC 6716 §3.4).
const MAX_OPUS: usize = 1275;
/// libopus encoder complexity (0-10).
const ENCODER_COMPLEXITY: i32 = 5;
/// The longest concealment or frame decoded at once: 120 ms at 8 kHz.
const MAX_DECODE: usize = 960;

/// Why a transcoder could not be made.
#[derive(Debug, thiserror::Error)]
#[error("libopus: {0}")]
pub struct TranscodeError(String);

/// One RTP stream we write: our SSRC, sequence numbers and timestamps.
#[derive(Debug)]
struct Stream {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    started: bool,
}

impl Stream {
    fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            seq: 0,
            timestamp: 0,
            started: false,
        }
    }

    /// Writes a packet of `payload_type` carrying `ticks` clock ticks of `payload`.
    fn write(&mut self, payload_type: u8, payload: &[u8], ticks: u32, out: &mut Vec<u8>) {
        let marker = !self.started;
        rtp::build(
            out,
            payload_type,
            marker,
            self.seq,
            self.timestamp,
            self.ssrc,
            payload,
        );
        self.started = true;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(ticks);
    }
}

/// Opus ⇄ G.711 for one browser leg.
pub struct Transcoder {
    opus_pt: u8,
    jitter: JitterBuffer,
    decoder: opus::Decoder,
    encoder: opus::Encoder,
    law: Law,
    to_phone: Stream,
    to_browser: Stream,
    /// Phone samples waiting for a whole 20 ms frame.
    pending: Vec<i16>,
    pcm: Vec<i16>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("opus_pt", &self.opus_pt)
            .field("law", &self.law)
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// A transcoder for a browser leg whose Opus has payload type `opus_pt`; `ssrc` names
    /// the streams it writes.
    pub fn new(opus_pt: u8, ssrc: u32) -> Result<Self, TranscodeError> {
        let error = |e: opus::Error| TranscodeError(e.to_string());
        let decoder = opus::Decoder::new(8000, opus::Channels::Mono).map_err(error)?;
        let mut encoder = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip)
            .map_err(error)?;
        // Telephone audio in, speech out: a lower complexity cuts the encoder's cost
        // (measured with benches/load/webrtc.py --codec opus) for no audible loss at 8 kHz.
        encoder.set_complexity(ENCODER_COMPLEXITY).map_err(error)?;
        encoder.set_signal(opus::Signal::Voice).map_err(error)?;
        let jitter = JitterBuffer::new(jitter::Config {
            clock_rate: 48_000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            capacity: 64,
            max_payload: MAX_OPUS,
        });
        Ok(Self {
            opus_pt,
            jitter,
            decoder,
            encoder,
            law: Law::Ulaw,
            to_phone: Stream::new(ssrc),
            to_browser: Stream::new(ssrc ^ 0x0f0f_0f0f),
            pending: Vec::with_capacity(2 * FRAME),
            pcm: vec![0; MAX_DECODE],
            bytes: vec![0; MAX_OPUS.max(MAX_DECODE)],
        })
    }

    /// Whether an RTP packet carries Opus.
    pub fn is_opus(&self, packet: &[u8]) -> bool {
        packet.len() >= 12 && packet[1] & 0x7f == self.opus_pt
    }

    /// An RTP packet the browser sent (plain, after SRTP): Opus goes into the jitter buffer.
    pub fn from_browser(&mut self, now: Instant, packet: &[u8]) {
        if self.is_opus(packet) {
            // Rejections (late, duplicate, malformed) are counted by the buffer.
            let _ = self.jitter.push(now, packet);
        }
    }

    /// When [`Self::poll_to_phone`] next has something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.jitter.poll_timeout()
    }

    /// The next G.711 packet due for the phone at `now`, written into `out`.
    pub fn poll_to_phone(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(output) = self.jitter.pop(now) else {
            return false;
        };
        let wanted = (output.samples() / CLOCK_RATIO) as usize;
        let decoded = match output {
            jitter::Output::Frame { payload, .. } => {
                self.decoder
                    .decode(payload, &mut self.pcm[..MAX_DECODE], false)
            }
            jitter::Output::Conceal { .. } => {
                // libopus conceals in whole 2.5 ms steps (20 samples at 8 kHz).
                let steps = wanted.div_ceil(20).clamp(1, MAX_DECODE / 20);
                self.decoder.decode(&[], &mut self.pcm[..steps * 20], false)
            }
        };
        let Ok(samples) = decoded else {
            return false;
        };
        let samples = samples.min(MAX_DECODE);
        let encoded = self.law.encode(&self.pcm[..samples], &mut self.bytes);
        let payload_type = self.law.payload_type();
        let ticks = u32::try_from(samples).unwrap_or(0);
        self.to_phone
            .write(payload_type, &self.bytes[..encoded], ticks, out);
        true
    }

    /// A G.711 RTP packet from the phone, as Opus for the browser in `out` (false: nothing to
    /// send yet, or not G.711).
    pub fn to_browser(&mut self, packet: &[u8], out: &mut Vec<u8>) -> bool {
        let Some((payload_type, payload)) = rtp_payload(packet) else {
            return false;
        };
        self.law = match payload_type {
            0 => Law::Ulaw,
            8 => Law::Alaw,
            _ => return false,
        };
        let start = self.pending.len();
        self.pending.resize(start + payload.len(), 0);
        self.law.decode(payload, &mut self.pending[start..]);
        if self.pending.len() < FRAME {
            return false;
        }
        let encoded = self
            .encoder
            .encode(&self.pending[..FRAME], &mut self.bytes[..MAX_OPUS]);
        // Anything beyond one frame waits for the next packet (at most one more frame is
        // kept: a phone sending long packets loses the excess rather than drifting).
        self.pending.drain(..FRAME);
        self.pending.truncate(FRAME);
        let Ok(length) = encoded else {
            return false;
        };
        let ticks = FRAME as u32 * CLOCK_RATIO;
        self.to_browser
            .write(self.opus_pt, &self.bytes[..length], ticks, out);
        true
    }
}

/// The payload type and payload of an RTP packet (after CSRCs, extension and padding).
fn rtp_payload(packet: &[u8]) -> Option<(u8, &[u8])> {
    let header = RtpHeader::parse(packet).ok()?;
    let end = header.payload_offset + header.payload_len;
    Some((header.payload_type, &packet[header.payload_offset..end]))
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    /// `seconds` of a `frequency` Hz tone at 8 kHz.
    fn tone(frequency: f64, samples: usize, offset: usize) -> Vec<i16> {
        (offset..offset + samples)
            .map(|i| {
                let phase = i as f64 * frequency * std::f64::consts::TAU / 8000.0;
                (phase.sin() * 8000.0) as i16
            })
            .collect()
    }

    fn rtp(payload_type: u8, seq: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let mut stream = Stream::new(0x1234);
        stream.seq = seq;
        stream.timestamp = timestamp;
        stream.started = true;
        let mut out = Vec::new();
        stream.write(payload_type, payload, 0, &mut out);
        out
    }

    /// The strength of `frequency` in `samples` (Goertzel), relative to their energy.
    fn presence(samples: &[i16], frequency: f64) -> f64 {
        let coefficient = 2.0 * (std::f64::consts::TAU * frequency / 8000.0).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut energy = 0.0;
        for &x in samples {
            let x = f64::from(x);
            let s = x + coefficient * s1 - s2;
            s2 = s1;
            s1 = s;
            energy += x * x;
        }
        let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
        power / (energy * samples.len() as f64 / 2.0).max(1.0)
    }

    #[test]
    fn a_tone_crosses_both_ways_and_a_lost_packet_is_concealed() {
        let mut transcoder = Transcoder::new(111, 7).unwrap();
        // Phone to browser: 1 s of 440 Hz PCMU in 20 ms packets becomes 50 Opus packets.
        let mut opus_packets = Vec::new();
        let mut out = Vec::new();
        for n in 0..50u16 {
            let samples = tone(440.0, FRAME, usize::from(n) * FRAME);
            let mut payload = [0u8; FRAME];
            Law::Ulaw.encode(&samples, &mut payload);
            let packet = rtp(0, n, u32::from(n) * 160, &payload);
            assert!(transcoder.to_browser(&packet, &mut out));
            let (payload_type, opus) = rtp_payload(&out).unwrap();
            assert_eq!(payload_type, 111);
            assert!(opus.len() < 200, "{}", opus.len());
            opus_packets.push(opus.to_vec());
        }
        // Browser to phone: the same Opus (one packet lost) back through the jitter buffer.
        let start = Instant::now();
        let mut heard = Vec::new();
        for (n, opus) in opus_packets.iter().enumerate() {
            let at = start + Duration::from_millis(20 * n as u64);
            if n != 25 {
                let seq = u16::try_from(n).unwrap();
                let packet = rtp(111, seq, u32::try_from(n * 960).unwrap(), opus);
                transcoder.from_browser(at, &packet);
            }
            while transcoder.poll_to_phone(at, &mut out) {
                let (payload_type, payload) = rtp_payload(&out).unwrap();
                assert_eq!(payload_type, 0);
                let mut pcm = vec![0i16; payload.len()];
                Law::Ulaw.decode(payload, &mut pcm);
                heard.extend(pcm);
            }
        }
        let end = start + Duration::from_secs(2);
        while transcoder.poll_to_phone(end, &mut out) {}
        // Nearly a second came out, in 20 ms frames, and it is the tone.
        assert!(heard.len() >= 40 * FRAME, "{}", heard.len());
        let middle = &heard[10 * FRAME..35 * FRAME];
        assert!(presence(middle, 440.0) > 0.5, "{}", presence(middle, 440.0));
        assert!(presence(middle, 1000.0) < 0.05);
        assert_eq!(transcoder.jitter.stats().played, 49, "one packet was lost");
    }

    #[test]
    fn telephone_events_and_odd_payloads_are_dropped() {
        let mut transcoder = Transcoder::new(111, 7).unwrap();
        let mut out = Vec::new();
        assert!(!transcoder.to_browser(&rtp(101, 1, 0, &[1, 0, 0, 160]), &mut out));
        assert!(!transcoder.to_browser(&[0x80, 0], &mut out));
        // Half a frame waits for the rest.
        assert!(!transcoder.to_browser(&rtp(8, 2, 0, &[0xd5; 80]), &mut out));
        assert!(transcoder.to_browser(&rtp(8, 3, 80, &[0xd5; 80]), &mut out));
        assert_eq!(transcoder.law, Law::Alaw);
        transcoder.from_browser(Instant::now(), &rtp(126, 1, 0, &[1, 2, 3, 4]));
        assert_eq!(transcoder.jitter.stats().received, 0);
    }
}
