//! What call control tells the media plane, and the bookkeeping it does itself: which RTP
//! ports are in use, and how SDP is rewritten so that both legs send their media to us.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use switchboard_media::codec::Codec;
use switchboard_media::sdp::{Direction, Sdp};
pub use switchboard_media::webrtc::{AudioFormats, Certificate, WebRtcLeg};
use uuid::Uuid;

/// Identifies a call's media session in the media plane.
pub type SessionId = u64;

/// A command for the media plane.
#[derive(Debug)]
pub enum MediaCommand {
    /// A leg of the session is a browser: its RTP port now speaks WebRTC through `leg`
    /// (ICE-lite, DTLS-SRTP), which the media plane owns from now on.
    WebRtc {
        /// Session.
        session: SessionId,
        /// True for the caller's leg.
        a_side: bool,
        /// The negotiated leg.
        leg: Box<WebRtcLeg>,
    },
    /// Bind the RTP (even) and RTCP (odd) ports of both legs and start forwarding between
    /// them. `expected` addresses come from SDP; packets are latched to their real source.
    Create {
        /// Session.
        session: SessionId,
        /// Caller-facing RTP port.
        a_port: u16,
        /// Callee-facing RTP port.
        b_port: u16,
        /// Where the caller said to send media.
        a_expected: Option<SocketAddr>,
        /// Where the callee said to send media (known once it answers).
        b_expected: Option<SocketAddr>,
        /// The telephone-event payload type of the caller's offer (RFC 4733), if any.
        a_dtmf: Option<u8>,
        /// The call's record id: the media plane reports the session's statistics under it.
        call: Uuid,
    },
    /// A leg's SDP changed (answer, re-INVITE, UPDATE).
    Update {
        /// Session.
        session: SessionId,
        /// True for the caller's leg.
        a_side: bool,
        /// The new address from SDP.
        expected: Option<SocketAddr>,
        /// Whether the call is now on hold (no inactivity timeout while held).
        hold: bool,
        /// The leg's telephone-event payload type (RFC 4733), if its SDP has one.
        dtmf: Option<u8>,
    },
    /// Send a DTMF key to a leg as RFC 4733 events in its RTP stream.
    SendDtmf {
        /// Session.
        session: SessionId,
        /// True to send to the caller's leg.
        a_side: bool,
        /// The key: `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
        /// How long the key is held, in milliseconds.
        duration_ms: u32,
    },
    /// Stop forwarding and release the ports (a recording in progress is closed).
    Destroy {
        /// Session.
        session: SessionId,
    },
    /// Start, pause, resume or stop recording the session.
    Record {
        /// Session.
        session: SessionId,
        /// What to do.
        action: RecordAction,
    },
    /// Play a prompt of `tenant` to the caller's leg (a call an IVR flow answered), in the
    /// leg's G.711 `payload_type`; [`MediaEvent::PlayDone`] with `id` follows when it ends or
    /// cannot be played.
    Play {
        /// Session.
        session: SessionId,
        /// Numbers the plays of a session, increasing.
        id: u32,
        /// Tenant whose prompt it is.
        tenant: Uuid,
        /// Prompt name.
        prompt: String,
        /// 0 (PCMU) or 8 (PCMA).
        payload_type: u8,
    },
    /// Play music on hold to a leg whenever nothing else is sent to it (the other side
    /// holds the call), or stop (`to_a_side` `None`: resumed).
    HoldMusic {
        /// Session.
        session: SessionId,
        /// The held leg: true for the caller's.
        to_a_side: Option<bool>,
        /// That leg's G.711 payload type: 0 (PCMU) or 8 (PCMA).
        payload_type: u8,
    },
    /// Stop the prompt playing, and drop any play up to `id` not started yet.
    StopPlay {
        /// Session.
        session: SessionId,
        /// The latest play id to stop.
        id: u32,
    },
}

impl MediaCommand {
    /// The session the command is for.
    pub fn session(&self) -> SessionId {
        match self {
            Self::Create { session, .. }
            | Self::WebRtc { session, .. }
            | Self::Update { session, .. }
            | Self::Destroy { session }
            | Self::Record { session, .. }
            | Self::HoldMusic { session, .. }
            | Self::SendDtmf { session, .. }
            | Self::Play { session, .. }
            | Self::StopPlay { session, .. } => *session,
        }
    }
}

/// A change to a session's recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordAction {
    /// Start a new recording (a stereo WAV: caller left, callee right).
    Start {
        /// The recording's id (its row and file name).
        recording: Uuid,
        /// Tenant (the file lives under the tenant's directory).
        tenant: Uuid,
        /// The call's record id.
        call: Uuid,
        /// Wall time of the start, milliseconds since the Unix epoch.
        wall_ms: u64,
        /// Whether a leg negotiated a wideband codec (G.722, Opus): the file is then 16 kHz.
        wideband: bool,
        /// Record a voicemail instead: the caller alone, mono.
        voicemail: Option<Voicemail>,
    },
    /// Stop writing audio until resumed; the paused time is left out of the file.
    Pause,
    /// Write audio again.
    Resume,
    /// Close the file.
    Stop,
}

/// A voicemail being recorded: the caller's side alone, in a mono 8 kHz file, ended by the
/// writer after `silence` without sound; [`MediaEvent::RecordDone`] reports its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Voicemail {
    /// The extension whose voicemail box gets it.
    pub mailbox: Option<Uuid>,
    /// How much silence ends it.
    pub silence: Option<std::time::Duration>,
    /// Beep first, in this G.711 payload type (0 or 8).
    pub beep: Option<u8>,
}

/// An event from the media plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// No media from either leg for the inactivity timeout.
    Inactive {
        /// Session.
        session: SessionId,
    },
    /// The ports could not be bound.
    Failed {
        /// Session.
        session: SessionId,
    },
    /// A voicemail ended (stopped, silence, or the call ended).
    RecordDone {
        /// Session.
        session: SessionId,
        /// The recording.
        recording: Uuid,
        /// Its length in milliseconds.
        duration_ms: u64,
        /// Whether anything louder than silence was heard.
        heard: bool,
    },
    /// A prompt from [`MediaCommand::Play`] ended (or could not be played).
    PlayDone {
        /// Session.
        session: SessionId,
        /// The play's id.
        id: u32,
    },
    /// A leg sent a DTMF key as RFC 4733 events (reported when the key goes up).
    Dtmf {
        /// Session.
        session: SessionId,
        /// True if the caller pressed it.
        a_side: bool,
        /// The key.
        digit: char,
        /// How long it was held, in milliseconds.
        duration_ms: u32,
    },
}

/// Even RTP ports of a range, each reserving the odd port after it for RTCP.
#[derive(Debug)]
pub struct PortAllocator {
    first: u16,
    last: u16,
    next: u16,
    in_use: BTreeSet<u16>,
}

impl PortAllocator {
    /// Ports `first..=last` (rounded to even starts).
    pub fn new(first: u16, last: u16) -> Self {
        let first = first + first % 2;
        Self {
            first,
            last,
            next: first,
            in_use: BTreeSet::new(),
        }
    }

    /// A free even port (its odd neighbour is reserved with it), round-robin so that a port
    /// just released is not handed out again at once.
    pub fn allocate(&mut self) -> Option<u16> {
        let pairs = usize::from(self.last.saturating_sub(self.first).div_ceil(2));
        for _ in 0..pairs {
            let port = self.next;
            self.next = if port.saturating_add(3) > self.last {
                self.first
            } else {
                port + 2
            };
            if self.in_use.insert(port) {
                return Some(port);
            }
        }
        None
    }

    /// Returns a port.
    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }

    /// Ports in use.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

/// The media address an SDP names for its first audio stream.
pub fn audio_address(sdp: &Sdp) -> Option<SocketAddr> {
    let index = sdp.media.iter().position(|m| m.kind == "audio")?;
    let port = sdp.media[index].port;
    let ip = sdp.connection(index)?;
    // Port 0 rejects the stream (RFC 3264 §6); an unspecified address means hold in RFC 2543.
    (port != 0 && !ip.is_unspecified()).then_some(SocketAddr::new(ip, port))
}

/// The telephone-event payload type (RFC 4733 §7.1.1) of an SDP's first audio stream.
pub fn telephone_event(sdp: &Sdp) -> Option<u8> {
    let audio = sdp.media.iter().find(|m| m.kind == "audio")?;
    audio
        .rtpmaps()
        .into_iter()
        .find(|map| map.encoding.eq_ignore_ascii_case("telephone-event"))
        .map(|map| map.payload_type)
}

/// The G.711 payload type an SDP's first audio stream prefers: 8 (PCMA) when it lists PCMA
/// before PCMU, else 0 (PCMU).
pub fn g711_payload_type(sdp: &Sdp) -> u8 {
    sdp.media
        .iter()
        .find(|m| m.kind == "audio")
        .and_then(|audio| {
            audio
                .rtpmaps()
                .into_iter()
                .map(|map| map.payload_type)
                .find(|pt| matches!(pt, 0 | 8))
        })
        .unwrap_or(0)
}

/// Whether an SDP's preferred audio codec (its first payload type) is wideband.
pub fn is_wideband(sdp: &Sdp) -> bool {
    sdp.media
        .iter()
        .find(|m| m.kind == "audio")
        .and_then(|audio| audio.rtpmaps().into_iter().next())
        .and_then(|map| Codec::from_rtpmap(&map))
        .is_some_and(Codec::is_wideband)
}

/// Whether an SDP puts the call on hold (RFC 3264 §8.4: sendonly or inactive, or RFC 2543's
/// 0.0.0.0).
pub fn is_hold(sdp: &Sdp) -> bool {
    let Some(index) = sdp.media.iter().position(|m| m.kind == "audio") else {
        return false;
    };
    matches!(
        sdp.direction(index),
        Direction::SendOnly | Direction::Inactive
    ) || sdp.connection(index).is_some_and(|ip| ip.is_unspecified())
}

/// Our answer to `offer` for a call we answer ourselves (an IVR): G.711 only, µ-law if offered
/// else A-law, with telephone-event if offered, sendrecv. Also returns the payload type
/// chosen. `None` if the offer has no G.711 audio.
pub fn answer_g711(offer: &Sdp) -> Option<(Sdp, u8)> {
    let mut answer = offer.clone();
    let index = answer.media.iter().position(|m| m.kind == "audio")?;
    let maps = answer.media[index].rtpmaps();
    let chosen = ["PCMU", "PCMA"].iter().find_map(|name| {
        maps.iter()
            .find(|m| m.encoding.eq_ignore_ascii_case(name) && m.clock_rate == 8000)
            .map(|m| m.payload_type)
    })?;
    answer.media[index].retain_formats(|m| {
        m.payload_type == chosen || m.encoding.eq_ignore_ascii_case("telephone-event")
    });
    answer.set_direction(index, Direction::SendRecv);
    Some((answer, chosen))
}

/// Whether an SDP describes a WebRTC session: its first audio stream runs over DTLS-SRTP
/// (`UDP/TLS/RTP/SAVPF`, a fingerprint), as browsers offer and answer.
pub fn is_webrtc(sdp: &Sdp) -> bool {
    let Some(audio) = sdp.media.iter().find(|m| m.kind == "audio") else {
        return false;
    };
    let fingerprint = audio.attribute("fingerprint").is_some()
        || sdp
            .session
            .iter()
            .any(|l| l.kind == 'a' && l.value.starts_with("fingerprint:"));
    audio.proto.contains("TLS") && fingerprint
}

/// Attributes that describe a WebRTC transport or bundle, meaningless on a plain RTP leg.
const WEBRTC_ATTRIBUTES: &[&str] = &[
    "group",
    "msid-semantic",
    "ice-lite",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "fingerprint",
    "setup",
    "mid",
    "msid",
    "ssrc",
    "ssrc-group",
    "extmap",
    "extmap-allow-mixed",
    "rtcp-fb",
    "rtcp-mux",
    "rtcp-mux-only",
    "rtcp-rsize",
    "candidate",
    "end-of-candidates",
    "identity",
];

/// A browser's WebRTC session description as a plain RTP one for the other leg: its first
/// audio stream with one G.711 codec (µ-law if offered, else A-law) and telephone-event at
/// 8 kHz, `RTP/AVP`, none of the WebRTC transport attributes. Also returns what the WebRTC
/// leg must carry so that payloads pass unchanged. A browser that offers Opus but no G.711
/// gets Opus, and the other leg is offered PCMU and PCMA (the media plane transcodes).
/// `None` without either.
pub fn plain_from_webrtc(sdp: &Sdp) -> Option<(Sdp, AudioFormats)> {
    let index = sdp.media.iter().position(|m| m.kind == "audio")?;
    let direction = sdp.direction(index);
    let Some((mut plain, chosen)) = answer_g711(sdp) else {
        return plain_for_opus(sdp, index);
    };
    plain.set_direction(index, direction);
    let media = &mut plain.media[index];
    media.retain_formats(|m| {
        m.payload_type == chosen
            || (m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000)
    });
    media.proto = "RTP/AVP".into();
    media.remove_attributes(WEBRTC_ATTRIBUTES);
    plain.session.retain(|l| {
        let name = l.value.split_once(':').map_or(l.value.as_str(), |(n, _)| n);
        l.kind != 'a' || !WEBRTC_ATTRIBUTES.contains(&name)
    });
    // Other media (video, data channels) are refused with port 0 by `anchor`.
    let formats = AudioFormats {
        g711: vec![chosen],
        telephone_event: telephone_event(&plain),
        opus: None,
    };
    Some((plain, formats))
}

/// For a browser offering Opus and no G.711: a plain offer of PCMU and PCMA (no
/// telephone-event: keys do not cross the transcoder yet), and Opus for the browser's leg.
fn plain_for_opus(sdp: &Sdp, index: usize) -> Option<(Sdp, AudioFormats)> {
    let opus = sdp.media[index]
        .rtpmaps()
        .into_iter()
        .find(|m| m.encoding.eq_ignore_ascii_case("opus") && m.clock_rate == 48_000)?
        .payload_type;
    let mut plain = sdp.clone();
    let media = &mut plain.media[index];
    media.retain_formats(|_| false);
    media.formats = vec!["0".into(), "8".into()];
    media.proto = "RTP/AVP".into();
    media.remove_attributes(WEBRTC_ATTRIBUTES);
    media.remove_attributes(&["rtcp-fb", "fmtp", "rtpmap", "ptime", "maxptime"]);
    for map in ["rtpmap:0 PCMU/8000", "rtpmap:8 PCMA/8000"] {
        media.lines.insert(
            0,
            switchboard_media::sdp::Line {
                kind: 'a',
                value: map.into(),
            },
        );
    }
    plain.session.retain(|l| {
        let name = l.value.split_once(':').map_or(l.value.as_str(), |(n, _)| n);
        l.kind != 'a' || !WEBRTC_ATTRIBUTES.contains(&name)
    });
    let formats = AudioFormats {
        g711: Vec::new(),
        telephone_event: None,
        opus: Some(opus),
    };
    Some((plain, formats))
}

/// What a WebRTC leg offered to a browser may carry, from the plain offer of the other leg:
/// its G.711 payload types in order, its telephone-event, and Opus after them (a browser
/// that has no G.711 picks it, and is transcoded).
pub fn g711_formats(sdp: &Sdp) -> AudioFormats {
    let g711 = sdp
        .media
        .iter()
        .find(|m| m.kind == "audio")
        .map(|audio| {
            audio
                .rtpmaps()
                .into_iter()
                .filter(|m| {
                    m.clock_rate == 8000
                        && (m.encoding.eq_ignore_ascii_case("PCMU")
                            || m.encoding.eq_ignore_ascii_case("PCMA"))
                })
                .map(|m| m.payload_type)
                .filter(|pt| matches!(pt, 0 | 8))
                .collect()
        })
        .unwrap_or_default();
    let telephone_event = telephone_event(sdp);
    // A dynamic payload type for Opus that the offer does not use already.
    let used: Vec<String> = sdp
        .media
        .iter()
        .find(|m| m.kind == "audio")
        .map(|m| m.formats.clone())
        .unwrap_or_default();
    // 111, as browsers number it, unless taken.
    let opus = std::iter::once(111u8)
        .chain(96..=127)
        .find(|pt| !used.contains(&pt.to_string()) && Some(*pt) != telephone_event);
    AudioFormats {
        g711,
        telephone_event,
        opus,
    }
}

/// Rewrites an SDP so media comes to `address:port`: every connection line and the origin,
/// the audio port (other media are refused with port 0: only audio is anchored), and no ICE
/// or crypto attributes, which would describe the other side's transport.
pub fn anchor(sdp: &Sdp, address: IpAddr, port: u16) -> Sdp {
    let mut sdp = sdp.clone();
    sdp.set_connection(address);
    let mut audio_done = false;
    for media in &mut sdp.media {
        if media.kind == "audio" && !audio_done {
            media.port = port;
            audio_done = true;
        } else {
            media.port = 0;
        }
        media.remove_attributes(&[
            "candidate",
            "end-of-candidates",
            "ice-ufrag",
            "ice-pwd",
            "ice-options",
            "remote-candidates",
            "crypto",
            "fingerprint",
            "setup",
            "rtcp",
        ]);
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_reused_last_and_bounded() {
        let mut ports = PortAllocator::new(20_001, 20_009);
        let taken: Vec<u16> = std::iter::from_fn(|| ports.allocate()).collect();
        assert_eq!(taken, [20_002, 20_004, 20_006, 20_008]);
        assert_eq!(ports.allocate(), None);
        ports.release(20_004);
        assert_eq!(ports.allocate(), Some(20_004));
        ports.release(20_002);
        ports.release(20_006);
        assert_eq!(
            ports.allocate(),
            Some(20_006),
            "round robin continues from where it was"
        );
        assert_eq!(ports.in_use(), 4 - 1);
    }

    #[test]
    fn anchoring_rewrites_addresses_and_strips_transport_attributes() {
        let offer = Sdp::parse(
            b"v=0\r\no=- 1 1 IN IP4 192.168.1.5\r\ns=-\r\nc=IN IP4 192.168.1.5\r\nt=0 0\r\n\
              m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:4001\r\n\
              a=candidate:1 1 UDP 2130706431 192.168.1.5 4000 typ host\r\nm=video 5000 RTP/AVP 96\r\n",
        )
        .unwrap();
        assert_eq!(
            audio_address(&offer),
            Some("192.168.1.5:4000".parse().unwrap())
        );
        let anchored = anchor(&offer, "203.0.113.1".parse().unwrap(), 30_000);
        assert_eq!(
            audio_address(&anchored),
            Some("203.0.113.1:30000".parse().unwrap())
        );
        let text = anchored.to_string();
        assert!(
            !text.contains("candidate") && !text.contains("a=rtcp:"),
            "{text}"
        );
        assert!(text.contains("m=video 0 RTP/AVP 96"), "other media refused");
        assert!(text.contains("a=rtpmap:101 telephone-event/8000"));
    }

    #[test]
    fn codec_properties_from_sdp() {
        let sdp = |formats: &str, maps: &str| {
            Sdp::parse(format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP {formats}\r\n{maps}").as_bytes()).unwrap()
        };
        let wide = sdp("9 0 101", "a=rtpmap:101 telephone-event/8000\r\n");
        assert!(is_wideband(&wide));
        assert_eq!(telephone_event(&wide), Some(101));
        let narrow = sdp("0 9", "");
        assert!(!is_wideband(&narrow));
        assert_eq!(telephone_event(&narrow), None);
    }

    #[test]
    fn hold_detection() {
        let mut sdp = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n").unwrap();
        assert!(!is_hold(&sdp));
        sdp.set_direction(0, Direction::SendOnly);
        assert!(is_hold(&sdp));
        sdp.set_direction(0, Direction::SendRecv);
        sdp.set_connection("0.0.0.0".parse().unwrap());
        assert!(is_hold(&sdp));
        assert_eq!(audio_address(&sdp), None);
    }
}
