//! Prompts: uploaded WAV files, checked and converted to what calls play, 8 kHz mono 16-bit
//! PCM.
//!
//! The WAV reader is our own rather than `hound`'s: `hound` refuses G.711 WAV files (format
//! tags 6 and 7), and those are what telephony sound packs (Asterisk's, FreeSWITCH's) and most
//! recorded greetings are. It reads PCM of 8, 16, 24 and 32 bits, IEEE float of 32 and 64
//! bits, A-law and µ-law, plain or as `WAVE_FORMAT_EXTENSIBLE`, at 4-192 kHz with up to 8
//! channels. Everything is bounds-checked: an upload is hostile input.
//!
//! Channels are averaged to mono. Other rates are resampled with a windowed-sinc low-pass
//! filter (Blackman window, ten zero crossings each side, cut-off at 90 % of the lower
//! Nyquist frequency), so a 48 kHz recording does not fold its high frequencies into the
//! telephone band. 8 kHz mono 16-bit input passes through unchanged.

/// The sample rate of converted prompts.
pub const RATE: u32 = 8000;
/// Longest prompt accepted, in seconds.
pub const MAX_SECONDS: u32 = 600;
/// Most channels accepted.
pub const MAX_CHANNELS: u16 = 8;

/// Why an upload was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// Not a RIFF/WAVE file.
    #[error("not a WAV file (no RIFF/WAVE header)")]
    NotWav,
    /// A WAV file whose structure is broken.
    #[error("malformed WAV file: {0}")]
    Malformed(&'static str),
    /// A well-formed WAV file in a format we do not read.
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    /// No audio in it.
    #[error("the WAV file has no audio")]
    Empty,
    /// Longer than [`MAX_SECONDS`].
    #[error("the audio is longer than {MAX_SECONDS} seconds")]
    TooLong,
}

/// A converted prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// 8 kHz mono samples.
    pub samples: Vec<i16>,
    /// What the upload was, for the record: e.g. `pcm16 44100 Hz stereo`.
    pub source: String,
}

impl Prompt {
    /// Length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(RATE)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Pcm,
    Float,
    Alaw,
    Ulaw,
}

struct Format {
    encoding: Encoding,
    channels: u16,
    rate: u32,
    bits: u16,
}

impl Format {
    fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits / 8)
    }

    fn describe(&self) -> String {
        let kind = match self.encoding {
            Encoding::Pcm => format!("pcm{}", self.bits),
            Encoding::Float => format!("float{}", self.bits),
            Encoding::Alaw => "alaw".into(),
            Encoding::Ulaw => "ulaw".into(),
        };
        let channels = match self.channels {
            1 => "mono".into(),
            2 => "stereo".into(),
            n => format!("{n} channels"),
        };
        format!("{kind} {} Hz {channels}", self.rate)
    }

    /// One sample at the start of `bytes`, in -1.0..1.0.
    fn sample(&self, bytes: &[u8]) -> f32 {
        match (self.encoding, self.bits) {
            (Encoding::Pcm, 8) => (f32::from(bytes[0]) - 128.0) / 128.0,
            (Encoding::Pcm, 16) => f32::from(i16::from_le_bytes([bytes[0], bytes[1]])) / 32768.0,
            (Encoding::Pcm, 24) => {
                let v = i32::from_le_bytes([0, bytes[0], bytes[1], bytes[2]]) >> 8;
                v as f32 / 8_388_608.0
            }
            (Encoding::Pcm, _) => {
                let v = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                (f64::from(v) / 2_147_483_648.0) as f32
            }
            (Encoding::Float, 32) => {
                let v = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            }
            (Encoding::Float, _) => {
                let mut b = [0; 8];
                b.copy_from_slice(&bytes[..8]);
                let v = f64::from_le_bytes(b);
                if v.is_finite() {
                    v.clamp(-1.0, 1.0) as f32
                } else {
                    0.0
                }
            }
            (Encoding::Alaw | Encoding::Ulaw, _) => {
                let law = if self.encoding == Encoding::Alaw {
                    crate::g711::Law::Alaw
                } else {
                    crate::g711::Law::Ulaw
                };
                let mut out = [0i16; 1];
                law.decode(&bytes[..1], &mut out);
                f32::from(out[0]) / 32768.0
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_format(fmt: &[u8]) -> Result<Format, PromptError> {
    if fmt.len() < 16 {
        return Err(PromptError::Malformed("`fmt ` chunk shorter than 16 bytes"));
    }
    let mut tag = u16_at(fmt, 0);
    let channels = u16_at(fmt, 2);
    let rate = u32_at(fmt, 4);
    let block_align = u16_at(fmt, 12);
    let bits = u16_at(fmt, 14);
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: the real tag starts the SubFormat GUID at offset 24.
        if fmt.len() < 40 {
            return Err(PromptError::Malformed("extensible `fmt ` chunk too short"));
        }
        tag = u16_at(fmt, 24);
    }
    let encoding = match (tag, bits) {
        (1, 8 | 16 | 24 | 32) => Encoding::Pcm,
        (3, 32 | 64) => Encoding::Float,
        (6, 8) => Encoding::Alaw,
        (7, 8) => Encoding::Ulaw,
        _ => {
            return Err(PromptError::Unsupported(format!(
                "format tag {tag} with {bits} bits per sample (use PCM, float, A-law or µ-law)"
            )));
        }
    };
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(PromptError::Unsupported(format!(
            "{channels} channels (1 to {MAX_CHANNELS})"
        )));
    }
    if !(4000..=192_000).contains(&rate) {
        return Err(PromptError::Unsupported(format!(
            "{rate} Hz (4000 to 192000)"
        )));
    }
    let format = Format {
        encoding,
        channels,
        rate,
        bits,
    };
    if usize::from(block_align) != format.bytes_per_sample() * usize::from(channels) {
        return Err(PromptError::Malformed(
            "block alignment does not match channels and sample size",
        ));
    }
    Ok(format)
}

/// Reads a WAV file and converts it to 8 kHz mono 16-bit PCM.
pub fn convert(wav: &[u8]) -> Result<Prompt, PromptError> {
    if wav.len() < 12 || &wav[0..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return Err(PromptError::NotWav);
    }
    let mut rest = &wav[12..];
    let mut format = None;
    let mut data = None;
    while rest.len() >= 8 {
        let id = &rest[0..4];
        let size = u32_at(rest, 4) as usize;
        let body = &rest[8..];
        // Writers that stream set the data size to its maximum: take what is there.
        let len = size.min(body.len());
        match id {
            b"fmt " => format = Some(parse_format(&body[..len])?),
            b"data" => {
                data = Some(&body[..len]);
                break;
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        let skip = len.saturating_add(len & 1).min(body.len());
        rest = &body[skip..];
    }
    let format = format.ok_or(PromptError::Malformed("no `fmt ` chunk before the audio"))?;
    let data = data.ok_or(PromptError::Malformed("no `data` chunk"))?;
    let frame = format.bytes_per_sample() * usize::from(format.channels);
    let frames = data.len() / frame;
    if frames == 0 {
        return Err(PromptError::Empty);
    }
    if frames as u64 > u64::from(MAX_SECONDS) * u64::from(format.rate) {
        return Err(PromptError::TooLong);
    }
    let step = format.bytes_per_sample();
    let mono: Vec<f32> = data
        .chunks_exact(frame)
        .map(|f| {
            let sum: f32 = f.chunks_exact(step).map(|s| format.sample(s)).sum();
            sum / f32::from(format.channels)
        })
        .collect();
    let audio = if format.rate == RATE {
        mono
    } else {
        resample(&mono, format.rate, RATE)
    };
    let samples = audio
        .iter()
        .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    Ok(Prompt {
        samples,
        source: format.describe(),
    })
}

/// Zero crossings of the sinc on each side of the kernel.
const ZERO_CROSSINGS: f64 = 10.0;
/// Kernel table points per input sample.
const TABLE_RESOLUTION: f64 = 256.0;

/// Resamples `input` from `from` Hz to `to` Hz with a windowed-sinc low-pass filter.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    let (from_f, to_f) = (f64::from(from), f64::from(to));
    // Cut-off in cycles per input sample: 90 % of the lower of the two Nyquist frequencies.
    let cutoff = 0.45 * from_f.min(to_f) / from_f;
    let half_width = ZERO_CROSSINGS / (2.0 * cutoff);
    let kernel: Vec<f64> = (0..=(half_width * TABLE_RESOLUTION).ceil() as usize + 1)
        .map(|i| {
            let d = i as f64 / TABLE_RESOLUTION;
            if d >= half_width {
                return 0.0;
            }
            let x = 2.0 * cutoff * d;
            let sinc = if x == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            // Blackman window over [-half_width, half_width].
            let w = std::f64::consts::PI * (d / half_width + 1.0);
            let window = 0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos();
            2.0 * cutoff * sinc * window
        })
        .collect();
    let tap = |d: f64| {
        let pos = d.abs() * TABLE_RESOLUTION;
        let i = pos as usize;
        match (kernel.get(i), kernel.get(i + 1)) {
            (Some(&a), Some(&b)) => a + (b - a) * (pos - i as f64),
            _ => 0.0,
        }
    };
    let out_len = (input.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
    let reach = half_width.ceil() as i64;
    (0..out_len)
        .map(|n| {
            let t = n as f64 * from_f / to_f;
            let centre = t.floor() as i64;
            let lo = (centre - reach + 1).max(0);
            let hi = (centre + reach).min(input.len() as i64 - 1);
            let mut acc = 0.0;
            for k in lo..=hi {
                acc += f64::from(input[k as usize]) * tap(t - k as f64);
            }
            acc as f32
        })
        .collect()
}

/// An 8 kHz mono 16-bit WAV file holding `samples` (what prompts are downloaded as).
pub fn wav(samples: &[i16]) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A WAV file with the given header fields and raw data.
    fn wav_with(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let block = channels * (bits / 8);
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        // An unrelated chunk with an odd length, to check padding.
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(b"abc\0");
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn sine(rate: u32, hz: f64, secs: f64, amplitude: f64) -> Vec<f64> {
        (0..(f64::from(rate) * secs) as usize)
            .map(|i| {
                amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()
            })
            .collect()
    }

    fn pcm16(samples: &[f64]) -> Vec<u8> {
        samples
            .iter()
            .flat_map(|&v| ((v * 32767.0) as i16).to_le_bytes())
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (sum / samples.len() as f64).sqrt() / 32768.0
    }

    /// Sign changes per second: twice the frequency of a pure tone.
    fn crossings(samples: &[i16]) -> f64 {
        let changes = samples
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        changes as f64 * f64::from(RATE) / samples.len() as f64
    }

    #[test]
    fn eight_khz_mono_passes_through_and_round_trips() {
        let samples: Vec<i16> = (0..800).map(|i| (i * 37 % 65536 - 32768) as i16).collect();
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let prompt = convert(&wav_with(1, 1, 8000, 16, &data)).unwrap();
        assert_eq!(prompt.samples, samples);
        assert_eq!(prompt.source, "pcm16 8000 Hz mono");
        assert_eq!(prompt.duration_ms(), 100);
        // What we serve converts back to the same samples.
        assert_eq!(convert(&wav(&samples)).unwrap().samples, samples);
    }

    #[test]
    fn resampling_keeps_the_tone_and_removes_what_the_phone_cannot_carry() {
        for rate in [11_025, 16_000, 22_050, 44_100, 48_000] {
            let tone = convert(&wav_with(
                1,
                1,
                rate,
                16,
                &pcm16(&sine(rate, 1000.0, 1.0, 0.5)),
            ))
            .unwrap();
            assert_eq!(
                tone.samples.len(),
                8000,
                "{rate} Hz: one second stays one second"
            );
            let steady = &tone.samples[200..7800];
            let level = rms(steady);
            assert!(
                (level - 0.5 / 2f64.sqrt()).abs() < 0.01,
                "{rate} Hz: level {level}"
            );
            let hz = crossings(steady) / 2.0;
            assert!((hz - 1000.0).abs() < 5.0, "{rate} Hz: heard {hz} Hz");
        }
        // 5 kHz is above the 4 kHz Nyquist frequency: it must not fold back to 3 kHz.
        let high = convert(&wav_with(
            1,
            1,
            48_000,
            16,
            &pcm16(&sine(48_000, 5000.0, 1.0, 0.5)),
        ))
        .unwrap();
        let level = rms(&high.samples[200..7800]);
        assert!(
            level < 0.5 / 2f64.sqrt() / 100.0,
            "5 kHz leaked through at {level}"
        );
    }

    #[test]
    fn every_sample_format_reads_the_same_tone() {
        let tone = sine(8000, 500.0, 0.1, 0.5);
        let expect = |bytes: Vec<u8>, tag: u16, bits: u16, tolerance: f64| {
            let prompt = convert(&wav_with(tag, 1, 8000, bits, &bytes)).unwrap();
            assert_eq!(prompt.samples.len(), tone.len());
            for (got, want) in prompt.samples.iter().zip(&tone) {
                let error = (f64::from(*got) / 32768.0 - want).abs();
                assert!(error <= tolerance, "tag {tag}/{bits}: {got} vs {want}");
            }
        };
        expect(
            tone.iter().map(|v| (v * 127.0 + 128.0) as u8).collect(),
            1,
            8,
            0.01,
        );
        expect(
            tone.iter()
                .flat_map(|v| (((v * 8_388_607.0) as i32) << 8).to_le_bytes()[1..].to_vec())
                .collect(),
            1,
            24,
            1e-4,
        );
        expect(
            tone.iter()
                .flat_map(|v| ((v * 2_147_483_647.0) as i32).to_le_bytes())
                .collect(),
            1,
            32,
            1e-4,
        );
        expect(
            tone.iter()
                .flat_map(|v| (*v as f32).to_le_bytes())
                .collect(),
            3,
            32,
            1e-4,
        );
        expect(
            tone.iter().flat_map(|v| v.to_le_bytes()).collect(),
            3,
            64,
            1e-4,
        );
        for (tag, law) in [(6, crate::g711::Law::Alaw), (7, crate::g711::Law::Ulaw)] {
            let linear: Vec<i16> = tone.iter().map(|v| (v * 32767.0) as i16).collect();
            let mut coded = vec![0; linear.len()];
            law.encode(&linear, &mut coded);
            // G.711 keeps about 2 % relative precision at this level.
            expect(coded, tag, 8, 0.02);
        }
    }

    #[test]
    fn stereo_is_averaged_and_extensible_is_read() {
        // Left +0.5, right -0.25.
        let data: Vec<u8> = (0..100)
            .flat_map(|_| [16384i16.to_le_bytes(), (-8192i16).to_le_bytes()].concat())
            .collect();
        let prompt = convert(&wav_with(1, 2, 8000, 16, &data)).unwrap();
        assert!(prompt.samples.iter().all(|&s| s == 4096));
        assert_eq!(prompt.source, "pcm16 8000 Hz stereo");

        let mut ext = wav_with(0xFFFE, 1, 8000, 16, &[1, 0, 2, 0]);
        // Grow the fmt chunk to 40 bytes with the PCM SubFormat GUID.
        let fmt_at = 12;
        ext[fmt_at + 4..fmt_at + 8].copy_from_slice(&40u32.to_le_bytes());
        let mut extension = vec![22, 0, 16, 0, 4, 0, 0, 0];
        extension.extend_from_slice(&[
            1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71,
        ]);
        let at = fmt_at + 8 + 16;
        ext.splice(at..at, extension);
        assert_eq!(convert(&ext).unwrap().samples, [1, 2]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(convert(b"ID3\x04 an mp3"), Err(PromptError::NotWav));
        assert_eq!(
            convert(&wav_with(1, 1, 8000, 16, &[])),
            Err(PromptError::Empty)
        );
        assert!(
            matches!(convert(&wav_with(85, 1, 8000, 16, &[0; 4])), Err(PromptError::Unsupported(m)) if m.contains("tag 85"))
        );
        assert!(matches!(
            convert(&wav_with(1, 9, 8000, 16, &[0; 36])),
            Err(PromptError::Unsupported(_))
        ));
        assert!(matches!(
            convert(&wav_with(1, 1, 1000, 16, &[0; 4])),
            Err(PromptError::Unsupported(_))
        ));
        let mut misaligned = wav_with(1, 1, 8000, 16, &[0; 4]);
        misaligned[32] = 3;
        assert!(matches!(
            convert(&misaligned),
            Err(PromptError::Malformed(_))
        ));
        let no_data = wav_with(1, 1, 8000, 16, &[])[..44].to_vec();
        assert!(matches!(convert(&no_data), Err(PromptError::Malformed(_))));
        // Ten minutes and one sample at 4 kHz 8-bit.
        let long = vec![128u8; 4000 * 600 + 1];
        assert_eq!(
            convert(&wav_with(1, 1, 4000, 8, &long)),
            Err(PromptError::TooLong)
        );
        // A streaming writer's oversized data length is clamped to what is there.
        let mut streamed = wav_with(1, 1, 8000, 16, &[5, 0, 6, 0]);
        let len_at = streamed.len() - 8;
        streamed[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(convert(&streamed).unwrap().samples, [5, 6]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut file = b"RIFF\0\0\0\0WAVE".to_vec();
            file.extend_from_slice(&bytes);
            let _ = convert(&file);
        }

        #[test]
        fn resampled_length_follows_the_ratio(len in 0usize..2000, rate in 4000u32..96_000) {
            let out = resample(&vec![0.0; len], rate, RATE);
            prop_assert_eq!(out.len() as u64, (len as u64 * 8000).div_ceil(u64::from(rate)));
        }
    }
}
