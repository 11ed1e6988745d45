//! The audio codec interface: what a leg negotiated (from its SDP `rtpmap`) and the encoders
//! and decoders that turn RTP payloads into 16-bit PCM and back, wherever audio is decoded
//! (recording, DTMF detection, transcoding, mixing; never on the plain forwarding path).
//!
//! G.711 µ-law and A-law ([`crate::g711`]) and G.722 ([`crate::g722`]; RFC 3551 §4.5.2: 16 kHz
//! audio on an 8 kHz RTP clock, the one codec whose clock rate is not its sample rate) are
//! implemented. The interface is shaped for Opus next (RFC 7587: always a 48 kHz clock; frames
//! of 2.5 to 60 ms; its own loss concealment, hence [`Decoder::conceal`]): its [`Codec`]
//! variant exists so SDP negotiation and the recorder can name it; [`decoder`] and [`encoder`]
//! answer `None` for it until an implementation lands, and callers treat such a payload as
//! undecodable (silence in a recording).
//!
//! Decoders and encoders write into caller buffers: nothing allocates per frame.

use crate::g711::Law;
use crate::sdp::RtpMap;

/// An audio codec as negotiated in SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 µ-law (RFC 3551 §4.5.14), static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// G.722 (RFC 3551 §4.5.2), static payload type 9: 16 kHz audio, 8 kHz RTP clock.
    G722,
    /// Opus (RFC 7587), dynamic payload type, `opus/48000/2`.
    Opus,
}

impl Codec {
    /// The codec an `rtpmap` names (encoding names are case-insensitive, RFC 4855 §3).
    pub fn from_rtpmap(map: &RtpMap) -> Option<Self> {
        let name = map.encoding.to_ascii_lowercase();
        match (name.as_str(), map.clock_rate) {
            ("pcmu", 8_000) => Some(Self::Pcmu),
            ("pcma", 8_000) => Some(Self::Pcma),
            ("g722", 8_000) => Some(Self::G722),
            ("opus", 48_000) => Some(Self::Opus),
            _ => None,
        }
    }

    /// The codec of a static payload type (RFC 3551 §6), for streams without `rtpmap`.
    pub fn from_static_payload_type(payload_type: u8) -> Option<Self> {
        match payload_type {
            0 => Some(Self::Pcmu),
            8 => Some(Self::Pcma),
            9 => Some(Self::G722),
            _ => None,
        }
    }

    /// The RTP clock rate (timestamp units per second).
    pub const fn clock_rate(self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma | Self::G722 => 8_000,
            Self::Opus => 48_000,
        }
    }

    /// The rate of the decoded audio.
    pub const fn sample_rate(self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma => 8_000,
            // RFC 3551 §4.5.2: the clock says 8000 for historical reasons; the audio is 16 kHz.
            Self::G722 => 16_000,
            Self::Opus => 48_000,
        }
    }

    /// Whether the audio is wideband (more than 8 kHz sampling): a recording of such a leg is
    /// written at 16 kHz.
    pub const fn is_wideband(self) -> bool {
        self.sample_rate() > 8_000
    }
}

/// Why a payload could not be decoded or PCM encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The output buffer cannot hold the result.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The payload is not valid for the codec.
    #[error("invalid payload")]
    InvalidPayload,
}

/// Turns RTP payloads into 16-bit PCM at [`Codec::sample_rate`].
pub trait Decoder {
    /// The codec.
    fn codec(&self) -> Codec;

    /// Decodes one payload into `pcm`; returns the number of samples written.
    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError>;

    /// Fills `pcm` for a lost frame (packet-loss concealment); returns the samples written.
    /// Codecs without their own concealment fade the last frame out (ITU-T G.711 Appendix I
    /// in spirit).
    fn conceal(&mut self, pcm: &mut [i16]) -> usize;
}

/// Turns 16-bit PCM at [`Codec::sample_rate`] into RTP payloads.
pub trait Encoder {
    /// The codec.
    fn codec(&self) -> Codec;

    /// Encodes `pcm` into `payload`; returns the number of bytes written.
    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError>;
}

/// G.711 decoding with a fading repeat of the last frame as concealment.
#[derive(Clone, Debug)]
pub struct G711Decoder {
    law: Law,
    /// The last frame decoded (up to 60 ms), and how many concealments followed it.
    last: [i16; 480],
    last_len: usize,
    concealed: u32,
}

impl G711Decoder {
    /// A decoder for `law`.
    pub fn new(law: Law) -> Self {
        Self {
            law,
            last: [0; 480],
            last_len: 0,
            concealed: 0,
        }
    }
}

impl Decoder for G711Decoder {
    fn codec(&self) -> Codec {
        match self.law {
            Law::Ulaw => Codec::Pcmu,
            Law::Alaw => Codec::Pcma,
        }
    }

    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        if pcm.len() < payload.len() {
            return Err(CodecError::BufferTooSmall);
        }
        let n = self.law.decode(payload, pcm);
        self.last_len = n.min(self.last.len());
        self.last[..self.last_len].copy_from_slice(&pcm[..self.last_len]);
        self.concealed = 0;
        Ok(n)
    }

    fn conceal(&mut self, pcm: &mut [i16]) -> usize {
        self.concealed = self.concealed.saturating_add(1);
        fade_last_frame(&self.last[..self.last_len], self.concealed, pcm)
    }
}

/// Concealment for codecs without their own: the last frame at 3/4 for the first lost frame,
/// then 1/4, then silence (the `nth` loss in a row, from 1). A stream that ended (which looks
/// like loss) is not stretched, and a single loss is bridged. Fills `pcm`; returns its length.
pub(crate) fn fade_last_frame(last: &[i16], nth: u32, pcm: &mut [i16]) -> usize {
    let (num, den) = match nth {
        1 => (3, 4),
        2 => (1, 4),
        _ => (0, 1),
    };
    for (i, out) in pcm.iter_mut().enumerate() {
        let source = if last.is_empty() {
            0
        } else {
            last[i % last.len()]
        };
        // |source * 3 / 4| never exceeds |source|: the cast cannot overflow.
        *out = (i32::from(source) * num / den) as i16;
    }
    pcm.len()
}

/// G.711 encoding.
#[derive(Clone, Copy, Debug)]
pub struct G711Encoder {
    law: Law,
}

impl G711Encoder {
    /// An encoder for `law`.
    pub fn new(law: Law) -> Self {
        Self { law }
    }
}

impl Encoder for G711Encoder {
    fn codec(&self) -> Codec {
        match self.law {
            Law::Ulaw => Codec::Pcmu,
            Law::Alaw => Codec::Pcma,
        }
    }

    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        if payload.len() < pcm.len() {
            return Err(CodecError::BufferTooSmall);
        }
        Ok(self.law.encode(pcm, payload))
    }
}

/// A decoder for `codec`, if one is implemented (G.711 and G.722 today).
pub fn decoder(codec: Codec) -> Option<Box<dyn Decoder + Send>> {
    match codec {
        Codec::Pcmu => Some(Box::new(G711Decoder::new(Law::Ulaw))),
        Codec::Pcma => Some(Box::new(G711Decoder::new(Law::Alaw))),
        Codec::G722 => Some(Box::new(crate::g722::G722Decoder::new())),
        Codec::Opus => None,
    }
}

/// An encoder for `codec`, if one is implemented (G.711 and G.722 today).
pub fn encoder(codec: Codec) -> Option<Box<dyn Encoder + Send>> {
    match codec {
        Codec::Pcmu => Some(Box::new(G711Encoder::new(Law::Ulaw))),
        Codec::Pcma => Some(Box::new(G711Encoder::new(Law::Alaw))),
        Codec::G722 => Some(Box::new(crate::g722::G722Encoder::new())),
        Codec::Opus => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(encoding: &str, clock_rate: u32) -> RtpMap {
        RtpMap {
            payload_type: 96,
            encoding: encoding.into(),
            clock_rate,
            channels: None,
        }
    }

    #[test]
    fn negotiation_names_and_rates() {
        assert_eq!(Codec::from_rtpmap(&map("PCMU", 8000)), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap(&map("pcma", 8000)), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap(&map("opus", 48000)), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap(&map("PCMU", 16000)), None);
        assert_eq!(Codec::from_rtpmap(&map("telephone-event", 8000)), None);
        assert_eq!(Codec::from_static_payload_type(9), Some(Codec::G722));
        assert_eq!(Codec::from_static_payload_type(101), None);
        // G.722's famous quirk: an 8 kHz clock for 16 kHz audio.
        assert_eq!(
            (Codec::G722.clock_rate(), Codec::G722.sample_rate()),
            (8000, 16000)
        );
        assert!(Codec::G722.is_wideband() && !Codec::Pcmu.is_wideband());
    }

    #[test]
    fn g711_through_the_interface_and_concealment_fades_out() {
        let pcm: Vec<i16> = (0..160).map(|i| ((i % 40) * 500 - 10_000) as i16).collect();
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut encoder = encoder(codec).unwrap();
            let mut decoder = decoder(codec).unwrap();
            assert_eq!((encoder.codec(), decoder.codec()), (codec, codec));
            let mut payload = [0u8; 160];
            assert_eq!(encoder.encode(&pcm, &mut payload), Ok(160));
            let mut decoded = [0i16; 160];
            assert_eq!(decoder.decode(&payload, &mut decoded), Ok(160));
            for (a, b) in pcm.iter().zip(&decoded) {
                assert!((a - b).abs() <= 320, "{a} vs {b}");
            }
            let mut small = [0i16; 10];
            assert_eq!(
                decoder.decode(&payload, &mut small),
                Err(CodecError::BufferTooSmall)
            );
            let energy = |frame: &[i16]| frame.iter().map(|&s| i64::from(s).pow(2)).sum::<i64>();
            let mut concealed = [0i16; 160];
            decoder.conceal(&mut concealed);
            let first = energy(&concealed);
            decoder.conceal(&mut concealed);
            let second = energy(&concealed);
            decoder.conceal(&mut concealed);
            assert!(first > second && second > 0 && energy(&concealed) == 0);
        }
        assert!(decoder(Codec::Opus).is_none() && encoder(Codec::Opus).is_none());
        assert!(decoder(Codec::G722).is_some() && encoder(Codec::G722).is_some());
    }
}
