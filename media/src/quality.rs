//! Call quality from RTCP statistics: the ITU-T G.107 E-model (narrowband), R factor and MOS.
//!
//! The rating is G.107 (06/2015) §7.1 eq. 7-1:
//!
//! ```text
//! R = Ro − Is − Id − Ie,eff + A
//! ```
//!
//! - **Ro − Is**: every parameter at its G.107 Table 3 default (loudness ratings, sidetone,
//!   noise, quantisation). That gives Ro ≈ 94.77 and Is ≈ 1.41, and R = 93.2 at zero delay, the
//!   figure G.107 quotes for a default connection.
//! - **Id**: G.107 §7.4 in full, with the default echo parameters (TELR 65 dB, WEPL 110 dB):
//!   talker echo Idte with T = the one-way mouth-to-ear delay, listener echo Idle with
//!   Tr = 2T, absolute delay Idd with Ta = T. This is not the linear fit of Cole and Rosenbluth
//!   ("Voice over IP performance monitoring", ACM SIGCOMM CCR 31(2), 2001:
//!   Id ≈ 0.024·d + 0.11·(d − 177.3)·H(d − 177.3)); the two agree within about a point up to
//!   300 ms and the full form is what G.114's delay curve is drawn from. Idte is taken as zero
//!   below T = 1 ms (G.107 §7.4) and, as a simplification, never negative (the formula dips a
//!   fraction of a point below zero for a few milliseconds), so R never rises with delay.
//! - **Ie,eff**: G.107 §7.5 eq. 7-29, `Ie + (95 − Ie)·Ppl / (Ppl/BurstR + Bpl)`, with Ie and
//!   Bpl from G.113 Appendix I ([`Equipment`]).
//! - **A** = 0, the advantage factor of wired access (G.107 Table 1).
//!
//! The E-model is a planning tool, not a measurement: read the result as an estimate for
//! dashboards and alarms, not as a listening test. Inputs from the network are untrusted, so
//! every function clamps NaN, infinite and out-of-range arguments instead of panicking: R is
//! always in 0..=100 and MOS in 1..=4.5.

/// One-way network delay assumed when no RTT is known yet, ms.
pub const DEFAULT_NETWORK_DELAY_MS: f64 = 20.0;

/// Delays beyond this (ms) count as this: the model has long since bottomed out.
const MAX_DELAY_MS: f64 = 60_000.0;

// G.107 Table 3 defaults.
/// Send loudness rating, dB.
const SLR: f64 = 8.0;
/// Receive loudness rating, dB.
const RLR: f64 = 2.0;
/// Sidetone masking rating, dB.
const STMR: f64 = 15.0;
/// Listener sidetone rating, dB.
const LSTR: f64 = 18.0;
/// D-value of the telephone, send side.
const DS: f64 = 3.0;
/// Talker echo loudness rating, dB.
const TELR: f64 = 65.0;
/// Weighted echo path loss, dB.
const WEPL: f64 = 110.0;
/// Quantisation distortion units.
const QDU: f64 = 1.0;
/// Circuit noise at the 0 dBr point, dBm0p.
const NC: f64 = -70.0;
/// Noise floor at the receive side, dBmp.
const NFOR: f64 = -64.0;
/// Room noise at the send side, dB(A).
const PS: f64 = 35.0;
/// Room noise at the receive side, dB(A).
const PR: f64 = 35.0;

/// How a codec stands up to coding and loss (G.107 §7.5, values from G.113 Appendix I).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Equipment {
    /// Equipment impairment factor Ie: the codec's distortion with no loss (0..95).
    pub ie: f64,
    /// Packet-loss robustness factor Bpl: larger means loss hurts less.
    pub bpl: f64,
}

impl Equipment {
    /// G.711 with packet loss concealment (G.711 Appendix I): Ie 0, Bpl 25.1 (G.113 Table I.3).
    pub const G711_PLC: Self = Self { ie: 0.0, bpl: 25.1 };
    /// G.711 without concealment, random loss: Ie 0, Bpl 4.3 (G.113 Table I.3).
    pub const G711_NO_PLC: Self = Self { ie: 0.0, bpl: 4.3 };
    /// G.729A with VAD: Ie 11, Bpl 19.0 (G.113 Table I.3).
    pub const G729A: Self = Self {
        ie: 11.0,
        bpl: 19.0,
    };
    /// Placeholder for wideband codecs (G.722, Opus) on this narrowband scale: rated as G.711
    /// with PLC. G.113 gives their impairments only on the wideband scale of G.107.1, which
    /// this model does not implement, so their advantage over G.711 does not show here.
    pub const WIDEBAND_PLACEHOLDER: Self = Self { ie: 0.0, bpl: 25.1 };
}

/// Codecs with known E-model parameters and delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 µ-law or A-law, the receiver concealing loss (what phones do).
    G711,
    /// G.711 played out without loss concealment.
    G711WithoutPlc,
    /// G.722 (placeholder parameters, see [`Equipment::WIDEBAND_PLACEHOLDER`]).
    G722,
    /// G.729A.
    G729,
    /// Opus (placeholder parameters, see [`Equipment::WIDEBAND_PLACEHOLDER`]).
    Opus,
}

impl Codec {
    /// The codec's Ie and Bpl.
    pub fn equipment(self) -> Equipment {
        match self {
            Self::G711 => Equipment::G711_PLC,
            Self::G711WithoutPlc => Equipment::G711_NO_PLC,
            Self::G729 => Equipment::G729A,
            Self::G722 | Self::Opus => Equipment::WIDEBAND_PLACEHOLDER,
        }
    }

    /// Delay the codec adds, ms: one 20 ms packet (the usual `ptime`) plus the encoder's
    /// look-ahead: none for G.711, 1.5 ms for G.722's QMF filter bank, 5 ms for G.729 and
    /// 6.5 ms for Opus (RFC 6716's 26.5 ms default algorithmic delay for 20 ms frames).
    pub fn delay_ms(self) -> f64 {
        match self {
            Self::G711 | Self::G711WithoutPlc => 20.0,
            Self::G722 => 21.5,
            Self::G729 => 25.0,
            Self::Opus => 26.5,
        }
    }
}

/// `value` limited to `low..=high`, NaN counting as `low`.
fn bounded(value: f64, low: f64, high: f64) -> f64 {
    if value.is_nan() {
        low
    } else {
        value.clamp(low, high)
    }
}

/// Ro, Is and the total noise No with every G.107 parameter at its default (§7.2, §7.3).
#[derive(Clone, Copy, Debug)]
struct Basic {
    /// Total noise No, dBm0p (eq. 7-3).
    noise: f64,
    /// Basic signal-to-noise ratio Ro (eq. 7-2).
    ro: f64,
    /// Simultaneous impairment Is (eq. 7-8).
    is: f64,
}

fn basic() -> Basic {
    let olr = SLR + RLR;
    // Noise (eq. 7-3 to 7-7).
    let nos = PS - SLR - DS - 100.0 + 0.004 * (PS - olr - DS - 14.0).powi(2);
    let pre = PR + 10.0 * (1.0 + 10f64.powf((10.0 - LSTR) / 10.0)).log10();
    let nor = RLR - 121.0 + pre + 0.008 * (pre - 35.0).powi(2);
    let nfo = NFOR + RLR;
    let noise = 10.0
        * [NC, nos, nor, nfo]
            .iter()
            .map(|level| 10f64.powf(level / 10.0))
            .sum::<f64>()
            .log10();
    let ro = 15.0 - 1.5 * (SLR + noise);
    // Loudness (eq. 7-9, 7-10).
    let xolr = olr + 0.2 * (64.0 + noise - RLR);
    let iolr = 20.0 * ((1.0 + (xolr / 8.0).powi(8)).powf(1.0 / 8.0) - xolr / 8.0);
    // Sidetone (eq. 7-11, 7-12), at T = 0: the echo term vanishes within 10^-5 for any real T.
    let stmro = -10.0 * (10f64.powf(-STMR / 10.0) + 10f64.powf(-TELR / 10.0)).log10();
    let ist = 12.0 * (1.0 + ((stmro - 13.0) / 6.0).powi(8)).powf(1.0 / 8.0)
        - 28.0 * (1.0 + ((stmro + 1.0) / 19.4).powi(35)).powf(1.0 / 35.0)
        - 13.0 * (1.0 + ((stmro - 3.0) / 33.0).powi(13)).powf(1.0 / 13.0)
        + 29.0;
    // Quantisation (eq. 7-13 to 7-17).
    let q = 37.0 - 15.0 * QDU.log10();
    let g = 1.07 + 0.258 * q + 0.0602 * q * q;
    let y = (ro - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0;
    let z = 46.0 / 30.0 - g / 40.0;
    let iq = 15.0 * (1.0 + 10f64.powf(y) + 10f64.powf(z)).log10();
    Basic {
        noise,
        ro,
        is: iolr + ist + iq,
    }
}

/// The delay impairment Id (G.107 §7.4) of a one-way mouth-to-ear delay, with default echo
/// parameters: T = Ta = the delay, Tr = 2T.
pub fn delay_impairment(one_way_delay_ms: f64) -> f64 {
    let t = bounded(one_way_delay_ms, 0.0, MAX_DELAY_MS);
    let basic = basic();
    // Talker echo (eq. 7-19 to 7-21).
    let talker_echo = if t < 1.0 {
        0.0
    } else {
        let terv = TELR - 40.0 * ((1.0 + t / 10.0) / (1.0 + t / 150.0)).log10()
            + 6.0 * (-0.3 * t * t).exp();
        let roe = -1.5 * (basic.noise - RLR);
        let re = 80.0 + 2.5 * (terv - 14.0);
        let x = roe - re;
        ((x / 2.0 + (x * x / 4.0 + 100.0).sqrt() - 1.0) * (1.0 - (-t).exp())).max(0.0)
    };
    // Listener echo (eq. 7-25, 7-26).
    let rle = 10.5 * (WEPL + 7.0) * (2.0 * t + 1.0).powf(-0.25);
    let x = basic.ro - rle;
    let listener_echo = x / 2.0 + (x * x / 4.0 + 169.0).sqrt();
    // Absolute delay (eq. 7-27, 7-28; mT = 100 ms, sT = 1).
    let absolute = if t <= 100.0 {
        0.0
    } else {
        let x = (t / 100.0).log2();
        25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
            + 2.0)
    };
    talker_echo + listener_echo + absolute
}

/// The effective equipment impairment Ie,eff (G.107 §7.5 eq. 7-29) at `packet_loss_percent`
/// (0..=100) with burst ratio `burst_ratio` (1 for random loss, more for bursty; values below 1
/// count as 1).
pub fn effective_equipment_impairment(
    equipment: Equipment,
    packet_loss_percent: f64,
    burst_ratio: f64,
) -> f64 {
    let ie = bounded(equipment.ie, 0.0, 95.0);
    let bpl = bounded(equipment.bpl, 0.0, f64::INFINITY);
    let ppl = bounded(packet_loss_percent, 0.0, 100.0);
    let burst_ratio = bounded(burst_ratio, 1.0, f64::INFINITY);
    if ppl == 0.0 {
        return ie;
    }
    ie + (95.0 - ie) * ppl / (ppl / burst_ratio + bpl)
}

/// The transmission rating R (G.107 eq. 7-1) of a connection through `equipment` with
/// `packet_loss_percent` (0..=100) loss of burst ratio `burst_ratio` (1 = random) and a
/// one-way mouth-to-ear delay of `one_way_delay_ms`, everything else at G.107's defaults.
/// Clamped to 0..=100.
pub fn r_factor(
    equipment: Equipment,
    packet_loss_percent: f64,
    burst_ratio: f64,
    one_way_delay_ms: f64,
) -> f64 {
    let basic = basic();
    let r = basic.ro
        - basic.is
        - delay_impairment(one_way_delay_ms)
        - effective_equipment_impairment(equipment, packet_loss_percent, burst_ratio);
    bounded(r, 0.0, 100.0)
}

/// The estimated mean opinion score (conversational, 1..=4.5) of a rating R (G.107 Annex B
/// eq. B-4): 1 for R ≤ 0, 4.5 for R ≥ 100, else `1 + 0.035R + R(R − 60)(100 − R)·7·10⁻⁶`,
/// clamped to at least 1 (the polynomial dips below 1 for R under about 6.5).
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).clamp(1.0, 4.5)
}

/// The one-way mouth-to-ear delay estimated from RTCP figures, ms: the network's half of
/// `rtt_ms` ([`DEFAULT_NETWORK_DELAY_MS`] while unknown), plus a jitter buffer holding twice
/// the jitter plus 10 ms, plus the codec's packetisation and look-ahead
/// ([`Codec::delay_ms`]).
pub fn one_way_delay_ms(jitter_ms: f64, rtt_ms: Option<f64>, codec: Codec) -> f64 {
    let network = rtt_ms.map_or(DEFAULT_NETWORK_DELAY_MS, |rtt| {
        bounded(rtt, 0.0, MAX_DELAY_MS) / 2.0
    });
    let jitter_buffer = 2.0 * bounded(jitter_ms, 0.0, MAX_DELAY_MS) + 10.0;
    network + jitter_buffer + codec.delay_ms()
}

/// The estimated MOS of a stream with `loss_fraction` (0..=1) random loss, `jitter_ms`
/// interarrival jitter and round-trip time `rtt_ms`, as RTCP reports them (see
/// [`crate::rtcp::Stats`]), through `codec`. The delay is [`one_way_delay_ms`]; loss is taken
/// as random (burst ratio 1), since RTCP reports do not say how bursty it was.
pub fn estimate_mos(loss_fraction: f64, jitter_ms: f64, rtt_ms: Option<f64>, codec: Codec) -> f64 {
    let loss_percent = bounded(loss_fraction, 0.0, 1.0) * 100.0;
    let delay = one_way_delay_ms(jitter_ms, rtt_ms, codec);
    mos_from_r(r_factor(codec.equipment(), loss_percent, 1.0, delay))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn defaults_rate_93_2() {
        let basic = basic();
        close(basic.ro, 94.77, 0.01);
        close(basic.is, 1.41, 0.01);
        // G.107: "all parameters set to the default values ... R = 93.2".
        close(r_factor(Equipment::G711_PLC, 0.0, 1.0, 0.0), 93.2, 0.05);
        close(mos_from_r(93.2), 4.41, 0.01);
    }

    #[test]
    fn mos_from_r_follows_annex_b_and_clamps() {
        close(
            mos_from_r(50.0),
            1.0 + 1.75 - 50.0 * 10.0 * 50.0 * 7e-6,
            1e-12,
        );
        close(
            mos_from_r(80.0),
            1.0 + 2.8 + 80.0 * 20.0 * 20.0 * 7e-6,
            1e-12,
        );
        assert_eq!(mos_from_r(0.0), 1.0);
        assert_eq!(mos_from_r(-20.0), 1.0);
        assert_eq!(mos_from_r(3.0), 1.0, "the polynomial dips below 1 here");
        assert_eq!(mos_from_r(100.0), 4.5);
        assert_eq!(mos_from_r(250.0), 4.5);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
    }

    #[test]
    fn loss_impairment_matches_eq_7_29() {
        // 5% random loss: 95·5/(5 + 4.3) without PLC, 95·5/(5 + 25.1) with.
        close(
            effective_equipment_impairment(Equipment::G711_NO_PLC, 5.0, 1.0),
            95.0 * 5.0 / 9.3,
            1e-9,
        );
        close(
            effective_equipment_impairment(Equipment::G711_PLC, 5.0, 1.0),
            95.0 * 5.0 / 30.1,
            1e-9,
        );
        // G.729A: 11 + 84·2/(2/2 + 19) with bursts of ratio 2.
        close(
            effective_equipment_impairment(Equipment::G729A, 2.0, 2.0),
            11.0 + 84.0 * 2.0 / 20.0,
            1e-9,
        );
        assert_eq!(
            effective_equipment_impairment(Equipment::G729A, 0.0, 1.0),
            11.0
        );
    }

    #[test]
    fn clean_g711_call_scores_about_4_4() {
        let mos = estimate_mos(0.0, 0.0, Some(20.0), Codec::G711);
        assert!((4.3..4.42).contains(&mos), "{mos}");
        // Unknown RTT assumes 20 ms each way: the same call, a little longer.
        let unknown = estimate_mos(0.0, 0.0, None, Codec::G711);
        assert!(unknown <= mos && unknown > 4.3, "{unknown}");
        close(
            one_way_delay_ms(5.0, Some(40.0), Codec::G711),
            20.0 + 20.0 + 20.0,
            1e-12,
        );
    }

    #[test]
    fn random_loss_without_plc_hurts_much_more() {
        let without = estimate_mos(0.05, 0.0, Some(20.0), Codec::G711WithoutPlc);
        let with = estimate_mos(0.05, 0.0, Some(20.0), Codec::G711);
        assert!(without < 2.5, "{without}");
        assert!(with > 3.7, "{with}");
        let bursty = r_factor(Equipment::G711_PLC, 5.0, 2.0, 40.0);
        assert!(bursty < r_factor(Equipment::G711_PLC, 5.0, 1.0, 40.0));
    }

    #[test]
    fn delay_impairment_tracks_g114() {
        // Below 100 ms delay barely matters; Cole and Rosenbluth's fit is close to G.107
        // up to 300 ms; beyond about 200 ms quality falls fast.
        assert!(delay_impairment(0.0) < 0.2);
        let cole = |d: f64| 0.024 * d + 0.11 * (d - 177.3).max(0.0);
        for d in [10.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0] {
            close(delay_impairment(d), cole(d), 1.0);
        }
        let far = r_factor(Equipment::G711_PLC, 0.0, 1.0, 400.0);
        assert!(far < 70.0, "{far}");
        assert_eq!(r_factor(Equipment::G711_NO_PLC, 100.0, 1.0, 1e9), 0.0);
    }

    #[test]
    fn hostile_numbers_stay_in_range() {
        let weird = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 1e300];
        for a in weird {
            for b in weird {
                let r = r_factor(Equipment { ie: a, bpl: b }, a, b, a);
                assert!((0.0..=100.0).contains(&r), "{r}");
                let mos = estimate_mos(a, b, Some(a), Codec::Opus);
                assert!((1.0..=4.5).contains(&mos), "{mos}");
            }
        }
    }

    proptest! {
        #[test]
        fn r_falls_with_loss_and_delay(
            loss in 0.0..100.0f64,
            more_loss in 0.0..100.0f64,
            delay in 0.0..1000.0f64,
            more_delay in 0.0..1000.0f64,
            burst in 1.0..5.0f64,
        ) {
            let equipment = Equipment::G711_PLC;
            let r = r_factor(equipment, loss, burst, delay);
            prop_assert!((0.0..=100.0).contains(&r));
            prop_assert!(r_factor(equipment, loss + more_loss, burst, delay) <= r + 1e-9);
            prop_assert!(r_factor(equipment, loss, burst, delay + more_delay) <= r + 1e-9);
        }

        #[test]
        fn mos_falls_with_loss_jitter_and_rtt(
            loss in 0.0..1.0f64,
            jitter in 0.0..200.0f64,
            rtt in 0.0..2000.0f64,
            step in 0.0..500.0f64,
        ) {
            let mos = estimate_mos(loss, jitter, Some(rtt), Codec::G711);
            prop_assert!((1.0..=4.5).contains(&mos));
            let lossier = (loss + step / 500.0).min(1.0);
            prop_assert!(estimate_mos(lossier, jitter, Some(rtt), Codec::G711) <= mos + 1e-9);
            prop_assert!(estimate_mos(loss, jitter + step, Some(rtt), Codec::G711) <= mos + 1e-9);
            prop_assert!(estimate_mos(loss, jitter, Some(rtt + step), Codec::G711) <= mos + 1e-9);
        }

        #[test]
        fn mos_rises_with_r(r in -50.0..150.0f64, step in 0.0..50.0f64) {
            let mos = mos_from_r(r);
            prop_assert!((1.0..=4.5).contains(&mos));
            prop_assert!(mos_from_r(r + step) >= mos - 1e-12);
        }
    }
}
