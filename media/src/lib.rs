//! Media for Switchboard, sans-IO: RTP/RTCP, codecs, jitter buffer, DTMF and recording.
//!
//! Nothing here touches a socket or a clock: packets and the current time come in as
//! arguments; packets to send, events and the next deadline come out.
//!
//! What exists so far: [`codec`], the codec interface (negotiated codecs, decoders and
//! encoders, ready for G.722 and Opus); [`g711`], the G.711 µ-law and A-law codecs; [`g722`],
//! the G.722 64 kbit/s sub-band ADPCM wideband codec; [`sdp`], session descriptions for
//! offer/answer; [`rtp`], RTP headers read and rewritten in place; [`relay`],
//! the forwarding core of a bridged call (latching, SSRC/sequence/timestamp continuity);
//! [`dtmf`], RFC 4733 telephone-events sent and received, and SIP INFO DTMF bodies;
//! [`rtcp`], RTCP reports, reception statistics and round-trip time; [`quality`], E-model
//! (G.107) MOS estimates from those statistics; [`jitter`], the adaptive jitter buffer
//! (reordering, loss concealment, talk spurts, clock skew); [`recording`], the stereo
//! timeline of a recorded call; [`prompt`], uploaded WAV prompts read and converted to 8 kHz
//! mono; [`hold`], the music a held party hears.

#![forbid(unsafe_code)]

pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod hold;
pub mod jitter;
pub mod prompt;
pub mod quality;
pub mod recording;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod transcode;
pub mod webrtc;
