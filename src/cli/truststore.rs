//! The Java trust store `agent-vault run` writes: a PKCS#12 file whose entries are trusted
//! certificates (the system roots plus the agent-vault CA), so a JVM started with
//! `-Djavax.net.ssl.trustStore=<it>` verifies both the proxy's leaves and hosts reached through a
//! plain tunnel. Java only treats a certificate bag as a trust anchor when it carries Oracle's
//! trusted-key-usage attribute, which general PKCS#12 tools do not write; the file holds nothing
//! secret, so it has no MAC and no encryption (Java reads such a file when no store password is
//! given). Written here in a few lines of DER rather than with a keystore crate or by running
//! `keytool` once per root (a JVM start each).

/// One DER element: tag, definite length, contents.
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

/// `[0] EXPLICIT`.
fn explicit0(inner: &[u8]) -> Vec<u8> {
    tlv(0xa0, inner)
}

fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

/// An OBJECT IDENTIFIER from its dotted arcs.
fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut groups = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            groups.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        groups.reverse();
        body.extend_from_slice(&groups);
    };
    push(arcs[0] * 40 + arcs[1]);
    for arc in &arcs[2..] {
        push(*arc);
    }
    tlv(0x06, &body)
}

/// A BMPString (UTF-16BE), the type PKCS#12 friendly names use.
fn bmp(text: &str) -> Vec<u8> {
    let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    tlv(0x1e, &bytes)
}

const PKCS7_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
const CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
/// Oracle's "trusted key usage" attribute: what makes Java read a certificate bag as a trusted
/// certificate entry.
const ORACLE_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113894, 746875, 1, 1];
const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];

/// A PKCS#12 file holding each DER certificate as a trusted-certificate entry named by `alias`
/// (aliases must be unique; Java lower-cases them).
pub(super) fn pkcs12_trust_store<'a>(
    certs: impl IntoIterator<Item = (String, &'a [u8])>,
) -> Vec<u8> {
    let mut bags = Vec::new();
    for (alias, der) in certs {
        let cert_bag = seq(&[&oid(X509_CERTIFICATE), &explicit0(&octets(der))]);
        let attributes = set(&[
            &seq(&[&oid(FRIENDLY_NAME), &set(&[&bmp(&alias)])]),
            &seq(&[
                &oid(ORACLE_TRUSTED_KEY_USAGE),
                &set(&[&oid(ANY_EXTENDED_KEY_USAGE)]),
            ]),
        ]);
        bags.extend(seq(&[&oid(CERT_BAG), &explicit0(&cert_bag), &attributes]));
    }
    let safe_contents = tlv(0x30, &bags);
    let content_info = seq(&[&oid(PKCS7_DATA), &explicit0(&octets(&safe_contents))]);
    let authenticated_safe = seq(&[&content_info]);
    let version = tlv(0x02, &[3]);
    seq(&[
        &version,
        &seq(&[&oid(PKCS7_DATA), &explicit0(&octets(&authenticated_safe))]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_oids_encode_as_the_standard_says() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
        // 1.2.840.113549.1.7.1, as in every PKCS#7 file.
        assert_eq!(
            oid(PKCS7_DATA),
            [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01
            ]
        );
        assert_eq!(bmp("ab"), [0x1e, 4, 0, b'a', 0, b'b']);
        // What the JDK's own keytool writes for a trusted certificate entry.
        assert_eq!(
            oid(ORACLE_TRUSTED_KEY_USAGE),
            [
                0x06, 0x0c, 0x60, 0x86, 0x48, 0x01, 0x86, 0xf9, 0x66, 0xad, 0xca, 0x7b, 0x01, 0x01
            ]
        );
    }

    #[test]
    fn the_store_holds_every_certificate_with_the_trusted_attribute() {
        let certs = [b"first-cert".as_slice(), b"second".as_slice()];
        let store = pkcs12_trust_store(
            certs
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("root-{i}"), *c)),
        );
        let (rest, parsed) = x509_parser::der_parser::parse_der(&store).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            parsed.as_sequence().unwrap().len(),
            2,
            "version and authSafe, no MAC"
        );
        let find = |needle: &[u8]| store.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(find(b"first-cert"), 1);
        assert_eq!(find(b"second"), 1);
        assert_eq!(find(&oid(ORACLE_TRUSTED_KEY_USAGE)), 2);
        assert_eq!(find(&bmp("root-1")), 1);
    }
}
