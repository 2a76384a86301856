//! Feeds arbitrary bytes to the codec the way a connection does: frame after frame with
//! `check_frame`, each frame through `decode_packet`, switching to the CONNECT's version
//! once one decodes. Besides "never panics", it checks that whatever decodes re-encodes to
//! exactly `encoded_len` bytes and decodes again to the same packet.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use promptmq::codec::{check_frame, decode_packet, encode_packet, encoded_len, Packet, ProtocolVersion};

const MAX_PACKET_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for start in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        let mut version = start;
        let mut rest = data;
        while let Ok(Some(frame)) = check_frame(rest, MAX_PACKET_SIZE) {
            assert!(frame.header_len >= 2 && frame.header_len <= 5);
            assert!(frame.total_len >= frame.header_len && frame.total_len <= rest.len());
            let (head, tail) = rest.split_at(frame.total_len);
            rest = tail;
            let Ok(packet) = decode_packet(Bytes::copy_from_slice(head), version) else {
                break;
            };

            // Only CONNECT decodes without a version, and it carries its own.
            let wire_version = version.unwrap_or(ProtocolVersion::V5);
            let mut out = BytesMut::new();
            encode_packet(&packet, wire_version, &mut out, usize::MAX).expect("a decoded packet re-encodes");
            assert_eq!(out.len(), encoded_len(&packet, wire_version));
            let again = decode_packet(out.freeze(), version).expect("re-encoded packet decodes");
            assert_eq!(again, packet);

            if let (None, Packet::Connect(c)) = (version, &packet) {
                version = Some(c.protocol);
            }
        }
    }
});
