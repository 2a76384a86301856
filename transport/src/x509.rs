//! Just enough DER to read the subject Common Name of a certificate that rustls has already
//! verified. A full X.509 parser would be a large dependency for one string.

/// The DER encoding of OID 2.5.4.3 (id-at-commonName).
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_INTEGER: u8 = 0x02;
const TAG_VERSION: u8 = 0xA0;

/// The first Common Name of the certificate's subject, if it has one in a string type we read.
/// `None` for anything malformed.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert_der, TAG_SEQUENCE)?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == TAG_VERSION {
        rest = after;
    }
    let (_serial, rest) = expect(rest, TAG_INTEGER)?;
    let (_signature, rest) = expect(rest, TAG_SEQUENCE)?;
    let (_issuer, rest) = expect(rest, TAG_SEQUENCE)?;
    let (_validity, rest) = expect(rest, TAG_SEQUENCE)?;
    let (subject, _) = expect(rest, TAG_SEQUENCE)?;
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (rdn, next) = expect(rdns, TAG_SET)?;
        rdns = next;
        let mut attributes = rdn;
        while !attributes.is_empty() {
            let (attribute, next) = expect(attributes, TAG_SEQUENCE)?;
            attributes = next;
            let (oid, value) = expect(attribute, TAG_OID)?;
            if oid == OID_COMMON_NAME {
                let (tag, content, _) = tlv(value)?;
                return decode_string(tag, content);
            }
        }
    }
    None
}

/// Splits one TLV off `input`: (tag, content, rest). Only single-byte tags and definite lengths
/// (all DER has).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    match tlv(input)? {
        (tag, content, rest) if tag == want => Some((content, rest)),
        _ => None,
    }
}

fn decode_string(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0C | 0x13 | 0x16 => String::from_utf8(content.to_vec()).ok(),
        // TeletexString: in practice Latin-1.
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1E => {
            let pairs = content.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            let units = pairs.map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().ok()
        }
        // UniversalString: UTF-32BE.
        0x1C => {
            let quads = content.chunks_exact(4);
            if !quads.remainder().is_empty() {
                return None;
            }
            quads.map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate skeleton: only the fields the walker reads are meaningful.
    fn cert_with_subject(subject_rdns: &[Vec<u8>], with_version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(der(TAG_VERSION, &der(TAG_INTEGER, &[2])));
        }
        tbs.extend(der(TAG_INTEGER, &[1, 2, 3]));
        tbs.extend(der(TAG_SEQUENCE, &[]));
        tbs.extend(der(TAG_SEQUENCE, &der(TAG_SET, &[])));
        tbs.extend(der(TAG_SEQUENCE, &[]));
        tbs.extend(der(TAG_SEQUENCE, &subject_rdns.concat()));
        tbs.extend(der(TAG_SEQUENCE, &[0; 200])); // stands for the public key; long length form
        let mut cert = der(TAG_SEQUENCE, &tbs);
        cert.extend(der(TAG_SEQUENCE, &[]));
        der(TAG_SEQUENCE, &cert)
    }

    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut atv = der(TAG_OID, oid);
        atv.extend(der(tag, value));
        der(TAG_SET, &der(TAG_SEQUENCE, &atv))
    }

    const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0A];

    #[test]
    fn common_name_in_each_string_type() {
        let cases: [(u8, Vec<u8>, &str); 6] = [
            (0x0C, "dévice-1".as_bytes().to_vec(), "dévice-1"),
            (0x13, b"device-2".to_vec(), "device-2"),
            (0x16, b"device-3".to_vec(), "device-3"),
            (0x14, vec![b'd', 0xE9, b'v'], "dév"),
            (0x1E, vec![0, b'd', 0, 0xE9, 0, b'v'], "dév"),
            (0x1C, vec![0, 0, 0, b'd', 0, 0, 0, 0xE9], "dé"),
        ];
        for (tag, value, want) in cases {
            for with_version in [true, false] {
                let cert = cert_with_subject(
                    &[rdn(OID_ORGANIZATION, 0x0C, b"Org"), rdn(OID_COMMON_NAME, tag, &value)],
                    with_version,
                );
                assert_eq!(subject_common_name(&cert).as_deref(), Some(want), "tag {tag:#x}");
            }
        }
    }

    #[test]
    fn no_common_name() {
        let cert = cert_with_subject(&[rdn(OID_ORGANIZATION, 0x0C, b"Org")], true);
        assert_eq!(subject_common_name(&cert), None);
        assert_eq!(subject_common_name(&cert_with_subject(&[], true)), None);
    }

    #[test]
    fn malformed_input_is_none_not_a_panic() {
        let cert = cert_with_subject(&[rdn(OID_COMMON_NAME, 0x0C, b"device")], true);
        for len in 0..cert.len() {
            assert_eq!(subject_common_name(&cert[..len]), None, "truncated to {len}");
        }
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(subject_common_name(&[0x1F, 0x01, 0x00]), None);
        let bad_utf8 = cert_with_subject(&[rdn(OID_COMMON_NAME, 0x0C, &[0xFF])], true);
        assert_eq!(subject_common_name(&bad_utf8), None);
        let odd_bmp = cert_with_subject(&[rdn(OID_COMMON_NAME, 0x1E, &[0, b'a', 0])], true);
        assert_eq!(subject_common_name(&odd_bmp), None);
    }
}
