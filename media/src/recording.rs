//! The audio of a recorded call as one stereo timeline: caller left, callee right.
//!
//! Each side's RTP goes through its own [`JitterBuffer`] (reordering, duplicates and late
//! packets are handled there), is decoded (G.711; other payloads, such as telephone-event or
//! comfort noise, are written as silence) and placed on a common timeline by the playout time
//! the jitter buffer gives it, so the two channels stay aligned by RTP timestamps within a
//! talk spurt and by arrival time across spurts. Whatever has no audio (before the first
//! packet, gaps, hold, a side that never speaks) is silence; a lost packet is concealed by the
//! decoder ([`Decoder::conceal`]: for G.711, the previous frame fainter, then silence, so the
//! end of a stream, which looks like loss, is not stretched).
//!
//! The timeline runs at 8 kHz, or 16 kHz when a leg is wideband (G.722): narrowband audio is
//! then interpolated up, so each channel keeps its own bandwidth.
//!
//! [`StereoTimeline::advance`] hands out interleaved 16-bit samples up to `now`: the file
//! grows with wall time, so its length is the recorded time. Pausing leaves the paused time
//! out entirely (what compliance pauses expect: nothing of it is in the file).
//!
//! Sans-IO: the writer thread owns the file and the clock; this owns no allocation after
//! [`StereoTimeline::new`] except the caller's output buffer.

use std::time::{Duration, Instant};

use crate::codec::{self, Codec, Decoder};
use crate::jitter::{self, JitterBuffer, Output};
use crate::relay::Side;

/// A frame whose playout falls within this many milliseconds of where the previous frame
/// ended continues it seamlessly (absorbs rounding and small playout adjustments).
const SNAP_MS: u64 = 5;
/// Longest frame handled (60 ms at 48 kHz).
const MAX_FRAME: usize = 2_880;

/// One side's decoder state and the samples not yet handed out.
struct Channel {
    jitter: JitterBuffer,
    /// Samples ahead of what is handed out (a ring: timeline index `i` lives at
    /// `i % pending.len()`; one second).
    pending: Box<[i16]>,
    /// Where the last placed frame ended (timeline index), if a spurt is going on.
    cursor: Option<u64>,
    /// The decoder of the codec the side sends (replaced only when the codec changes).
    decoder: Option<Box<dyn Decoder + Send>>,
    /// A frame as decoded, and as resampled to the timeline's rate.
    decoded: Box<[i16]>,
    frame: Box<[i16]>,
}

impl Channel {
    fn new(config: jitter::Config, sample_rate: u32) -> Self {
        Self {
            jitter: JitterBuffer::new(config),
            pending: vec![0; sample_rate as usize].into_boxed_slice(),
            cursor: None,
            decoder: None,
            decoded: vec![0; MAX_FRAME].into_boxed_slice(),
            frame: vec![0; MAX_FRAME].into_boxed_slice(),
        }
    }
}

/// The stereo timeline of one recording.
pub struct StereoTimeline {
    /// RTP clock rate of the streams (8000 for G.711 and G.722).
    clock_rate: u32,
    /// Rate of the recording.
    sample_rate: u32,
    /// Timeline index 0 (moves later by every pause).
    origin: Instant,
    paused_at: Option<Instant>,
    /// Samples per channel handed out so far.
    committed: u64,
    sides: [Channel; 2],
}

fn index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// The timeline index (at `rate`) of instant `at`.
fn position(origin: Instant, at: Instant, rate: u32) -> u64 {
    let elapsed = at.saturating_duration_since(origin);
    (elapsed.as_micros() * u128::from(rate) / 1_000_000)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Linear interpolation of `input` onto `output`'s length (both one frame of audio).
fn resample(input: &[i16], output: &mut [i16]) {
    if input.len() == output.len() || input.is_empty() {
        let n = input.len().min(output.len());
        output[..n].copy_from_slice(&input[..n]);
        output[n..].fill(0);
        return;
    }
    let (from, to) = (input.len() as u64, output.len() as u64);
    for (j, out) in output.iter_mut().enumerate() {
        // Position in the input, in 1/65536 of a sample.
        let position = j as u64 * from * 65_536 / to;
        let i = (position >> 16) as usize;
        let fraction = (position & 0xffff) as i64;
        let a = i64::from(input[i]);
        let b = i64::from(input[(i + 1).min(input.len() - 1)]);
        // Between two i16 samples: fits i16.
        *out = (a + (b - a) * fraction / 65_536) as i16;
    }
}

impl StereoTimeline {
    /// A timeline starting at `now` for streams with RTP clock `clock_rate` (8000 for G.711
    /// and G.722), written at `sample_rate` Hz (8000, or 16000 when a leg is wideband).
    pub fn new(now: Instant, clock_rate: u32, sample_rate: u32) -> Self {
        // A recording is not listened to live: trade delay for completeness.
        let config = jitter::Config {
            clock_rate,
            min_delay: Duration::from_millis(60),
            max_delay: Duration::from_millis(400),
            ..jitter::Config::default()
        };
        let sample_rate = sample_rate.clamp(8_000, 48_000);
        Self {
            clock_rate: clock_rate.max(1),
            sample_rate,
            origin: now,
            paused_at: None,
            committed: 0,
            sides: [
                Channel::new(config, sample_rate),
                Channel::new(config, sample_rate),
            ],
        }
    }

    /// The rate the timeline is written at.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples per channel handed out so far.
    pub fn samples(&self) -> u64 {
        self.committed
    }

    /// The recorded length so far.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.committed * 1_000_000 / u64::from(self.sample_rate))
    }

    /// Whether the recording is paused.
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// An RTP packet `side` sent, at `now`. Ignored while paused.
    pub fn push(&mut self, now: Instant, side: Side, packet: &[u8]) {
        if self.paused_at.is_none() {
            // Refused packets (malformed, duplicate, late) are counted by the jitter buffer.
            let _ = self.sides[index(side)].jitter.push(now, packet);
        }
    }

    /// Stops the timeline at `now` (after handing out everything up to it with `advance`).
    pub fn pause(&mut self, now: Instant) {
        if self.paused_at.is_none() {
            self.paused_at = Some(now);
        }
    }

    /// Continues the timeline at `now`: the paused time is left out.
    pub fn resume(&mut self, now: Instant) {
        if let Some(paused_at) = self.paused_at.take() {
            self.origin += now.saturating_duration_since(paused_at);
            for channel in &mut self.sides {
                channel.jitter.reset();
                channel.cursor = None;
                channel.pending.fill(0);
            }
        }
    }

    /// Appends the interleaved samples (left, right) of everything up to `now` to `out`.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<i16>) {
        let now = self.paused_at.map_or(now, |paused| paused.min(now));
        let horizon = position(self.origin, now, self.sample_rate);
        let committed = self.committed;
        let rates = (self.clock_rate, self.sample_rate);
        for channel in &mut self.sides {
            place_due(channel, now, self.origin, rates, committed);
        }
        let ahead = self.sides[0].pending.len() as u64;
        let end = horizon.min(committed + ahead);
        out.reserve(2 * usize::try_from(end.saturating_sub(committed)).unwrap_or(0));
        for i in committed..end {
            let slot = (i % ahead) as usize;
            for channel in &mut self.sides {
                out.push(channel.pending[slot]);
                channel.pending[slot] = 0;
            }
        }
        self.committed = end.max(committed);
    }
}

/// Pops every frame due at `now` from the channel's jitter buffer, decodes (or conceals) it,
/// brings it to the timeline's rate and writes it at its place.
fn place_due(
    channel: &mut Channel,
    now: Instant,
    origin: Instant,
    (clock_rate, rate): (u32, u32),
    committed: u64,
) {
    let ahead = channel.pending.len() as u64;
    // Frame lengths: `samples` RTP clock units are this many samples at `to` Hz.
    let length = |samples: u32, to: u32| {
        usize::try_from(u64::from(samples) * u64::from(to) / u64::from(clock_rate))
            .unwrap_or(usize::MAX)
            .min(MAX_FRAME)
    };
    loop {
        let (playout, len) = match channel.jitter.pop(now) {
            None => return,
            Some(Output::Frame {
                payload_type,
                payload,
                samples,
                playout,
                ..
            }) => {
                let codec = Codec::from_static_payload_type(payload_type);
                if codec.is_some_and(|c| channel.decoder.as_ref().is_none_or(|d| d.codec() != c)) {
                    channel.decoder = codec.and_then(codec::decoder);
                }
                let decoded = match (codec, &mut channel.decoder) {
                    (Some(codec), Some(decoder)) => {
                        // The frame's length by its timestamps; a payload that says otherwise
                        // is cut or padded with silence to it.
                        let n = length(samples, codec.sample_rate());
                        let got = decoder.decode(payload, &mut channel.decoded).unwrap_or(0);
                        channel.decoded[got.min(n)..n].fill(0);
                        Some(n)
                    }
                    // Anything not decodable (telephone-event, comfort noise) is silence.
                    _ => None,
                };
                let len = length(samples, rate);
                match decoded {
                    Some(n) => resample(&channel.decoded[..n], &mut channel.frame[..len]),
                    None => channel.frame[..len].fill(0),
                }
                (playout, len)
            }
            Some(Output::Conceal {
                samples, playout, ..
            }) => {
                let len = length(samples, rate);
                match &mut channel.decoder {
                    Some(decoder) => {
                        let n = length(samples, decoder.codec().sample_rate());
                        let n = decoder.conceal(&mut channel.decoded[..n]);
                        resample(&channel.decoded[..n], &mut channel.frame[..len]);
                    }
                    None => channel.frame[..len].fill(0),
                }
                (playout, len)
            }
        };
        let mut at = position(origin, playout, rate);
        if let Some(cursor) = channel.cursor
            && at.abs_diff(cursor) <= SNAP_MS * u64::from(rate) / 1_000
        {
            at = cursor;
        }
        // Never write over what is handed out already.
        let skip = committed.saturating_sub(at);
        let at = at.max(committed);
        let first = usize::try_from(skip).unwrap_or(usize::MAX).min(len);
        for (offset, &sample) in channel.frame[first..len].iter().enumerate() {
            let i = at + offset as u64;
            if i >= committed + ahead {
                break;
            }
            channel.pending[(i % ahead) as usize] = sample;
        }
        channel.cursor = Some(at + (len - first) as u64);
    }
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use super::*;
    use crate::g711::Law;
    use crate::rtp;

    /// One 20 ms PCMU packet of a `frequency` Hz tone, the `n`th of its stream.
    fn tone_packet(buffer: &mut Vec<u8>, frequency: f64, n: u32, ssrc: u32) {
        let linear: Vec<i16> = (0..160u32)
            .map(|i| {
                let t = f64::from(n * 160 + i) / 8000.0;
                ((2.0 * std::f64::consts::PI * frequency * t).sin() * 10_000.0) as i16
            })
            .collect();
        let mut payload = [0u8; 160];
        Law::Ulaw.encode(&linear, &mut payload);
        rtp::build(buffer, 0, n == 0, n as u16, n * 160, ssrc, &payload);
    }

    /// The Goertzel power of `frequency` in `samples` relative to their total power.
    fn tone_share(samples: &[i16], frequency: f64) -> f64 {
        tone_share_at(samples, frequency, 8000.0)
    }

    /// The same at `rate` Hz.
    fn tone_share_at(samples: &[i16], frequency: f64, rate: f64) -> f64 {
        let k = 2.0 * (2.0 * std::f64::consts::PI * frequency / rate).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut total = 0.0;
        for &x in samples {
            let x = f64::from(x);
            let s = x + k * s1 - s2;
            s2 = s1;
            s1 = s;
            total += x * x;
        }
        let power = s1 * s1 + s2 * s2 - k * s1 * s2;
        if total == 0.0 {
            0.0
        } else {
            power / (total * samples.len() as f64 / 2.0)
        }
    }

    #[test]
    fn two_tones_land_on_their_channels_aligned_and_without_gaps() {
        let start = Instant::now();
        let mut timeline = StereoTimeline::new(start, 8000, 8000);
        let mut out = Vec::new();
        let mut packet = Vec::new();
        // The callee starts 100 ms later than the caller; both send 2 s; then 500 ms of
        // nothing (hold); every packet arrives with 0-30 ms of jitter.
        let mut jitter = 7u32;
        let mut arrivals = [[0u64; 100]; 2];
        for (side, offset) in [(0, 0u64), (1, 100)] {
            for (n, arrival) in arrivals[side].iter_mut().enumerate() {
                jitter = jitter.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *arrival = offset + n as u64 * 20 + u64::from(jitter >> 16) % 30;
            }
        }
        for tick in 0..(2_600 / 5) {
            let now = start + Duration::from_millis(tick * 5);
            for (index, side, frequency, ssrc) in [(0, Side::A, 1000.0, 1), (1, Side::B, 440.0, 2)]
            {
                for n in 0..100u32 {
                    // Deliver the packets whose arrival falls in this 5 ms tick.
                    if arrivals[index][n as usize] / 5 == tick {
                        tone_packet(&mut packet, frequency, n, ssrc);
                        timeline.push(now, side, &packet);
                    }
                }
            }
            timeline.advance(now, &mut out);
        }
        let frames = out.len() / 2;
        assert_eq!(frames as u64, timeline.samples());
        assert!((frames as i64 - 2_595 * 8).abs() <= 8, "{frames}");
        let left: Vec<i16> = out.iter().step_by(2).copied().collect();
        let right: Vec<i16> = out.iter().skip(1).step_by(2).copied().collect();
        // Where each channel's tone is: every 20 ms window inside it carries the tone.
        let active = |channel: &[i16], frequency: f64| -> Vec<bool> {
            channel
                .chunks(160)
                .map(|w| tone_share(w, frequency) > 0.5)
                .collect()
        };
        for (channel, frequency) in [(&left, 1000.0), (&right, 440.0)] {
            let windows = active(channel, frequency);
            let first = windows.iter().position(|&a| a).unwrap();
            let last = windows.iter().rposition(|&a| a).unwrap();
            assert!(
                windows[first..=last].iter().all(|&a| a),
                "a gap in the {frequency} Hz tone"
            );
            let length = last - first + 1;
            // 100 packets; the concealment of what looks like loss after the last adds two.
            assert!(
                (99..=103).contains(&length),
                "{frequency} Hz lasts {length} windows"
            );
        }
        let starts: Vec<usize> = [(&left, 1000.0), (&right, 440.0)]
            .iter()
            .map(|(c, f)| active(c, *f).iter().position(|&a| a).unwrap())
            .collect();
        // The callee's tone starts 100 ms (5 windows) after the caller's.
        assert!((4..=6).contains(&(starts[1] - starts[0])), "{starts:?}");
    }

    #[test]
    fn pauses_are_left_out() {
        let start = Instant::now();
        let mut timeline = StereoTimeline::new(start, 8000, 8000);
        let mut out = Vec::new();
        timeline.advance(start + Duration::from_secs(1), &mut out);
        timeline.pause(start + Duration::from_secs(1));
        timeline.advance(start + Duration::from_secs(3), &mut out);
        assert!(timeline.is_paused());
        timeline.resume(start + Duration::from_secs(3));
        timeline.advance(start + Duration::from_secs(4), &mut out);
        assert_eq!(timeline.samples(), 16_000);
        assert_eq!(timeline.duration(), Duration::from_secs(2));
        assert!(out.iter().all(|&s| s == 0), "silence without packets");
    }

    #[test]
    fn a_wideband_leg_is_recorded_at_16_khz_beside_a_narrowband_one() {
        use crate::g722::G722Encoder;
        let start = Instant::now();
        let mut timeline = StereoTimeline::new(start, 8000, 16_000);
        assert_eq!(timeline.sample_rate(), 16_000);
        let (mut out, mut packet) = (Vec::new(), Vec::new());
        let mut encoder = G722Encoder::new();
        // The caller sends G.711 at 1 kHz, the callee G.722 at 5 kHz (a tone only wideband
        // audio carries), 1 s each, 20 ms packets (G.722: 320 samples in 160 bytes, and 160
        // timestamp units of its 8 kHz clock).
        for n in 0..50u32 {
            let now = start + Duration::from_millis(u64::from(n) * 20);
            tone_packet(&mut packet, 1000.0, n, 1);
            timeline.push(now, Side::A, &packet);
            let wide: Vec<i16> = (0..320u32)
                .map(|i| {
                    let t = f64::from(n * 320 + i) / 16_000.0;
                    ((2.0 * std::f64::consts::PI * 5000.0 * t).sin() * 8_000.0) as i16
                })
                .collect();
            let mut payload = [0u8; 160];
            assert_eq!(encoder.encode(&wide, &mut payload), 160);
            rtp::build(&mut packet, 9, n == 0, n as u16, n * 160, 2, &payload);
            timeline.push(now, Side::B, &packet);
            timeline.advance(now, &mut out);
        }
        timeline.advance(start + Duration::from_millis(1_300), &mut out);
        assert_eq!(timeline.duration(), Duration::from_millis(1_300));
        assert_eq!(out.len(), 2 * 16_000 * 13 / 10);
        let left: Vec<i16> = out.iter().step_by(2).copied().collect();
        let right: Vec<i16> = out.iter().skip(1).step_by(2).copied().collect();
        // 20 ms windows at 16 kHz: the middle of each stream carries its tone.
        let windows = |channel: &[i16], frequency: f64| {
            channel
                .chunks(320)
                .filter(|w| tone_share_at(w, frequency, 16_000.0) > 0.5)
                .count()
        };
        let (narrow, wide) = (windows(&left, 1000.0), windows(&right, 5000.0));
        assert!((47..=52).contains(&narrow), "1 kHz in {narrow} windows");
        assert!((47..=52).contains(&wide), "5 kHz in {wide} windows");
        assert_eq!(windows(&left, 5000.0), 0);
    }
}
