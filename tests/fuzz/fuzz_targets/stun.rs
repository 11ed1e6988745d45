//! Any bytes: the STUN decoder, its accessors and checks, and the ChannelData parser must not
//! panic. A message that decodes must re-encode (attributes copied, integrity and fingerprint
//! recomputed) into one that decodes to the same attributes and verifies; accepted ChannelData
//! must re-encode to the same channel and data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_turn::stun::{
    Message, MessageBuilder, RawAttribute, attr, classify, encode_channel_data, parse_channel_data,
};

const KEY: &[u8] = b"fuzz key";

fn exercise(message: &Message<'_>) {
    let _ = format!("{message:?}");
    let _ = message.unknown_comprehension_required().count();
    let _ = message.mapped_address();
    let _ = message.xor_mapped_address();
    let _ = message.xor_peer_addresses().count();
    let _ = message.xor_relayed_addresses().count();
    let _ = message.alternate_server();
    let _ = message.username();
    let _ = message.userhash();
    let _ = message.realm();
    let _ = message.nonce();
    let _ = message.software();
    let _ = message.error_code();
    if let Ok(Some(list)) = message.unknown_attributes() {
        let _ = list.count();
    }
    if let Ok(Some(list)) = message.password_algorithms() {
        let _ = list.count();
    }
    let _ = message.password_algorithm();
    let _ = message.channel_number();
    let _ = message.lifetime();
    let _ = message.data();
    let _ = message.requested_transport();
    let _ = message.dont_fragment();
    let _ = message.even_port();
    let _ = message.reservation_token();
    let _ = message.requested_address_family();
    let _ = message.additional_address_family();
    let _ = message.icmp();
    let _ = message.verify_integrity(KEY);
    let _ = message.verify_message_integrity(KEY);
    let _ = message.verify_message_integrity_sha256(KEY);
    let _ = message.verify_fingerprint();
}

/// The attributes the re-encoding copies, in order.
fn kept<'a>(message: &Message<'a>) -> Vec<RawAttribute<'a>> {
    message
        .attributes()
        .filter(|a| !is_computed(a.attr_type))
        .collect()
}

fn is_computed(attr_type: u16) -> bool {
    matches!(
        attr_type,
        attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
    )
}

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);

    if let Ok(message) = Message::decode(data) {
        exercise(&message);

        let mut buf = Vec::new();
        let mut builder = MessageBuilder::new(
            &mut buf,
            message.method(),
            message.class(),
            message.transaction_id(),
        );
        for a in message.attributes().filter(|a| !is_computed(a.attr_type)) {
            builder
                .add_raw(a.attr_type, a.value)
                .expect("a decoded attribute fits again");
        }
        let integrity = message.contains(attr::MESSAGE_INTEGRITY);
        let integrity_sha256 = message.contains(attr::MESSAGE_INTEGRITY_SHA256);
        let fingerprint = message.contains(attr::FINGERPRINT);
        // The copies are recomputed at full size: a truncated or malformed original in a
        // near-maximal message may legitimately not fit again.
        let mut complete = true;
        if integrity {
            complete &= builder.add_message_integrity(KEY).is_ok();
        }
        if integrity_sha256 && complete {
            complete &= builder.add_message_integrity_sha256(KEY).is_ok();
        }
        if fingerprint && complete {
            complete &= builder.add_fingerprint().is_ok();
        }
        let again = Message::decode(builder.finish()).expect("a built message decodes");
        exercise(&again);
        assert_eq!(again.method(), message.method());
        assert_eq!(again.class(), message.class());
        assert_eq!(again.transaction_id(), message.transaction_id());
        assert_eq!(kept(&again), kept(&message));
        if complete {
            if integrity || integrity_sha256 {
                assert!(again.verify_integrity(KEY).is_ok());
            }
            if integrity {
                assert!(again.verify_message_integrity(KEY).is_ok());
            }
            if fingerprint {
                assert!(again.verify_fingerprint().is_ok());
            }
        }
    }

    if let Ok((channel, payload)) = parse_channel_data(data) {
        let mut out = Vec::new();
        encode_channel_data(&mut out, channel, payload, true).expect("parsed data re-frames");
        assert_eq!(parse_channel_data(&out), Ok((channel, payload)));
    }
});
