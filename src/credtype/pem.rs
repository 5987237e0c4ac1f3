//! `certificate`: a PEM certificate chain (leaf first) and the leaf's private key, the TLS client
//! identity an `mtls` service presents. On the way in both parts must parse, the key must be
//! one the proxy's TLS stack can sign with, and its public key (SPKI) must be the leaf's; the
//! leaf's notAfter becomes the credential's expiry. The canonical payload re-encodes every
//! part from its DER, so comments and bag attributes around the PEM sections are not kept.

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretSlice;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::parts::{self, Parts};
use super::{CheckOptions, CredTypeError, Validated, clip, not_expired, when};

/// The parts of a `certificate` value written as a JSON object.
const FIELDS: &[&str] = &["certificate", "private_key"];

/// A `certificate` credential as the proxy presents it: the chain (leaf first) and its key.
pub struct ClientIdentity {
    /// The certificates, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Reads the TLS client identity out of a sealed `certificate` payload (the canonical JSON
/// object; a single PEM text holding both parts is read too).
pub fn client_identity(payload: &[u8]) -> Result<ClientIdentity, CredTypeError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| CredTypeError::invalid("value", "UTF-8 PEM text"))?;
    read(text)
}

/// Checks a `certificate` value (see the module docs) and returns its canonical payload.
pub(super) fn validate(text: &str, opts: CheckOptions) -> Result<Validated, CredTypeError> {
    let identity = read(text)?;
    let certs = identity
        .chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, cert)| cert)
                .map_err(|_| {
                    CredTypeError::invalid(
                        "certificate",
                        format!(
                            "X.509 certificates; certificate {} of the chain does not parse",
                            i + 1
                        ),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = certs
        .first()
        .ok_or_else(|| CredTypeError::invalid("certificate", "at least one certificate"))?;
    key_matches_leaf(&identity.key, &certs)?;

    let not_after_ms = leaf.validity().not_after.timestamp().saturating_mul(1000);
    not_expired("certificate", not_after_ms, opts)?;

    let leaf_der: &[u8] = identity.chain.first().map_or(&[], |c| c.as_ref());
    let derived_metadata = [
        ("subject", leaf.subject().to_string()),
        ("issuer", leaf.issuer().to_string()),
        ("not_after", when::rfc3339(not_after_ms)),
        ("fingerprint", hex::encode(Sha256::digest(leaf_der))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), clip(&v)))
    .collect();

    let mut chain_pem = String::new();
    for cert in &identity.chain {
        chain_pem.push_str(&pem("CERTIFICATE", cert.as_ref()));
    }
    let key_pem = pem(key_label(&identity.key), identity.key.secret_der());
    let payload = Zeroizing::new(
        serde_json::to_vec(&Canonical {
            certificate: &chain_pem,
            private_key: &key_pem,
        })
        .map_err(|_| CredTypeError::invalid("value", "a value that can be encoded"))?,
    );
    Ok(Validated {
        payload: SecretSlice::from(payload.to_vec()),
        derived_metadata,
        expires_at: Some(not_after_ms),
    })
}

/// The canonical payload.
#[derive(Serialize)]
struct Canonical<'a> {
    certificate: &'a str,
    private_key: &'a str,
}

/// The chain and key of a value: a JSON object of both parts, or one PEM text holding both.
fn read(text: &str) -> Result<ClientIdentity, CredTypeError> {
    if parts::is_object(text) {
        let mut p = Parts::parse(text, "certificate", FIELDS)?;
        let chain_text = p.required("certificate")?;
        let key_text = p.required("private_key")?;
        Ok(ClientIdentity {
            chain: chain(&chain_text)?,
            key: key(&key_text)?,
        })
    } else {
        Ok(ClientIdentity {
            chain: chain(text)?,
            key: key(text)?,
        })
    }
}

/// The CERTIFICATE sections of `text`, in order.
fn chain(text: &str) -> Result<Vec<CertificateDer<'static>>, CredTypeError> {
    let chain = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            CredTypeError::invalid(
                "certificate",
                "PEM text whose sections are well-formed (base64 between matching BEGIN and END lines)",
            )
        })?;
    if chain.is_empty() {
        return Err(CredTypeError::invalid(
            "certificate",
            format!(
                "a PEM certificate chain (-----BEGIN CERTIFICATE-----), leaf first; found {}",
                found(text)
            ),
        ));
    }
    Ok(chain)
}

/// The private key section of `text`.
fn key(text: &str) -> Result<PrivateKeyDer<'static>, CredTypeError> {
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| {
        let labels = labels(text);
        let expected = if labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
            "an unencrypted PEM private key; this one is encrypted (decrypt it first: openssl pkey -in KEY -out PLAIN)".to_owned()
        } else if labels.iter().any(|l| l == "OPENSSH PRIVATE KEY") {
            "a PEM private key for the certificate; this is an OpenSSH key (store it as type ssh_key)".to_owned()
        } else {
            format!(
                "a PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY); found {}",
                found(text)
            )
        };
        CredTypeError::invalid("private_key", expected)
    })
}

/// Refuses a key the TLS stack cannot sign with, or whose public key is not the leaf's.
fn key_matches_leaf(
    key: &PrivateKeyDer<'static>,
    certs: &[x509_parser::certificate::X509Certificate<'_>],
) -> Result<(), CredTypeError> {
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(key).map_err(|_| {
        CredTypeError::invalid(
            "private_key",
            "an RSA, ECDSA (P-256, P-384, P-521) or Ed25519 private key; this one cannot be loaded",
        )
    })?;
    let spki = signing.public_key().ok_or_else(|| {
        CredTypeError::invalid("private_key", "a key whose public key can be read")
    })?;
    let matches = |c: &x509_parser::certificate::X509Certificate<'_>| {
        c.tbs_certificate.subject_pki.raw == spki.as_ref()
    };
    if certs.first().is_some_and(matches) {
        return Ok(());
    }
    let expected = match certs.iter().position(matches) {
        Some(i) => format!(
            "the key of the leaf (the first certificate); it is the key of certificate {} of the chain: put that certificate first",
            i + 1
        ),
        None => {
            "the key of the leaf certificate (the first in the chain); this key does not match it"
                .to_owned()
        }
    };
    Err(CredTypeError::invalid("private_key", expected))
}

/// The PEM label of a key's encoding.
fn key_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    }
}

/// One PEM section with 64-character lines.
fn pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for (i, c) in b64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out.push_str("\n-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// The labels of the `-----BEGIN X-----` lines of `text` (a label is not secret; anything that
/// does not look like one is left out).
fn labels(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let plain = label.len() <= 40 && label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ');
        if plain && !out.iter().any(|l| l == label) {
            out.push(label.to_owned());
        }
    }
    out
}

/// What PEM sections `text` has, for an error message.
fn found(text: &str) -> String {
    let labels = labels(text);
    if labels.is_empty() {
        "no PEM section".to_owned()
    } else {
        format!("only {}", labels.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PKCS_ED25519, PKCS_RSA_SHA256};
    use secrecy::ExposeSecret;
    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::credtype::{CredentialType, validate as validate_type};

    const NOW_MS: i64 = 1_801_396_800_000; // 2027-01-31T12:00:00Z

    fn opts(allow_expired: bool) -> CheckOptions {
        CheckOptions {
            allow_expired,
            now_ms: NOW_MS,
        }
    }

    fn at(days: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW_MS / 1000).unwrap() + Duration::days(days)
    }

    /// A CA and a leaf signed by it, valid until `not_after_days` from NOW: (leaf PEM, leaf key
    /// PEM, CA PEM, CA key PEM).
    fn leaf_and_ca(not_after_days: i64, leaf_key: KeyPair) -> (String, String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "Test Client CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut leaf = CertificateParams::new(vec!["client.example".into()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "agent client");
        leaf.not_before = at(-30);
        leaf.not_after = at(not_after_days);
        let issuer = Issuer::new(ca, ca_key);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (
            leaf_cert.pem(),
            leaf_key.serialize_pem(),
            ca_cert.pem(),
            issuer.key().serialize_pem(),
        )
    }

    fn object(chain: &str, key: &str) -> String {
        serde_json::json!({ "certificate": chain, "private_key": key }).to_string()
    }

    fn check(value: &str, allow_expired: bool) -> Result<Validated, CredTypeError> {
        validate_type(
            CredentialType::Certificate,
            &value.to_owned().into(),
            opts(allow_expired),
        )
    }

    #[test]
    fn a_chain_and_its_key_are_stored_canonically_with_derived_facts() {
        let (leaf, key, ca, _) = leaf_and_ca(90, KeyPair::generate().unwrap());
        let chain = format!("Bag Attributes: friendly\n{leaf}{ca}");
        let v = check(&object(&chain, &key), false).unwrap();
        assert_eq!(v.expires_at, Some((at(90).unix_timestamp()) * 1000));
        let m = &v.derived_metadata;
        assert_eq!(m["subject"], "CN=agent client");
        assert_eq!(m["issuer"], "CN=Test Client CA");
        assert_eq!(m["not_after"], "2027-05-01T12:00:00Z");
        let identity = client_identity(v.payload.expose_secret()).unwrap();
        assert_eq!(identity.chain.len(), 2);
        assert_eq!(
            m["fingerprint"],
            hex::encode(Sha256::digest(identity.chain[0].as_ref()))
        );
        let canonical: serde_json::Value =
            serde_json::from_slice(v.payload.expose_secret()).unwrap();
        assert!(
            !canonical["certificate"]
                .as_str()
                .unwrap()
                .contains("Bag Attributes"),
            "{canonical}"
        );
        // The canonical form is stable: validating it again gives the same payload.
        let again = check(
            std::str::from_utf8(v.payload.expose_secret()).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(again.payload.expose_secret(), v.payload.expose_secret());
    }

    #[test]
    fn one_pem_text_holding_both_parts_is_accepted_for_rsa_ecdsa_and_ed25519_keys() {
        for alg in [
            &PKCS_RSA_SHA256,
            &PKCS_ED25519,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = if *alg == PKCS_RSA_SHA256 {
                KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
            } else {
                KeyPair::generate_for(alg).unwrap()
            };
            let (leaf, key, _, _) = leaf_and_ca(10, key);
            let v = check(&format!("{key}{leaf}"), false).unwrap();
            let identity = client_identity(v.payload.expose_secret()).unwrap();
            assert_eq!(identity.chain.len(), 1);
            assert!(
                rustls::crypto::aws_lc_rs::sign::any_supported_type(&identity.key).is_ok(),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn a_key_that_does_not_match_the_leaf_is_refused() {
        let (leaf, _, ca, ca_key) = leaf_and_ca(90, KeyPair::generate().unwrap());
        let other = KeyPair::generate().unwrap().serialize_pem();
        let err = check(&object(&format!("{leaf}{ca}"), &other), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("private_key: the key of the leaf certificate"),
            "{err}"
        );
        // The CA's key is in the chain, but not the leaf's: the message says which to put first.
        let err = check(&object(&format!("{leaf}{ca}"), &ca_key), false).unwrap_err();
        assert!(
            err.to_string().contains("certificate 2 of the chain"),
            "{err}"
        );
    }

    #[test]
    fn a_pem_that_is_not_a_certificate_is_refused_naming_what_it_holds() {
        let (_, key, _, _) = leaf_and_ca(90, KeyPair::generate().unwrap());
        let err = check(&object(&key, &key), false).unwrap_err().to_string();
        assert_eq!(
            err,
            "certificate: a PEM certificate chain (-----BEGIN CERTIFICATE-----), leaf first; found only PRIVATE KEY"
        );
        let err = check(&object("just some text", &key), false)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("found no PEM section"), "{err}");
        // A CERTIFICATE section that is not X.509.
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = check(&object(junk, &key), false).unwrap_err().to_string();
        assert!(
            err.contains("certificate 1 of the chain does not parse"),
            "{err}"
        );
        // Broken base64 inside a section.
        let broken = "-----BEGIN CERTIFICATE-----\n!!s3cret!!\n-----END CERTIFICATE-----\n";
        let err = check(&object(broken, &key), false).unwrap_err().to_string();
        assert!(err.starts_with("certificate: PEM text"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_missing_encrypted_or_ssh_private_key_is_refused() {
        let (leaf, _, _, _) = leaf_and_ca(90, KeyPair::generate().unwrap());
        let err = check(&object(&leaf, &leaf), false).unwrap_err().to_string();
        assert!(
            err.starts_with("private_key: a PEM private key")
                && err.ends_with("found only CERTIFICATE"),
            "{err}"
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = check(&object(&leaf, enc), false).unwrap_err().to_string();
        assert!(err.contains("this one is encrypted"), "{err}");
        let ssh = include_str!("../../tests/fixtures/ssh/ed25519");
        let err = check(&object(&leaf, ssh), false).unwrap_err().to_string();
        assert!(err.contains("store it as type ssh_key"), "{err}");
        let err = check(&serde_json::json!({"certificate": leaf}).to_string(), false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "private_key: required, a string");
    }

    #[test]
    fn an_expired_certificate_is_refused_unless_allowed() {
        let (leaf, key, _, _) = leaf_and_ca(-1, KeyPair::generate().unwrap());
        let value = object(&leaf, &key);
        let err = check(&value, false).unwrap_err();
        assert_eq!(
            err,
            CredTypeError::Expired {
                field: "certificate".into(),
                at_rfc3339: "2027-01-30T12:00:00Z".into()
            }
        );
        assert!(err.to_string().contains("--allow-expired"), "{err}");
        let v = check(&value, true).unwrap();
        assert_eq!(v.expires_at, Some(at(-1).unix_timestamp() * 1000));
    }

    #[test]
    fn errors_never_quote_the_key() {
        let (leaf, key, _, _) = leaf_and_ca(90, KeyPair::generate().unwrap());
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let cases = [
            object(&key, &key),
            object(&leaf, &KeyPair::generate().unwrap().serialize_pem()),
            format!("{{\"certificate\": {leaf:?}, \"private_key\": {key:?}, \"extra\": 1}}"),
            format!("{{\"certificate\": {leaf:?}, \"private_key\": {key:?}"),
        ];
        for value in cases {
            let err = check(&value, false).unwrap_err().to_string();
            assert!(!err.contains(&body[..20]), "{err}");
        }
    }

    #[test]
    fn a_client_identity_is_not_debug_printed_with_its_key() {
        let (leaf, key, _, _) = leaf_and_ca(90, KeyPair::generate().unwrap());
        let identity = client_identity(object(&leaf, &key).as_bytes()).unwrap();
        let debug = format!("{identity:?}");
        assert_eq!(debug, "ClientIdentity { chain_len: 1, .. }");
        assert!(client_identity(b"\xff").is_err());
    }
}
