//! RTP and RTCP packet headers (RFC 3550 §5.1, §6.4), read and rewritten in place.
//!
//! The forwarding path never copies or allocates: [`RtpHeader::parse`] reads the fixed header
//! from a borrowed datagram, and [`rewrite`] writes a new SSRC, sequence number and timestamp
//! into the same bytes.

/// Fixed RTP header length.
pub const HEADER_LEN: usize = 12;

/// Why bytes are not an RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than its headers say.
    #[error("truncated RTP packet")]
    Truncated,
    /// Version is not 2.
    #[error("not RTP version 2")]
    Version,
    /// Padding longer than the payload.
    #[error("bad RTP padding")]
    Padding,
}

/// The fields of an RTP header the media plane uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Where the payload starts (after CSRCs and the extension).
    pub payload_offset: usize,
    /// Payload length (without padding).
    pub payload_len: usize,
}

impl RtpHeader {
    /// Reads the header of `packet`.
    pub fn parse(packet: &[u8]) -> Result<Self, RtpError> {
        if packet.len() < HEADER_LEN {
            return Err(RtpError::Truncated);
        }
        let first = packet[0];
        if first >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let csrc_count = usize::from(first & 0x0f);
        let mut offset = HEADER_LEN + 4 * csrc_count;
        if first & 0x10 != 0 {
            // Header extension: 16-bit profile, 16-bit length in 32-bit words (§5.3.1).
            let words = packet
                .get(offset + 2..offset + 4)
                .ok_or(RtpError::Truncated)?;
            offset += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        if offset > packet.len() {
            return Err(RtpError::Truncated);
        }
        let mut end = packet.len();
        if first & 0x20 != 0 {
            let padding = usize::from(packet[end - 1]);
            if padding == 0 || offset + padding > end {
                return Err(RtpError::Padding);
            }
            end -= padding;
        }
        Ok(Self {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            payload_offset: offset,
            payload_len: end - offset,
        })
    }
}

/// Writes `ssrc`, `sequence` and `timestamp` into an RTP packet already checked by
/// [`RtpHeader::parse`].
pub fn rewrite(packet: &mut [u8], ssrc: u32, sequence: u16, timestamp: u32) {
    packet[2..4].copy_from_slice(&sequence.to_be_bytes());
    packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// Whether a datagram on an RTP port is RTCP (RFC 5761 §4: payload types 64-95 after masking
/// the marker bit are RTCP packet types 192-223).
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

/// Writes a new sender SSRC into an RTCP compound packet's first report (SR or RR), the
/// field every RTCP packet type puts at bytes 4-8.
pub fn rewrite_rtcp_ssrc(packet: &mut [u8], ssrc: u32) {
    if packet.len() >= 8 {
        packet[4..8].copy_from_slice(&ssrc.to_be_bytes());
    }
}

/// Builds a minimal RTP packet (for tests and generated media).
pub fn build(
    buffer: &mut Vec<u8>,
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) {
    buffer.clear();
    buffer.push(0x80);
    buffer.push(payload_type & 0x7f | if marker { 0x80 } else { 0 });
    buffer.extend_from_slice(&sequence.to_be_bytes());
    buffer.extend_from_slice(&timestamp.to_be_bytes());
    buffer.extend_from_slice(&ssrc.to_be_bytes());
    buffer.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut packet = vec![
            0xB2,
            0x80 | 8,
            0x12,
            0x34,
            0,
            0,
            0x01,
            0x00,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        packet.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        packet.extend_from_slice(&[7; 160]);
        packet.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let header = RtpHeader::parse(&packet).unwrap();
        assert_eq!(
            (
                header.marker,
                header.payload_type,
                header.sequence,
                header.timestamp,
                header.ssrc
            ),
            (true, 8, 0x1234, 256, 0xdead_beef)
        );
        assert_eq!((header.payload_offset, header.payload_len), (28, 160));
        rewrite(&mut packet, 42, 7, 9000);
        let again = RtpHeader::parse(&packet).unwrap();
        assert_eq!(
            (
                again.ssrc,
                again.sequence,
                again.timestamp,
                again.payload_len
            ),
            (42, 7, 9000, 160)
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(RtpHeader::parse(&[0x80; 11]), Err(RtpError::Truncated));
        assert_eq!(RtpHeader::parse(&[0x40; 12]), Err(RtpError::Version));
        let mut padded = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200];
        assert_eq!(RtpHeader::parse(&padded), Err(RtpError::Padding));
        padded[12] = 0;
        assert_eq!(RtpHeader::parse(&padded), Err(RtpError::Padding));
        let extension_beyond_end = [0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(
            RtpHeader::parse(&extension_beyond_end),
            Err(RtpError::Truncated)
        );
    }

    #[test]
    fn tells_rtcp_from_rtp() {
        let mut packet = Vec::new();
        build(&mut packet, 0, false, 1, 160, 5, &[0xff; 160]);
        assert!(!is_rtcp(&packet));
        let sender_report = [0x80, 200, 0, 6, 0, 0, 0, 5, 0, 0, 0, 0];
        assert!(is_rtcp(&sender_report));
    }

    proptest! {
        #[test]
        fn never_panics_and_rewrites_round_trip(mut bytes in proptest::collection::vec(any::<u8>(), 0..300), ssrc: u32, seq: u16, ts: u32) {
            if let Ok(header) = RtpHeader::parse(&bytes) {
                prop_assert!(header.payload_offset + header.payload_len <= bytes.len());
                rewrite(&mut bytes, ssrc, seq, ts);
                let again = RtpHeader::parse(&bytes).unwrap();
                prop_assert_eq!((again.ssrc, again.sequence, again.timestamp), (ssrc, seq, ts));
                prop_assert_eq!(again.payload_len, header.payload_len);
            }
        }
    }
}
