//! Music on hold: what a held party hears when the side that holds sends nothing, so a
//! carrier's RTP timeout never fires on a held call and the caller knows the line is alive.
//!
//! The music is made here, not shipped as a file: an eight-second loop of soft plucked
//! arpeggios over four chords (C, A minor, F, G), 8 kHz mono, peaking well below full scale
//! (about -15 dBFS) so it never clips after G.711. Every note starts and ends at zero and
//! the loop's ends meet, so repeating it clicks nowhere.

use std::f64::consts::TAU;
use std::sync::OnceLock;

use crate::prompt::RATE;

/// The loop's length in seconds.
pub const LOOP_SECONDS: u32 = 8;
/// Notes per second.
const NOTES_PER_SECOND: u32 = 4;
/// Peak amplitude of one note, of full scale.
const PEAK: f64 = 0.14;

/// The chords, two seconds each: arpeggiated root, third, fifth and octave (Hz).
const CHORDS: [[f64; 4]; 4] = [
    [261.63, 329.63, 392.00, 523.25], // C
    [220.00, 261.63, 329.63, 440.00], // A minor
    [174.61, 220.00, 261.63, 349.23], // F
    [196.00, 246.94, 293.66, 392.00], // G
];

/// The loop, 8 kHz mono 16-bit samples (made once).
pub fn music() -> &'static [i16] {
    static MUSIC: OnceLock<Vec<i16>> = OnceLock::new();
    MUSIC.get_or_init(make)
}

fn make() -> Vec<i16> {
    let note_len = (RATE / NOTES_PER_SECOND) as usize;
    let notes = (LOOP_SECONDS * NOTES_PER_SECOND) as usize;
    let mut samples = Vec::with_capacity(note_len * notes);
    for note in 0..notes {
        let chord = CHORDS[note * CHORDS.len() / notes];
        let frequency = chord[note % chord.len()];
        for i in 0..note_len {
            let t = i as f64 / f64::from(RATE);
            let progress = i as f64 / note_len as f64;
            // A pluck: a quick rise, an exponential decay, and a half-sine taper to zero at
            // the end of the note.
            let attack = (progress * 40.0).min(1.0);
            let envelope = attack * (-progress * 4.0).exp() * (progress * TAU / 2.0).sin().sqrt();
            // The note and a quieter octave above it, for a rounder tone.
            let tone = (TAU * frequency * t).sin() + 0.3 * (TAU * 2.0 * frequency * t).sin();
            let value = PEAK * envelope * tone / 1.3 * f64::from(i16::MAX);
            samples.push(value.round() as i16);
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The power of `frequency` in `samples` (Goertzel), relative to the signal's.
    fn share(samples: &[i16], frequency: f64) -> f64 {
        let coefficient = 2.0 * (TAU * frequency / f64::from(RATE)).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in samples {
            let s = f64::from(x) + coefficient * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
        let energy: f64 = samples.iter().map(|&x| f64::from(x).powi(2)).sum();
        power / (energy * samples.len() as f64 / 2.0)
    }

    #[test]
    fn the_loop_is_eight_seconds_quiet_and_seamless() {
        let music = music();
        assert_eq!(music.len(), (LOOP_SECONDS * RATE) as usize);
        let peak = music.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(
            peak > 1000 && f64::from(peak) < 0.2 * f64::from(i16::MAX),
            "{peak}"
        );
        let rms =
            (music.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / music.len() as f64).sqrt();
        assert!(rms > 300.0, "audible: {rms}");
        // Each note starts and ends near silence, so the loop and its notes join quietly.
        let note = (RATE / NOTES_PER_SECOND) as usize;
        for start in (0..music.len()).step_by(note) {
            assert!(
                music[start].abs() < 50,
                "note at {start} starts at {}",
                music[start]
            );
            let end = start + note - 1;
            assert!(music[end].abs() < 200, "note ending {end}: {}", music[end]);
        }
    }

    #[test]
    fn the_notes_are_the_chords() {
        let music = music();
        let note = (RATE / NOTES_PER_SECOND) as usize;
        // The first note is middle C; the first of the third chord (4 s in) is F.
        assert!(share(&music[..note], 261.63) > 0.5);
        let f = 4 * RATE as usize;
        assert!(share(&music[f..f + note], 174.61) > 0.5);
        assert!(share(&music[f..f + note], 261.63) < 0.05);
    }
}
