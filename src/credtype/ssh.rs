//! `ssh_key`: an OpenSSH private key and, when it is encrypted, its passphrase. On the way in
//! the key must parse and, if encrypted, decrypt with the passphrase given; its public key's
//! SHA-256 fingerprint (`SHA256:...`, as `ssh-keygen -l` prints it) and algorithm become derived
//! metadata. The key is stored as given (still encrypted, re-encoded with `\n` line endings)
//! together with its passphrase.

use secrecy::SecretSlice;
use serde::Serialize;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use super::parts::{self, Parts};
use super::{CredTypeError, Validated, clip};

/// Most bcrypt-pbkdf rounds accepted for an encrypted key. Checking the passphrase runs the KDF
/// inside the request that stores the key (or approves a proposal carrying it), so an
/// attacker-chosen count would be a way to burn the server's CPU: ssh-keygen's default is 16 and
/// `-a 100` is the usual hardened choice.
pub(super) const MAX_KDF_ROUNDS: u32 = 256;

/// The parts of an `ssh_key` value written as a JSON object.
const FIELDS: &[&str] = &["private_key", "passphrase"];

/// Checks an `ssh_key` value (see the module docs) and returns its canonical payload.
pub(super) fn validate(text: &str) -> Result<Validated, CredTypeError> {
    let (key_text, passphrase) = if parts::is_object(text) {
        let mut p = Parts::parse(text, "ssh_key", FIELDS)?;
        (p.required("private_key")?, p.string("passphrase")?)
    } else {
        (Zeroizing::new(text.to_owned()), None)
    };
    let normalized = Zeroizing::new(key_text.trim().replace("\r\n", "\n"));
    let key = PrivateKey::from_openssh(normalized.as_bytes())
        .map_err(|_| CredTypeError::invalid("private_key", not_openssh(&normalized)))?;
    match (key.is_encrypted(), passphrase.as_deref()) {
        (true, None) => {
            return Err(CredTypeError::invalid(
                "passphrase",
                "the passphrase of this encrypted key (CLI: --passphrase-file FILE; API: a JSON object with private_key and passphrase)",
            ));
        }
        (true, Some(pass)) => {
            if let ssh_key::Kdf::Bcrypt { rounds, .. } = key.kdf()
                && *rounds > MAX_KDF_ROUNDS
            {
                return Err(CredTypeError::invalid(
                    "private_key",
                    format!(
                        "an encrypted key with at most {MAX_KDF_ROUNDS} KDF rounds (ssh-keygen -a); this one asks for {rounds}: re-encrypt it with `ssh-keygen -p -a 100`"
                    ),
                ));
            }
            key.decrypt(pass).map_err(|_| {
                CredTypeError::invalid(
                    "passphrase",
                    "the passphrase that decrypts this key; the one given does not",
                )
            })?;
        }
        (false, Some(_)) => {
            return Err(CredTypeError::invalid(
                "passphrase",
                "none: this key is not encrypted",
            ));
        }
        (false, None) => {}
    }
    let derived_metadata = [
        (
            "fingerprint",
            key.public_key().fingerprint(HashAlg::Sha256).to_string(),
        ),
        ("algorithm", key.algorithm().as_str().to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), clip(&v)))
    .collect();
    let private_key = key
        .to_openssh(LineEnding::LF)
        .map_err(|_| CredTypeError::invalid("private_key", "a key that can be re-encoded"))?;
    let payload = Zeroizing::new(
        serde_json::to_vec(&Canonical {
            private_key: &private_key,
            passphrase: passphrase.as_deref().map(String::as_str),
        })
        .map_err(|_| CredTypeError::invalid("value", "a value that can be encoded"))?,
    );
    Ok(Validated {
        payload: SecretSlice::from(payload.to_vec()),
        derived_metadata,
        expires_at: None,
    })
}

/// The canonical payload.
#[derive(Serialize)]
struct Canonical<'a> {
    private_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    passphrase: Option<&'a str>,
}

/// What was expected, given a text that is not an OpenSSH private key.
fn not_openssh(text: &str) -> String {
    const EXPECTED: &str = "an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)";
    let pem_key = [
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "PRIVATE KEY",
    ]
    .iter()
    .any(|label| text.starts_with(&format!("-----BEGIN {label}-----")));
    if pem_key {
        format!(
            "{EXPECTED}; this is a PEM key: convert it with `ssh-keygen -p -f FILE`, which rewrites the file in the OpenSSH format"
        )
    } else if text.starts_with("ssh-") || text.starts_with("ecdsa-") || text.starts_with("sk-") {
        format!("{EXPECTED}; this is a public key")
    } else if text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
        format!("{EXPECTED}; this one is damaged or of an unsupported kind")
    } else {
        EXPECTED.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::credtype::{CheckOptions, CredentialType, validate as validate_type};

    const ED25519: &str = include_str!("../../tests/fixtures/ssh/ed25519");
    const ENCRYPTED: &str = include_str!("../../tests/fixtures/ssh/ed25519_encrypted");
    const RSA: &str = include_str!("../../tests/fixtures/ssh/rsa");
    const ECDSA: &str = include_str!("../../tests/fixtures/ssh/ecdsa");
    const RSA_PEM: &str = include_str!("../../tests/fixtures/ssh/rsa_pem_format");
    const PASSPHRASE: &str = "fixture passphrase";

    fn check(value: &str) -> Result<Validated, CredTypeError> {
        validate_type(
            CredentialType::SshKey,
            &value.to_owned().into(),
            CheckOptions {
                allow_expired: false,
                now_ms: 0,
            },
        )
    }

    fn with_passphrase(key: &str, passphrase: &str) -> String {
        serde_json::json!({ "private_key": key, "passphrase": passphrase }).to_string()
    }

    #[test]
    fn fingerprints_and_algorithms_match_ssh_keygen() {
        // Fingerprints as `ssh-keygen -lf` printed them (tests/fixtures/ssh/README.md).
        for (key, fingerprint, algorithm) in [
            (
                ED25519,
                "SHA256://Zp1rQ2jKytXrtp/cf1KvoMgQLUlNgbEO75aNi+VKE",
                "ssh-ed25519",
            ),
            (
                RSA,
                "SHA256:Y1pUw1WZnevSIecCbbI0ldOnL9LqBUUgAOScqtyONjo",
                "ssh-rsa",
            ),
            (
                ECDSA,
                "SHA256:zOvJ6C1tF/GsBCAnodXg5Jqr17oSKsN8c22QLq4TOAI",
                "ecdsa-sha2-nistp256",
            ),
        ] {
            let v = check(key).unwrap();
            assert_eq!(v.derived_metadata["fingerprint"], fingerprint);
            assert_eq!(v.derived_metadata["algorithm"], algorithm);
            assert_eq!(v.expires_at, None);
            let stored: serde_json::Value =
                serde_json::from_slice(v.payload.expose_secret()).unwrap();
            assert_eq!(stored["private_key"].as_str().unwrap().trim(), key.trim());
            assert!(stored.get("passphrase").is_none());
        }
    }

    #[test]
    fn a_key_asking_for_more_kdf_rounds_than_the_cap_is_refused_before_the_kdf_runs() {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let body: String = ENCRYPTED
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let mut blob = engine.decode(body).unwrap();
        // "bcrypt", then the options: their length, the salt's length, the salt, the rounds.
        let at = blob.windows(6).position(|w| w == b"bcrypt").unwrap() + 6;
        let salt_len = u32::from_be_bytes(blob[at + 4..at + 8].try_into().unwrap()) as usize;
        let rounds = at + 8 + salt_len;
        blob[rounds..rounds + 4].copy_from_slice(&50_000_000u32.to_be_bytes());
        let encoded = engine.encode(&blob);
        let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
        for chunk in encoded.as_bytes().chunks(70) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
        let err = check(&with_passphrase(&pem, PASSPHRASE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 256 KDF rounds"), "{err}");
        assert!(err.contains("50000000"), "{err}");
        // Refused from the header alone: were the KDF run, 50 million rounds would hang here.
    }

    #[test]
    fn an_encrypted_key_needs_its_passphrase() {
        let err = check(ENCRYPTED).unwrap_err().to_string();
        assert!(
            err.starts_with("passphrase: the passphrase of this encrypted key"),
            "{err}"
        );
        let err = check(&with_passphrase(ENCRYPTED, "wrong horse"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "passphrase: the passphrase that decrypts this key; the one given does not"
        );
        let v = check(&with_passphrase(ENCRYPTED, PASSPHRASE)).unwrap();
        assert_eq!(
            v.derived_metadata["fingerprint"],
            "SHA256:U4bYGvcGuQ36JLlQjl/ywgTrR0LWhRacDsVtxwka+Gw"
        );
        // Stored still encrypted, with its passphrase, and readable again with it.
        let stored: serde_json::Value = serde_json::from_slice(v.payload.expose_secret()).unwrap();
        assert_eq!(stored["passphrase"], PASSPHRASE);
        let key = PrivateKey::from_openssh(stored["private_key"].as_str().unwrap()).unwrap();
        assert!(key.is_encrypted());
        assert!(key.decrypt(PASSPHRASE).is_ok());
    }

    #[test]
    fn a_passphrase_for_a_key_that_is_not_encrypted_is_refused() {
        let err = check(&with_passphrase(ED25519, "x"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "passphrase: none: this key is not encrypted");
    }

    #[test]
    fn texts_that_are_not_openssh_private_keys_are_refused_with_a_hint() {
        let pem = check(RSA_PEM).unwrap_err().to_string();
        assert!(pem.contains("ssh-keygen -p -f FILE"), "{pem}");
        let public = check("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB user@host")
            .unwrap_err()
            .to_string();
        assert!(public.ends_with("this is a public key"), "{public}");
        let damaged = ED25519.replacen("b3BlbnNzaC1rZXktdjE", "b3BlbnNzaC1rZXktdjF", 1);
        let err = check(&damaged).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        let err = check("s3cret").unwrap_err().to_string();
        assert_eq!(
            err,
            "private_key: an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)"
        );
        let err = check(r#"{"passphrase": "s3cret"}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "private_key: required, a string");
    }

    #[test]
    fn crlf_line_endings_and_surrounding_blank_lines_are_accepted() {
        let crlf = format!("\n{}\n\n", ED25519.replace('\n', "\r\n"));
        assert!(check(&crlf).is_ok());
    }
}
