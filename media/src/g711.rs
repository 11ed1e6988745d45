//! G.711 (ITU-T Recommendation G.711, 1988): 64 kbit/s companded PCM, µ-law (PCMU, RTP payload
//! type 0) and A-law (PCMA, payload type 8), 8 bits per sample at 8 kHz.
//!
//! Encoding follows the segment tables of G.711 §2 (µ-law with bias 0x84 and a 14-bit input
//! range, A-law with a 13-bit range), the same arithmetic as the reference `g711.c` of the
//! ITU-T Software Tool Library. Decoding uses 256-entry tables built at compile time, so the
//! per-sample cost on a media path is one load.

/// Decodes one µ-law byte to a 16-bit linear sample.
pub const fn ulaw_to_linear(byte: u8) -> i16 {
    let byte = !byte;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = (byte & 0x0f) as i16;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if byte & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Encodes a 16-bit linear sample to µ-law (G.711 §2, Table 2a).
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut value = sample as i32;
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    if value > CLIP {
        value = CLIP;
    }
    value += BIAS;
    // The segment is the position of the highest set bit above bit 7: `value` is in
    // 0x84..=0x7fff, so its bit length is 8..=15 and the exponent 0..=7.
    let exponent = (32 - (value as u32).leading_zeros()) as i32 - 8;
    let mantissa = (value >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decodes one A-law byte to a 16-bit linear sample.
pub const fn alaw_to_linear(byte: u8) -> i16 {
    let byte = byte ^ 0x55;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = (byte & 0x0f) as i16;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if byte & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// Encodes a 16-bit linear sample to A-law (G.711 §2, Table 1a).
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let (sign, magnitude) = if sample >= 0 {
        (0x80, sample as i32)
    } else {
        (0x00, -(sample as i32) - 1)
    };
    let magnitude = if magnitude > 32_767 {
        32_767
    } else {
        magnitude
    };
    let code = if magnitude < 256 {
        magnitude >> 4
    } else {
        // Segment 1..=7: `magnitude` is in 256..=32767, so its bit length is 9..=15.
        let exponent = (32 - (magnitude as u32).leading_zeros()) as i32 - 8;
        (exponent << 4) | ((magnitude >> (exponent + 3)) & 0x0f)
    };
    ((sign | code) as u8) ^ 0x55
}

macro_rules! decode_table {
    ($decode:ident) => {{
        let mut out = [0i16; 256];
        let mut i = 0;
        while i < 256 {
            out[i] = $decode(i as u8);
            i += 1;
        }
        out
    }};
}

const ULAW_TABLE: [i16; 256] = decode_table!(ulaw_to_linear);
const ALAW_TABLE: [i16; 256] = decode_table!(alaw_to_linear);

/// Which G.711 law.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    /// µ-law (PCMU), North America and Japan.
    Ulaw,
    /// A-law (PCMA), elsewhere.
    Alaw,
}

impl Law {
    /// The static RTP payload type (RFC 3551 §6).
    pub const fn payload_type(self) -> u8 {
        match self {
            Self::Ulaw => 0,
            Self::Alaw => 8,
        }
    }

    /// Decodes `input` into `output` (one sample per byte). Stops at the shorter of the two and
    /// returns the number of samples written.
    pub fn decode(self, input: &[u8], output: &mut [i16]) -> usize {
        let table = match self {
            Self::Ulaw => &ULAW_TABLE,
            Self::Alaw => &ALAW_TABLE,
        };
        let n = input.len().min(output.len());
        for (out, &byte) in output[..n].iter_mut().zip(&input[..n]) {
            *out = table[usize::from(byte)];
        }
        n
    }

    /// Encodes `input` into `output` (one byte per sample). Returns the number of bytes written.
    pub fn encode(self, input: &[i16], output: &mut [u8]) -> usize {
        let n = input.len().min(output.len());
        for (out, &sample) in output[..n].iter_mut().zip(&input[..n]) {
            *out = match self {
                Self::Ulaw => linear_to_ulaw(sample),
                Self::Alaw => linear_to_alaw(sample),
            };
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_values() {
        // Silence and full scale, from the G.711 tables.
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32_256);
        assert_eq!(alaw_to_linear(0x2a), -32_256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    #[test]
    fn every_code_round_trips() {
        // Decoding a code and encoding the result gives the code back (except µ-law's
        // negative zero 0x7f, which decodes to 0 and encodes as positive zero 0xff).
        for byte in 0..=255u8 {
            let expected = if byte == 0x7f { 0xff } else { byte };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(byte)),
                expected,
                "µ-law {byte:#04x}"
            );
            assert_eq!(
                linear_to_alaw(alaw_to_linear(byte)),
                byte,
                "A-law {byte:#04x}"
            );
        }
    }

    #[test]
    fn slices() {
        let pcm = [0i16, 1000, -1000, 30_000];
        let mut encoded = [0u8; 4];
        let mut decoded = [0i16; 4];
        for law in [Law::Ulaw, Law::Alaw] {
            assert_eq!(law.encode(&pcm, &mut encoded), 4);
            assert_eq!(law.decode(&encoded, &mut decoded), 4);
            for (a, b) in pcm.iter().zip(&decoded) {
                assert!((a - b).abs() <= 1024, "{law:?}: {a} -> {b}");
            }
        }
        assert_eq!(Law::Ulaw.decode(&encoded, &mut decoded[..2]), 2);
    }

    proptest! {
        /// Companding error is bounded by half a quantisation step of the segment: at most
        /// 1/32 of the magnitude plus the smallest step.
        #[test]
        fn quantisation_error_is_bounded(sample in any::<i16>()) {
            let limit = |s: i16| i32::from(s).abs() / 16 + 16;
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(sample)));
            let a = i32::from(alaw_to_linear(linear_to_alaw(sample)));
            // µ-law clips at ±32 635 before encoding.
            let clipped = i32::from(sample).clamp(-32_635, 32_635);
            prop_assert!((u - clipped).abs() <= limit(sample), "µ-law {} -> {}", sample, u);
            prop_assert!((a - i32::from(sample)).abs() <= limit(sample), "A-law {} -> {}", sample, a);
        }

        /// Encoding is monotonic: a louder sample never gets a quieter code.
        #[test]
        fn monotonic(a in any::<i16>(), b in any::<i16>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(ulaw_to_linear(linear_to_ulaw(lo)) <= ulaw_to_linear(linear_to_ulaw(hi)));
            prop_assert!(alaw_to_linear(linear_to_alaw(lo)) <= alaw_to_linear(linear_to_alaw(hi)));
        }
    }
}
