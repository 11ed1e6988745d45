//! The audio of a recorded call as one stereo timeline: caller left, callee right.
//!
//! Each side's RTP goes through its own [`JitterBuffer`] (reordering, duplicates and late
//! packets are handled there), is decoded (G.711; other payloads, such as telephone-event or
//! comfort noise, are written as silence) and placed on a common timeline by the playout time
//! the jitter buffer gives it, so the two channels stay aligned by RTP timestamps within a
//! talk spurt and by arrival time across spurts. Whatever has no audio (before the first
//! packet, gaps, hold, a side that never speaks) is silence; a lost packet is concealed by
//! repeating the previous frame, fainter for a second loss and silent from the third on (a
//! simple packet-loss concealment in the spirit of ITU-T G.711 Appendix I, which also fades
//! to silence within 60 ms): the end of a stream, which looks like loss, is not stretched.
//!
//! [`StereoTimeline::advance`] hands out interleaved 16-bit samples up to `now`: the file
//! grows with wall time, so its length is the recorded time. Pausing leaves the paused time
//! out entirely (what compliance pauses expect: nothing of it is in the file).
//!
//! Sans-IO: the writer thread owns the file and the clock; this owns no allocation after
//! [`StereoTimeline::new`] except the caller's output buffer.

use std::time::{Duration, Instant};

use crate::g711::Law;
use crate::jitter::{self, JitterBuffer, Output};
use crate::relay::Side;

/// How far ahead of the committed audio a side may hold samples (frames placed ahead of
/// `now` by their playout time, up to the longest packet).
const AHEAD: usize = 8_000;
/// A frame whose playout falls within this many samples of where the previous frame ended
/// continues it seamlessly (absorbs rounding and small playout adjustments).
const SNAP: u64 = 40;

/// One side's decoder state and the samples not yet handed out.
struct Channel {
    jitter: JitterBuffer,
    /// Samples from timeline index `base` on (a ring: index `i` lives at `i % AHEAD`).
    pending: Box<[i16]>,
    /// Where the last placed frame ended (timeline index), if a spurt is going on.
    cursor: Option<u64>,
    /// The last decoded frame, for concealment.
    last: Box<[i16]>,
    last_len: usize,
    /// Consecutive concealed frames (each fainter).
    concealed: u32,
    scratch: Box<[i16]>,
}

impl Channel {
    fn new(config: jitter::Config) -> Self {
        Self {
            jitter: JitterBuffer::new(config),
            pending: vec![0; AHEAD].into_boxed_slice(),
            cursor: None,
            last: vec![0; 1920].into_boxed_slice(),
            last_len: 0,
            concealed: 0,
            scratch: vec![0; 1920].into_boxed_slice(),
        }
    }
}

/// The stereo timeline of one recording.
pub struct StereoTimeline {
    clock_rate: u32,
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

impl StereoTimeline {
    /// A timeline starting at `now`, at `clock_rate` Hz (8000 for G.711).
    pub fn new(now: Instant, clock_rate: u32) -> Self {
        // A recording is not listened to live: trade delay for completeness.
        let config = jitter::Config {
            clock_rate,
            min_delay: Duration::from_millis(60),
            max_delay: Duration::from_millis(400),
            ..jitter::Config::default()
        };
        Self {
            clock_rate,
            origin: now,
            paused_at: None,
            committed: 0,
            sides: [Channel::new(config), Channel::new(config)],
        }
    }

    /// Samples per channel handed out so far.
    pub fn samples(&self) -> u64 {
        self.committed
    }

    /// The recorded length so far.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.committed * 1_000_000 / u64::from(self.clock_rate))
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

    fn position(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin);
        (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000)
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Appends the interleaved samples (left, right) of everything up to `now` to `out`.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<i16>) {
        let now = self.paused_at.map_or(now, |paused| paused.min(now));
        let horizon = self.position(now);
        let committed = self.committed;
        let origin = self.origin;
        let rate = self.clock_rate;
        for channel in &mut self.sides {
            place_due(channel, now, origin, rate, committed);
        }
        let end = horizon.min(committed + AHEAD as u64);
        out.reserve(2 * usize::try_from(end.saturating_sub(committed)).unwrap_or(0));
        for i in committed..end {
            let slot = (i % AHEAD as u64) as usize;
            for channel in &mut self.sides {
                out.push(channel.pending[slot]);
                channel.pending[slot] = 0;
            }
        }
        self.committed = end.max(committed);
    }
}

/// Pops every frame due at `now` from the channel's jitter buffer and writes it at its place.
fn place_due(channel: &mut Channel, now: Instant, origin: Instant, rate: u32, committed: u64) {
    let position = |at: Instant| -> u64 {
        let elapsed = at.saturating_duration_since(origin);
        (elapsed.as_micros() * u128::from(rate) / 1_000_000)
            .try_into()
            .unwrap_or(u64::MAX)
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
                let want = usize::try_from(samples)
                    .unwrap_or(0)
                    .min(channel.scratch.len());
                let law = match payload_type {
                    0 => Some(Law::Ulaw),
                    8 => Some(Law::Alaw),
                    _ => None,
                };
                let decoded = law.map_or(0, |law| {
                    law.decode(&payload[..payload.len().min(want)], &mut channel.scratch)
                });
                // Anything not decodable (telephone-event, comfort noise) is silence.
                channel.scratch[decoded..want].fill(0);
                channel.last[..want].copy_from_slice(&channel.scratch[..want]);
                channel.last_len = want;
                channel.concealed = 0;
                (playout, want)
            }
            Some(Output::Conceal {
                samples, playout, ..
            }) => {
                let want = usize::try_from(samples)
                    .unwrap_or(0)
                    .min(channel.scratch.len());
                // Repeat the last frame at 3/4, then 1/4; silence after that.
                channel.concealed += 1;
                let (num, den) = match channel.concealed {
                    1 => (3, 4),
                    2 => (1, 4),
                    _ => (0, 1),
                };
                for i in 0..want {
                    let source = if channel.last_len == 0 {
                        0
                    } else {
                        channel.last[i % channel.last_len]
                    };
                    channel.scratch[i] = (i32::from(source) * num / den) as i16;
                }
                (playout, want)
            }
        };
        let mut at = position(playout);
        if let Some(cursor) = channel.cursor
            && at.abs_diff(cursor) <= SNAP
        {
            at = cursor;
        }
        // Never write over what is handed out already.
        let skip = committed.saturating_sub(at);
        let at = at.max(committed);
        let first = usize::try_from(skip).unwrap_or(usize::MAX).min(len);
        for (offset, &sample) in channel.scratch[first..len].iter().enumerate() {
            let i = at + offset as u64;
            if i >= committed + AHEAD as u64 {
                break;
            }
            channel.pending[(i % AHEAD as u64) as usize] = sample;
        }
        channel.cursor = Some(at + (len - first) as u64);
    }
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use super::*;
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
        let k = 2.0 * (2.0 * std::f64::consts::PI * frequency / 8000.0).cos();
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
        let mut timeline = StereoTimeline::new(start, 8000);
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
        let mut timeline = StereoTimeline::new(start, 8000);
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
}
