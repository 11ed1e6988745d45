//! G.722 (ITU-T Recommendation G.722, 1988, "7 kHz audio-coding within 64 kbit/s"): sub-band
//! ADPCM of 16 kHz audio, RTP payload type 9 (RFC 3551 §4.5.2). Only mode 1 (64 kbit/s, all six
//! lower sub-band bits carry audio) is implemented: that is what payload type 9 carries.
//!
//! The structure follows the recommendation:
//!
//! - the transmit QMF (§3.1, §5) splits each pair of 16 kHz samples into one lower and one
//!   higher sub-band sample at 8 kHz with the 24-tap quadrature mirror filter; the receive
//!   QMF (§4.4, §5) interpolates the two reconstructed sub-bands back to 16 kHz;
//! - the lower sub-band (§3.2, §4.2, §6) is coded with 6 bits by an adaptive 60-level quantizer
//!   (block QUANTL, table `q6` with codes `iln`/`ilp`); the encoder and the decoder's predictor
//!   use the 4-bit truncated code and the 15-level inverse quantizer (INVQAL, `qm4`), the
//!   decoder's output the full 6-bit code (INVQBL, `qm6`);
//! - the higher sub-band (§3.3, §4.3, §7) is coded with 2 bits (QUANTH with `q2 = 564`,
//!   `ihn`/`ihp`; INVQAH, `qm2`);
//! - in both sub-bands the quantizer scale factor adapts in the log domain with a leak of
//!   127/128 (LOGSCL/LOGSCH with `wl`/`rl42` and `wh`/`rh2`) and is converted back to linear by
//!   a table of 32 mantissas (SCALEL/SCALEH, `ilb`); the adaptive predictor has two poles and
//!   six zeros updated by sign-sign gradient steps (PARREC, RECONS, UPPOL2, UPPOL1, UPZERO,
//!   DELAYA, FILTEP, FILTEZ, PREDIC: "block 4" of both sub-bands).
//!
//! The arithmetic is the recommendation's fixed-point arithmetic (16-bit saturating
//! intermediate results, arithmetic right shifts), so the output interoperates bit for bit
//! with other conforming implementations; the tests check it against FFmpeg's encoder and
//! decoder on vectors in `media/tests/data/g722/`. Input and output are 16-bit linear PCM (the
//! 14-bit uniform PCM of §1 in the top bits): the transmit QMF's final shift by 14 and the
//! receive QMF's by 11 convert between that and the 15-bit sub-band signals.
//!
//! Each octet carries the 2-bit higher sub-band code in its two most significant bits and the
//! 6-bit lower sub-band code in the rest (§3.4). Two input samples make one octet; the
//! delay of the two QMFs together is 22 samples at 16 kHz.
//!
//! All state lives in fixed-size arrays: nothing allocates, and no input makes the code panic.

use crate::codec::{Codec, CodecError};

/// The 24 QMF coefficients h(0)..h(23) scaled by 2^13 (§5, transmit and receive QMF). The filter
/// is symmetric: h(i) = h(23 - i).
const QMF: [i32; 24] = [
    3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876, 3876, 951, -805, -210, 362, 32,
    -156, 12, 53, -11, -11, 3,
];

/// `q6`: decision levels of the 6-bit lower sub-band quantizer (§6, QUANTL), scaled so that
/// the threshold for interval `mil` is `q6[mil] * DETL >> 12`. Index 0 is unused.
const Q6: [i32; 30] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919,
];

/// `iln`: the lower sub-band code for a negative difference in interval `mil` (§6, QUANTL).
const ILN: [u8; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];

/// `ilp`: the lower sub-band code for a positive (or zero) difference in interval `mil`.
const ILP: [u8; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];

/// `qm4`: outputs of the 4-bit (15-level) inverse quantizer, by truncated code `IL >> 2`
/// (§6, INVQAL), scaled by 2^15 relative to DETL.
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];

/// `qm6`: outputs of the 6-bit (60-level) inverse quantizer used for the mode 1 output
/// (§6, INVQBL). Codes 0 to 3 are never sent; they decode like code 63, the smallest negative
/// level.
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];

/// `rl42`: the magnitude index of a 4-bit truncated lower sub-band code (§6, LOGSCL).
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];

/// `wl`: log-domain scale factor multipliers of the lower sub-band, by magnitude index
/// (§6, LOGSCL).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];

/// `ilb`: the 32 mantissas of the log-to-linear scale factor conversion (§6 SCALEL, §7 SCALEH),
/// 2048 × 2^(i/32).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// `q2`: the single decision level of the 2-bit higher sub-band quantizer, scaled like `q6`
/// (§7, QUANTH).
const Q2: i32 = 564;

/// `ihn`: the higher sub-band code for a negative difference in interval `mih` (1 or 2).
const IHN: [u8; 3] = [0, 1, 0];

/// `ihp`: the higher sub-band code for a positive (or zero) difference in interval `mih`.
const IHP: [u8; 3] = [0, 3, 2];

/// `qm2`: outputs of the 2-bit inverse quantizer, by higher sub-band code (§7, INVQAH).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];

/// `rh2`: the magnitude index of a higher sub-band code (§7, LOGSCH).
const RH2: [usize; 4] = [2, 1, 2, 1];

/// `wh`: log-domain scale factor multipliers of the higher sub-band (§7, LOGSCH).
const WH: [i32; 3] = [0, -214, 798];

/// Upper limit of the lower sub-band log scale factor NBL (§6, LOGSCL).
const NBL_MAX: i32 = 18_432;
/// Upper limit of the higher sub-band log scale factor NBH (§7, LOGSCH).
const NBH_MAX: i32 = 22_528;

/// Saturates to the 16-bit two's complement range, as every intermediate result of the
/// recommendation's arithmetic is.
const fn sat16(value: i32) -> i32 {
    if value > i16::MAX as i32 {
        i16::MAX as i32
    } else if value < i16::MIN as i32 {
        i16::MIN as i32
    } else {
        value
    }
}

/// The magnitude of a quantizer input as QUANTL and QUANTH form it: the value itself when
/// non-negative, its one's complement (`-(x + 1)`) when negative.
const fn magnitude(value: i32) -> i32 {
    if value < 0 { -(value + 1) } else { value }
}

/// The state of one sub-band's ADPCM: quantizer scale factor and adaptive predictor. The field
/// names are the recommendation's (§6.2 and §7.2), without the L/H band suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Band {
    /// NB: the log-domain scale factor.
    nb: i32,
    /// DET: the linear scale factor of the quantizer and inverse quantizers.
    det: i32,
    /// S: the predictor output, the estimate of the next sub-band sample.
    s: i32,
    /// SZ: the zero section's part of `s`.
    sz: i32,
    /// A1, A2: the pole coefficients.
    a: [i32; 2],
    /// B1..B6: the zero coefficients.
    b: [i32; 6],
    /// DLT1..DLT6: the last six quantized differences, newest first.
    d: [i32; 6],
    /// PLT1, PLT2: the last two partially reconstructed signals (difference plus zero
    /// section), newest first.
    p: [i32; 2],
    /// RLT1, RLT2: the last two reconstructed signals, newest first.
    r: [i32; 2],
}

impl Band {
    /// The reset state of §6.2/§7.2: everything zero except the scale factor, which starts at
    /// its minimum (DETL = 32, DETH = 8).
    const fn new(det: i32) -> Self {
        Self {
            nb: 0,
            det,
            s: 0,
            sz: 0,
            a: [0; 2],
            b: [0; 6],
            d: [0; 6],
            p: [0; 2],
            r: [0; 2],
        }
    }

    /// An inverse quantizer output: `DET × multiplier >> 15` (INVQAL, INVQBL, INVQAH).
    const fn dequantize(&self, multiplier: i32) -> i32 {
        (self.det * multiplier) >> 15
    }

    /// Scale factor adaptation (LOGSCL/SCALEL, LOGSCH/SCALEH): the log scale factor leaks by
    /// 127/128 and takes the code's multiplier, limited to `0..=max`; the linear scale factor
    /// is `ilb[mantissa]` shifted by the exponent relative to `offset` (8 for the lower
    /// sub-band, 10 for the higher), times 4.
    fn adapt_scale(&mut self, multiplier: i32, max: i32, offset: i32) {
        self.nb = (((self.nb * 127) >> 7) + multiplier).clamp(0, max);
        let mantissa = ILB[((self.nb >> 6) & 31) as usize];
        // `nb` is at most 18432 (lower) or 22528 (higher): `nb >> 11` is at most 9 or 11, so
        // the shift is at least -1 and the result at most 4008 × 2 × 4.
        let shift = offset - (self.nb >> 11);
        let linear = if shift < 0 {
            mantissa << -shift
        } else {
            mantissa >> shift
        };
        self.det = linear << 2;
    }

    /// The adaptive predictor ("block 4"), given the quantized difference `dlt` of this
    /// sample: reconstructs the signal, adapts the pole and zero coefficients and computes the
    /// prediction `s` of the next sample.
    fn predict(&mut self, dlt: i32) {
        // RECONS and PARREC: the reconstructed and the partially reconstructed signal.
        let r0 = sat16(self.s + dlt);
        let p0 = sat16(self.sz + dlt);

        // UPPOL2: the second pole, from the signs of the last three partial signals.
        let sg0 = p0 < 0;
        let sg1 = self.p[0] < 0;
        let sg2 = self.p[1] < 0;
        let wd1 = sat16(self.a[0] << 2);
        let wd2 = (if sg0 == sg1 { -wd1 } else { wd1 }).min(i32::from(i16::MAX));
        let wd3 = if sg0 == sg2 { 128 } else { -128 };
        let a2 = (wd3 + (wd2 >> 7) + ((self.a[1] * 32_512) >> 15)).clamp(-12_288, 12_288);

        // UPPOL1: the first pole, limited by the second so that the filter stays stable.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let limit = 15_360 - a2;
        let a1 = sat16(wd1 + ((self.a[0] * 32_640) >> 15)).clamp(-limit, limit);

        // UPZERO: the six zeros, from the sign agreement of the difference with its history.
        let step = if dlt == 0 { 0 } else { 128 };
        for (b, &d) in self.b.iter_mut().zip(&self.d) {
            let wd2 = if (dlt < 0) == (d < 0) { step } else { -step };
            *b = sat16(wd2 + ((*b * 32_640) >> 15));
        }

        // DELAYA: shift the histories.
        self.d.copy_within(0..5, 1);
        self.d[0] = dlt;
        self.p = [p0, self.p[0]];
        self.r = [r0, self.r[0]];
        self.a = [a1, a2];

        // FILTEP: the pole section.
        let sp = sat16(
            ((self.a[0] * sat16(self.r[0] << 1)) >> 15)
                + ((self.a[1] * sat16(self.r[1] << 1)) >> 15),
        );
        // FILTEZ: the zero section.
        let sz = self
            .b
            .iter()
            .zip(&self.d)
            .map(|(&b, &d)| (b * sat16(d << 1)) >> 15)
            .sum::<i32>();
        self.sz = sat16(sz);
        // PREDIC: the prediction.
        self.s = sat16(sp + self.sz);
    }

    /// One lower sub-band sample through the encoder (§3.2): the 6-bit code of `xl`.
    fn encode_low(&mut self, xl: i32) -> u8 {
        // SUBTRA and QUANTL.
        let el = sat16(xl - self.s);
        let wd = magnitude(el);
        let mil = (1..Q6.len())
            .find(|&mil| wd < (Q6[mil] * self.det) >> 12)
            .unwrap_or(Q6.len());
        let il = if el < 0 { ILN[mil] } else { ILP[mil] };
        self.update_low(il);
        il
    }

    /// One lower sub-band code through the decoder (§4.2): the reconstructed sample.
    fn decode_low(&mut self, il: u8) -> i32 {
        // INVQBL, RECONS and LIMIT: the output uses all six bits (mode 1).
        let rl = (self.s + self.dequantize(QM6[usize::from(il & 0x3f)])).clamp(-16_384, 16_383);
        self.update_low(il);
        rl
    }

    /// The part of the lower sub-band ADPCM common to encoder and decoder: INVQAL on the 4-bit
    /// truncated code, block 4, LOGSCL and SCALEL.
    fn update_low(&mut self, il: u8) {
        let il4 = usize::from((il >> 2) & 0x0f);
        let dlt = self.dequantize(QM4[il4]);
        self.predict(dlt);
        self.adapt_scale(WL[RL42[il4]], NBL_MAX, 8);
    }

    /// One higher sub-band sample through the encoder (§3.3): the 2-bit code of `xh`.
    fn encode_high(&mut self, xh: i32) -> u8 {
        // SUBTRA and QUANTH.
        let eh = sat16(xh - self.s);
        let mih = if magnitude(eh) >= (Q2 * self.det) >> 12 {
            2
        } else {
            1
        };
        let ih = if eh < 0 { IHN[mih] } else { IHP[mih] };
        self.update_high(ih);
        ih
    }

    /// One higher sub-band code through the decoder (§4.3): the reconstructed sample.
    fn decode_high(&mut self, ih: u8) -> i32 {
        // INVQAH, RECONS and LIMIT.
        let dh = self.dequantize(QM2[usize::from(ih & 3)]);
        let rh = (self.s + dh).clamp(-16_384, 16_383);
        self.update_high(ih);
        rh
    }

    /// The part of the higher sub-band ADPCM common to encoder and decoder: INVQAH, block 4,
    /// LOGSCH and SCALEH.
    fn update_high(&mut self, ih: u8) {
        let ih = usize::from(ih & 3);
        let dh = self.dequantize(QM2[ih]);
        self.predict(dh);
        self.adapt_scale(WH[RH2[ih]], NBH_MAX, 10);
    }
}

/// The G.722 encoder at 64 kbit/s: 16 kHz 16-bit PCM in, one octet per two samples out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct G722Encoder {
    /// The transmit QMF's delay line: the last 24 input samples, newest first.
    history: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder in the reset state of the recommendation (64 kbit/s, mode 1).
    pub const fn new() -> Self {
        Self {
            history: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Encodes `pcm` (16 kHz) into `out`, one octet per pair of samples, and returns the number
    /// of octets written: the smaller of `pcm.len() / 2` and `out.len()`. A trailing odd sample
    /// is not encoded (G.722 codes sample pairs; 16 kHz frames of whole milliseconds are even).
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let n = (pcm.len() / 2).min(out.len());
        for (octet, pair) in out[..n].iter_mut().zip(pcm.chunks_exact(2)) {
            *octet = self.encode_pair(pair[0], pair[1]);
        }
        n
    }

    /// One pair of samples (`first` earlier in time) to one octet.
    fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF (§3.1, §5): XA = Σ h(2i)·x(j-2i), XB = Σ h(2i+1)·x(j-2i-1), with x(j)
        // the newer sample; XL = XA + XB, XH = XA - XB. The coefficients are in Q13 and the
        // input has 16 bits, so a shift by 14 gives the 15-bit sub-band signals.
        self.history.copy_within(0..22, 2);
        self.history[1] = i32::from(first);
        self.history[0] = i32::from(second);
        let (mut xa, mut xb) = (0, 0);
        for (h, x) in QMF.chunks_exact(2).zip(self.history.chunks_exact(2)) {
            xa += h[0] * x[0];
            xb += h[1] * x[1];
        }
        let il = self.low.encode_low((xa + xb) >> 14);
        let ih = self.high.encode_high((xa - xb) >> 14);
        // Multiplexer (§3.4).
        (ih << 6) | il
    }
}

/// The G.722 decoder at 64 kbit/s (mode 1): one octet in, two 16 kHz 16-bit samples out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct G722Decoder {
    /// The receive QMF's delay lines: the last 12 differences XD = RL - RH and sums
    /// XS = RL + RH, newest first.
    difference: [i32; 12],
    sum: [i32; 12],
    low: Band,
    high: Band,
    /// For [`crate::codec::Decoder::conceal`]: the last frame decoded (up to 60 ms), and how
    /// many concealments followed it.
    last: [i16; 960],
    last_len: usize,
    concealed: u32,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in the reset state of the recommendation, for 64 kbit/s (mode 1).
    pub const fn new() -> Self {
        Self {
            difference: [0; 12],
            sum: [0; 12],
            low: Band::new(32),
            high: Band::new(8),
            last: [0; 960],
            last_len: 0,
            concealed: 0,
        }
    }

    /// Decodes `input` into `out` (16 kHz), two samples per octet, and returns the number of
    /// samples written: twice the number of octets decoded, which is the smaller of
    /// `input.len()` and `out.len() / 2`.
    pub fn decode(&mut self, input: &[u8], out: &mut [i16]) -> usize {
        let n = input.len().min(out.len() / 2);
        for (pair, &octet) in out.chunks_exact_mut(2).zip(&input[..n]) {
            let [first, second] = self.decode_octet(octet);
            pair[0] = first;
            pair[1] = second;
        }
        2 * n
    }

    /// One octet to two samples, earlier first.
    fn decode_octet(&mut self, octet: u8) -> [i16; 2] {
        // Demultiplexer (§4.1).
        let rl = self.low.decode_low(octet & 0x3f);
        let rh = self.high.decode_high(octet >> 6);
        // Receive QMF (§4.4, §5): xout(j) = 2 Σ h(2i)·XD(j-i), xout(j+1) = 2 Σ h(2i+1)·XS(j-i).
        // The coefficients are in Q13 and the output has 16 bits: a shift by 11.
        self.difference.copy_within(0..11, 1);
        self.difference[0] = rl - rh;
        self.sum.copy_within(0..11, 1);
        self.sum[0] = rl + rh;
        let (mut even, mut odd) = (0, 0);
        for ((h, &xd), &xs) in QMF.chunks_exact(2).zip(&self.difference).zip(&self.sum) {
            even += h[0] * xd;
            odd += h[1] * xs;
        }
        [sat16(even >> 11) as i16, sat16(odd >> 11) as i16]
    }
}

impl crate::codec::Decoder for G722Decoder {
    fn codec(&self) -> Codec {
        Codec::G722
    }

    /// Decodes a payload of `n` octets into `2 × n` samples at 16 kHz.
    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        if pcm.len() / 2 < payload.len() {
            return Err(CodecError::BufferTooSmall);
        }
        let n = Self::decode(self, payload, pcm);
        self.last_len = n.min(self.last.len());
        self.last[..self.last_len].copy_from_slice(&pcm[..self.last_len]);
        self.concealed = 0;
        Ok(n)
    }

    /// The last frame repeated at 3/4, then 1/4, then silence, as for G.711.
    ///
    /// The ADPCM and QMF state is left as the last received octet left it: the lost codes
    /// cannot be reproduced, and decoding invented ones would move the predictor and the scale
    /// factors further from the encoder's. The next received payload continues from that state;
    /// the scale factor adaptation (leak 127/128 per sample) and the predictor re-converge on
    /// the encoder's within a few milliseconds.
    fn conceal(&mut self, pcm: &mut [i16]) -> usize {
        self.concealed = self.concealed.saturating_add(1);
        crate::codec::fade_last_frame(&self.last[..self.last_len], self.concealed, pcm)
    }
}

impl crate::codec::Encoder for G722Encoder {
    fn codec(&self) -> Codec {
        Codec::G722
    }

    /// Encodes 16 kHz PCM into one octet per pair of samples (a trailing odd sample is not
    /// encoded).
    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        if payload.len() < pcm.len() / 2 {
            return Err(CodecError::BufferTooSmall);
        }
        Ok(Self::encode(self, pcm, payload))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::Decoder as _;

    /// The test signal: 0.5 s at 16 kHz (see `media/tests/data/g722/README.md`).
    const INPUT: &[u8] = include_bytes!("../tests/data/g722/input.s16");
    /// FFmpeg's G.722 encoding of [`INPUT`].
    const ENCODED: &[u8] = include_bytes!("../tests/data/g722/encoded.g722");
    /// FFmpeg's G.722 decoding of [`ENCODED`].
    const DECODED: &[u8] = include_bytes!("../tests/data/g722/decoded.s16");
    /// 512 pseudo-random octets: every code, including the lower sub-band codes 0 to 3 that no
    /// encoder sends, and wild swings of the predictor.
    const RANDOM: &[u8] = include_bytes!("../tests/data/g722/random.g722");
    /// FFmpeg's G.722 decoding of [`RANDOM`].
    const RANDOM_DECODED: &[u8] = include_bytes!("../tests/data/g722/random.decoded.s16");

    fn samples(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn encoder_matches_reference_bit_for_bit() {
        let pcm = samples(INPUT);
        let mut encoder = G722Encoder::new();
        let mut out = vec![0u8; pcm.len() / 2];
        // In 20 ms frames, as on an RTP path: the state carries across calls.
        let mut written = 0;
        for frame in pcm.chunks(320) {
            written += encoder.encode(frame, &mut out[written..]);
        }
        assert_eq!(written, ENCODED.len());
        if let Some(i) = out.iter().zip(ENCODED).position(|(a, b)| a != b) {
            panic!(
                "first difference at octet {i}: {:#04x} vs reference {:#04x}",
                out[i], ENCODED[i]
            );
        }
    }

    #[test]
    fn decoder_matches_reference_sample_for_sample() {
        for (input, reference) in [(ENCODED, DECODED), (RANDOM, RANDOM_DECODED)] {
            let reference = samples(reference);
            let mut decoder = G722Decoder::new();
            let mut out = vec![0i16; input.len() * 2];
            let mut written = 0;
            for frame in input.chunks(160) {
                written += decoder.decode(frame, &mut out[written..]);
            }
            assert_eq!(written, reference.len());
            if let Some(i) = out.iter().zip(&reference).position(|(a, b)| a != b) {
                panic!(
                    "first difference at sample {i}: {} vs reference {}",
                    out[i], reference[i]
                );
            }
        }
    }

    #[test]
    fn silence_is_the_well_known_idle_octet() {
        // Zero input quantizes to the smallest positive levels of both sub-bands: lower code
        // 58 (interval 4 at the minimum DETL), higher code 3. The small positive quantized
        // differences then build up in the predictor and the codes wander among the innermost
        // levels (as FFmpeg's do), which decode to near silence.
        let mut encoder = G722Encoder::new();
        let mut out = [0u8; 80];
        assert_eq!(encoder.encode(&[0; 160], &mut out), 80);
        assert!(out[..40].iter().all(|&o| o == 0xfa), "{out:x?}");
        let mut decoder = G722Decoder::new();
        let mut pcm = [0i16; 160];
        assert_eq!(decoder.decode(&out, &mut pcm), 160);
        assert!(pcm.iter().all(|s| s.abs() <= 4), "{pcm:?}");
    }

    /// The round trip of a 1 kHz tone at -10 dBFS: once the 22-sample delay of the two QMFs
    /// is compensated, the signal-to-noise ratio is above 40 dB.
    #[test]
    fn tone_round_trip_snr() {
        const DELAY: usize = 22;
        let pcm: Vec<i16> = (0..3200)
            .map(|n| {
                let t = f64::from(n) / 16_000.0;
                (10_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()).round() as i16
            })
            .collect();
        let mut encoder = G722Encoder::new();
        let mut decoder = G722Decoder::new();
        let mut encoded = vec![0u8; pcm.len() / 2];
        let mut decoded = vec![0i16; pcm.len()];
        assert_eq!(encoder.encode(&pcm, &mut encoded), 1600);
        assert_eq!(decoder.decode(&encoded, &mut decoded), 3200);
        let snr = |delay: usize| {
            // Skip the first 20 ms while the adaptation settles.
            let (mut signal, mut noise) = (0.0, 0.0);
            for (&x, &y) in pcm[320..pcm.len() - 40].iter().zip(&decoded[320 + delay..]) {
                signal += f64::from(x).powi(2);
                noise += (f64::from(x) - f64::from(y)).powi(2);
            }
            10.0 * (signal / noise).log10()
        };
        // The tone's period is 16 samples: the delay is the best lag within one period (the
        // chirp of the reference vectors, which is not periodic, shows the same 22 samples).
        let best = (16..32).max_by(|&a, &b| snr(a).total_cmp(&snr(b))).unwrap();
        assert_eq!(best, DELAY);
        // 47.8 dB in fact.
        assert!(snr(DELAY) > 40.0, "SNR {:.1} dB", snr(DELAY));
    }

    #[test]
    fn short_buffers_and_odd_lengths() {
        let mut encoder = G722Encoder::new();
        let mut out = [0u8; 4];
        assert_eq!(encoder.encode(&[1, 2, 3], &mut out), 1);
        assert_eq!(encoder.encode(&[0; 20], &mut out), 4);
        assert_eq!(encoder.encode(&[], &mut out), 0);
        let mut decoder = G722Decoder::new();
        let mut pcm = [0i16; 5];
        assert_eq!(decoder.decode(&[0xfa; 8], &mut pcm), 4);
        assert_eq!(decoder.decode(&[0xfa; 8], &mut []), 0);
    }

    #[test]
    fn through_the_codec_interface_and_concealment_fades_out() {
        let pcm: Vec<i16> = samples(INPUT)[..320].to_vec();
        let mut encoder = G722Encoder::new();
        let mut decoder = G722Decoder::new();
        assert_eq!(
            (
                crate::codec::Encoder::codec(&encoder),
                crate::codec::Decoder::codec(&decoder)
            ),
            (Codec::G722, Codec::G722)
        );
        let mut payload = [0u8; 160];
        assert_eq!(
            crate::codec::Encoder::encode(&mut encoder, &pcm, &mut payload),
            Ok(160)
        );
        assert_eq!(&payload[..], &ENCODED[..160]);
        assert_eq!(
            crate::codec::Encoder::encode(&mut encoder, &pcm, &mut payload[..10]),
            Err(CodecError::BufferTooSmall)
        );
        let mut decoded = [0i16; 320];
        assert_eq!(
            crate::codec::Decoder::decode(&mut decoder, &payload, &mut decoded),
            Ok(320)
        );
        assert_eq!(&decoded[..], &samples(DECODED)[..320]);
        assert_eq!(
            crate::codec::Decoder::decode(&mut decoder, &payload, &mut decoded[..319]),
            Err(CodecError::BufferTooSmall)
        );
        let energy = |frame: &[i16]| frame.iter().map(|&s| i64::from(s).pow(2)).sum::<i64>();
        let mut concealed = [0i16; 320];
        assert_eq!(decoder.conceal(&mut concealed), 320);
        let first = energy(&concealed);
        decoder.conceal(&mut concealed);
        let second = energy(&concealed);
        decoder.conceal(&mut concealed);
        assert!(first > second && second > 0 && energy(&concealed) == 0);
        // Concealment leaves the ADPCM state alone: decoding resumes where it stopped.
        let mut resumed = [0i16; 320];
        let mut fresh = G722Decoder::new();
        fresh.decode(&ENCODED[..160], &mut resumed);
        let mut expected = [0i16; 320];
        fresh.decode(&ENCODED[160..320], &mut expected);
        decoder.decode(&ENCODED[160..320], &mut resumed);
        assert_eq!(resumed, expected);
        // A decoder that never decoded conceals with silence.
        let mut idle = G722Decoder::new();
        assert_eq!(idle.conceal(&mut concealed), 320);
        assert_eq!(energy(&concealed), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any octets decode (no panic, no overflow), and the output stays finite in state.
        #[test]
        fn arbitrary_octets_decode(input in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut decoder = G722Decoder::new();
            let mut out = vec![0i16; input.len() * 2];
            prop_assert_eq!(decoder.decode(&input, &mut out), input.len() * 2);
            prop_assert!(decoder.low.nb <= NBL_MAX && decoder.high.nb <= NBH_MAX);
        }

        /// Any samples encode (no panic, no overflow), including full-scale noise, and the
        /// result decodes.
        #[test]
        fn arbitrary_samples_encode(pcm in proptest::collection::vec(any::<i16>(), 0..800)) {
            let mut encoder = G722Encoder::new();
            let mut encoded = vec![0u8; pcm.len() / 2];
            prop_assert_eq!(encoder.encode(&pcm, &mut encoded), pcm.len() / 2);
            let mut decoder = G722Decoder::new();
            let mut decoded = vec![0i16; pcm.len()];
            prop_assert_eq!(decoder.decode(&encoded, &mut decoded), 2 * (pcm.len() / 2));
        }
    }
}
