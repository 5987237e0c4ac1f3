//! A credential's value put together from the files the CLI was given, so that no value of any
//! type needs to be written on a command line: `--from-file` holds the main part (a certificate
//! chain, an OpenSSH key, an oauth YAML or JSON document, or any single value), `--key-file` the
//! certificate's private key (or the OpenSSH key), `--passphrase-file` an OpenSSH key's
//! passphrase. The result is the one string the admin API takes (`src/credtype/mod.rs`
//! describes it); the server checks it. Messages name files and fields, never their contents.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{CliError, read_file_or_stdin};
use crate::credtype::CredentialType;

/// Where a value's parts come from, beside `KEY=VALUE` and `KEY=-`.
#[derive(Debug, Args, Clone, Default)]
pub(super) struct ValueFiles {
    /// Read the value from FILE (`-`: standard input): a certificate chain, an OpenSSH key, an
    /// oauth YAML or JSON document, or any one value (one final line ending is dropped).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// The private key: for --type certificate the leaf's PEM key (the chain comes from
    /// --from-file or the value), for --type ssh_key the OpenSSH key file.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// A file holding the passphrase of an encrypted OpenSSH key (--type ssh_key).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl ValueFiles {
    /// Refuses files that type `ty` has no use for, before anything is read.
    pub(super) fn check(&self, ty: CredentialType) -> Result<(), CliError> {
        if self.key_file.is_some()
            && !matches!(ty, CredentialType::Certificate | CredentialType::SshKey)
        {
            return Err(CliError::msg(format!(
                "--key-file is for --type certificate (the leaf's private key) or --type ssh_key (the OpenSSH key), not {ty}"
            )));
        }
        if ty == CredentialType::SshKey && self.from_file.is_some() && self.key_file.is_some() {
            return Err(CliError::msg(
                "give the OpenSSH key once: --from-file or --key-file",
            ));
        }
        if self.passphrase_file.is_some() && ty != CredentialType::SshKey {
            return Err(CliError::msg(format!(
                "--passphrase-file is for --type ssh_key, not {ty}"
            )));
        }
        Ok(())
    }

    /// The file that holds the main part of a value of type `ty`, if one was given (then the
    /// key argument carries no value).
    fn main_file(&self, ty: CredentialType) -> Option<&Path> {
        match (&self.from_file, &self.key_file) {
            (Some(f), _) => Some(f),
            (None, Some(k)) if ty == CredentialType::SshKey => Some(k),
            _ => None,
        }
    }

    /// The main part from its file, when the value comes from a file.
    pub(super) fn read_main(
        &self,
        ty: CredentialType,
    ) -> Result<Option<Zeroizing<String>>, CliError> {
        self.main_file(ty).map(read_text).transpose()
    }

    /// The value of type `ty` whose main part is `main` (from the argument, standard input
    /// or `--from-file`), with the other parts read from their files.
    pub(super) fn assemble(
        &self,
        ty: CredentialType,
        main: Zeroizing<String>,
    ) -> Result<Zeroizing<String>, CliError> {
        match ty {
            CredentialType::Certificate => match &self.key_file {
                Some(key_file) => {
                    let key = read_text(key_file)?;
                    Ok(object(json!({ "certificate": *main, "private_key": *key })))
                }
                None => Ok(main),
            },
            CredentialType::SshKey => match &self.passphrase_file {
                Some(pass_file) => {
                    let passphrase = read_text(pass_file)?;
                    Ok(object(
                        json!({ "private_key": *main, "passphrase": *passphrase }),
                    ))
                }
                None => Ok(main),
            },
            CredentialType::Oauth => oauth_document(&main, self.main_file(ty)),
            _ => Ok(main),
        }
    }
}

/// A JSON object as the value's text.
fn object(value: Value) -> Zeroizing<String> {
    Zeroizing::new(value.to_string())
}

/// A file's text less one final line ending (`-`: standard input).
fn read_text(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let mut text = Zeroizing::new(read_file_or_stdin(&path.to_path_buf())?);
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// An oauth value from a JSON or YAML document: JSON is passed on as written; YAML becomes
/// the JSON object, with plain numbers and booleans taken as the strings they were written as
/// (`client_id: 12345`). `source` names the file in errors.
fn oauth_document(text: &str, source: Option<&Path>) -> Result<Zeroizing<String>, CliError> {
    let from = source.map_or_else(|| "the oauth value".to_owned(), |p| p.display().to_string());
    crate::credtype::oauth_document_to_json(text).map_err(|e| CliError::msg(format!("{from}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(from: Option<&Path>, key: Option<&Path>, pass: Option<&Path>) -> ValueFiles {
        ValueFiles {
            from_file: from.map(Path::to_path_buf),
            key_file: key.map(Path::to_path_buf),
            passphrase_file: pass.map(Path::to_path_buf),
        }
    }

    #[test]
    fn a_certificate_is_its_chain_file_and_key_file_as_one_object() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
        std::fs::write(&chain, "CHAIN\n").unwrap();
        std::fs::write(&key, "KEY\r\n").unwrap();
        let f = files(Some(&chain), Some(&key), None);
        f.check(CredentialType::Certificate).unwrap();
        let main = f.read_main(CredentialType::Certificate).unwrap().unwrap();
        assert_eq!(*main, "CHAIN");
        let value = f.assemble(CredentialType::Certificate, main).unwrap();
        let v: Value = serde_json::from_str(&value).unwrap();
        assert_eq!(v, json!({"certificate": "CHAIN", "private_key": "KEY"}));
        // Without a key file the chain text is the value (one PEM holding both parts).
        let f = files(Some(&chain), None, None);
        let value = f
            .assemble(CredentialType::Certificate, Zeroizing::new("BOTH".into()))
            .unwrap();
        assert_eq!(*value, "BOTH");
    }

    #[test]
    fn an_ssh_key_comes_from_either_file_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let (key, pass) = (dir.path().join("id"), dir.path().join("pass"));
        std::fs::write(&key, "OPENSSH\n").unwrap();
        std::fs::write(&pass, "pass phrase\n").unwrap();
        for f in [
            files(Some(&key), None, Some(&pass)),
            files(None, Some(&key), Some(&pass)),
        ] {
            f.check(CredentialType::SshKey).unwrap();
            let main = f.read_main(CredentialType::SshKey).unwrap().unwrap();
            let value = f.assemble(CredentialType::SshKey, main).unwrap();
            let v: Value = serde_json::from_str(&value).unwrap();
            assert_eq!(
                v,
                json!({"private_key": "OPENSSH", "passphrase": "pass phrase"})
            );
        }
        let err = files(Some(&key), Some(&key), None)
            .check(CredentialType::SshKey)
            .unwrap_err();
        assert!(err.to_string().contains("once"), "{err}");
    }

    #[test]
    fn files_a_type_has_no_use_for_are_refused() {
        let p = Path::new("x");
        let err = files(None, Some(p), None)
            .check(CredentialType::ApiKey)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--key-file is for --type certificate"),
            "{err}"
        );
        let err = files(None, None, Some(p))
            .check(CredentialType::Certificate)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--passphrase-file is for --type ssh_key, not certificate"
        );
        assert!(
            files(None, Some(p), None)
                .read_main(CredentialType::Certificate)
                .unwrap()
                .is_none(),
            "a certificate's key file is not its main part"
        );
    }

    #[test]
    fn an_oauth_yaml_document_becomes_the_json_object() {
        let yaml = "access_token: at-s3cret\nclient_id: 12345\nscopes: [read, write]\nexpires_at: 2027-01-31T12:00:00Z\n";
        let value = oauth_document(yaml, None).unwrap();
        let v: Value = serde_json::from_str(&value).unwrap();
        assert_eq!(
            v,
            json!({
                "access_token": "at-s3cret",
                "client_id": "12345",
                "scopes": ["read", "write"],
                "expires_at": "2027-01-31T12:00:00Z",
            })
        );
        let json_text = r#"{"access_token": "at", "client_id": 5}"#;
        assert_eq!(*oauth_document(json_text, None).unwrap(), json_text);
    }

    #[test]
    fn a_broken_oauth_document_is_refused_without_quoting_it() {
        let path = Path::new("oauth.yaml");
        for text in ["access_token: [s3cret\n", "- s3cret\n", "s3cret"] {
            let err = oauth_document(text, Some(path)).unwrap_err().to_string();
            assert!(err.starts_with("oauth.yaml"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
