//! The store on SQLite and, when AGENT_VAULT_TEST_DATABASE_URL is set, on Postgres.

use std::collections::BTreeSet;

use agent_vault::crypto::{DataKey, KDF_QUEUE_WAIT, KdfGate, TokenKind};
use agent_vault::domain::{CredentialKey, Email, VaultName, VaultRole};
use agent_vault::keys::{self, Keyring, UnsealError};
use agent_vault::store::{CredentialWrite, PrincipalKind, RequestLogRecord, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};

use crate::support::{TINY_KDF, TestDatabase, for_each_store};

fn key(k: &str) -> CredentialKey {
    CredentialKey::parse(k).unwrap()
}

#[test]
fn migration_trees_have_the_same_versions() {
    let versions = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .split('_')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let sqlite = versions(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    let postgres = versions(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"));
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, postgres);
}

#[tokio::test]
async fn credentials_round_trip_bump_versions_and_delete_atomically() {
    for_each_store(|store, backend| async move {
        let ring = Keyring::from_dek(DataKey::from_bytes([5; 32]));
        let vault = store
            .create_vault(&VaultName::parse("creds").unwrap(), None)
            .await
            .unwrap();
        let writes = vec![
            CredentialWrite {
                key: key("A"),
                description: Some("first".into()),
            },
            CredentialWrite {
                key: key("B"),
                description: None,
            },
        ];
        let seal = |value: &'static str| {
            let ring = ring.clone();
            let id = vault.id.clone();
            move |k: &CredentialKey, v: i64| {
                ring.seal_credential(&id, k.as_str(), v, value.as_bytes())
            }
        };
        store
            .set_credentials(&vault.id, &writes, seal("one"))
            .await
            .unwrap();
        let written = store
            .set_credentials(&vault.id, &writes[..1], seal("two"))
            .await
            .unwrap();
        assert_eq!(
            written,
            vec![(key("A"), 2)],
            "{backend}: overwrite bumps the version"
        );
        let a = store
            .credential(&vault.id, &key("A"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            a.description, "first",
            "{backend}: description kept when not given"
        );
        let plain = ring
            .open_credential(&vault.id, "A", a.version, &a.sealed_value)
            .unwrap();
        assert_eq!(plain.expose_secret(), b"two");
        assert!(!a.sealed_value.windows(3).any(|w| w == b"two"));

        let missing = store
            .delete_credentials(&vault.id, &[key("A"), key("NOPE")])
            .await
            .unwrap();
        assert_eq!(missing, vec![key("NOPE")]);
        assert_eq!(
            store.list_credentials(&vault.id).await.unwrap().len(),
            2,
            "{backend}: nothing deleted"
        );
        assert!(
            store
                .delete_credentials(&vault.id, &[key("A"), key("B")])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.list_credentials(&vault.id).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn swapped_or_edited_ciphertext_fails_closed() {
    for_each_store(|store, backend| async move {
        let ring = Keyring::from_dek(DataKey::from_bytes([6; 32]));
        let vault = store
            .create_vault(&VaultName::parse("swap").unwrap(), None)
            .await
            .unwrap();
        let id = vault.id.clone();
        let writes = vec![
            CredentialWrite {
                key: key("A"),
                description: None,
            },
            CredentialWrite {
                key: key("B"),
                description: None,
            },
        ];
        store
            .set_credentials(&vault.id, &writes, |k, v| {
                ring.seal_credential(&id, k.as_str(), v, format!("value-{k}").as_bytes())
            })
            .await
            .unwrap();
        // Swap A's and B's ciphertexts directly in the database.
        let a = store
            .credential(&vault.id, &key("A"))
            .await
            .unwrap()
            .unwrap();
        let b = store
            .credential(&vault.id, &key("B"))
            .await
            .unwrap()
            .unwrap();
        sqlx::query("UPDATE credentials SET sealed_value = $1 WHERE vault_id = $2 AND key = 'A'")
            .bind(b.sealed_value.clone())
            .bind(&vault.id)
            .execute(store.pool())
            .await
            .unwrap();
        let swapped = store
            .credential(&vault.id, &key("A"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            ring.open_credential(&vault.id, "A", swapped.version, &swapped.sealed_value)
                .is_err(),
            "{backend}"
        );
        // Bumping the version without re-sealing fails too.
        let mut edited = a.sealed_value.clone();
        let last = edited.len() - 1;
        edited[last] ^= 0x01;
        assert!(
            ring.open_credential(&vault.id, "A", a.version, &edited)
                .is_err()
        );
        assert!(
            ring.open_credential(&vault.id, "A", a.version + 1, &a.sealed_value)
                .is_err()
        );
    })
    .await;
}

#[tokio::test]
async fn duplicate_names_are_conflicts_on_every_backend() {
    for_each_store(|store, backend| async move {
        let name = VaultName::parse("dup").unwrap();
        store.create_vault(&name, None).await.unwrap();
        assert!(
            matches!(
                store.create_vault(&name, None).await,
                Err(StoreError::Conflict("vault"))
            ),
            "{backend}"
        );
    })
    .await;
}

#[tokio::test]
async fn setup_token_is_burnt_by_the_first_owner() {
    for_each_store(|store, backend| async move {
        store.set_setup_token_hash("abc").await.unwrap();
        let email = Email::parse("a@example.com").unwrap();
        let default = VaultName::parse("default").unwrap();
        assert!(
            store
                .register_first_owner("wrong", "u0", &email, "phc", ("v0", &default))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .register_first_owner("abc", "u1", &email, "phc", ("v1", &default))
                .await
                .unwrap()
                .is_some(),
            "{backend}"
        );
        let other = Email::parse("b@example.com").unwrap();
        assert!(
            store
                .register_first_owner("abc", "u2", &other, "phc", ("v2", &default))
                .await
                .unwrap()
                .is_none(),
            "{backend}: reuse refused"
        );
        assert_eq!(store.count_users().await.unwrap(), 1);
        let vault = store.vault_by_name(&default).await.unwrap().unwrap();
        assert_eq!(
            store
                .role_in_vault(&vault.id, PrincipalKind::User, "u1")
                .await
                .unwrap(),
            Some(VaultRole::Admin)
        );
    })
    .await;
}

#[tokio::test]
async fn unsealing_with_the_wrong_password_fails_and_changing_it_works() {
    for_each_store(|store, backend| async move {
        let gate = KdfGate::new(1 << 20, KDF_QUEUE_WAIT);
        let (ring, first) = keys::unseal_or_init(
            &store,
            SecretString::from("first password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert!(first);
        let (again, first) = keys::unseal_or_init(
            &store,
            SecretString::from("first password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert!(!first);
        assert_eq!(ring.dek().expose(), again.dek().expose(), "{backend}");
        let wrong = keys::unseal_or_init(
            &store,
            SecretString::from("not the password"),
            TINY_KDF,
            &gate,
        )
        .await;
        assert!(
            matches!(wrong, Err(UnsealError::WrongPassword)),
            "{backend}"
        );
        keys::change_master_password(
            &store,
            SecretString::from("first password"),
            SecretString::from("second password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert!(
            keys::unseal_or_init(
                &store,
                SecretString::from("first password"),
                TINY_KDF,
                &gate
            )
            .await
            .is_err()
        );
        let (changed, _) = keys::unseal_or_init(
            &store,
            SecretString::from("second password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert_eq!(
            changed.dek().expose(),
            ring.dek().expose(),
            "the DEK itself is unchanged"
        );
        let weak = keys::change_master_password(
            &store,
            SecretString::from("second password"),
            SecretString::from("short"),
            TINY_KDF,
            &gate,
        )
        .await;
        assert!(matches!(weak, Err(UnsealError::WeakPassword(_))));
    })
    .await;
}

#[tokio::test]
async fn tokens_are_stored_only_as_keyed_hashes() {
    for_each_store(|store, backend| async move {
        let ring = Keyring::from_dek(DataKey::from_bytes([7; 32]));
        let raw = TokenKind::Agent.generate().unwrap();
        let record = agent_vault::store::TokenRecord {
            id: "t1".into(),
            hash: ring.token_hasher().hash(&raw),
            kind: agent_vault::store::TokenStoreKind::Scoped,
            user_id: None,
            agent_id: None,
            vault_id: None,
            vault_role: None,
            label: String::new(),
            expires_at: None,
            revoked_at: None,
            created_at: 0,
        };
        store.insert_token(&record).await.unwrap();
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM tokens")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![ring.token_hasher().hash(&raw).0.to_vec()],
            "{backend}: only the keyed hash is stored"
        );
        assert!(
            store
                .token_by_hash(&ring.token_hasher().hash(&raw))
                .await
                .unwrap()
                .is_some()
        );
        let other = TokenKind::Agent.generate().unwrap();
        assert!(
            store
                .token_by_hash(&ring.token_hasher().hash(&other))
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

/// A master password set before the 12-character floor keeps unsealing (with a warning).
#[tokio::test]
async fn an_existing_weak_master_password_still_unseals() {
    for_each_store(|store, backend| async move {
        let gate = KdfGate::new(1 << 20, KDF_QUEUE_WAIT);
        let weak = SecretString::from("password");
        let dek = DataKey::generate().unwrap();
        let salt = [9u8; 16];
        let kek = gate.derive_key(&weak, &salt, TINY_KDF).await.unwrap();
        let record = agent_vault::store::MasterKeyRecord {
            kdf_salt: salt.to_vec(),
            kdf: TINY_KDF,
            wrapped_dek: agent_vault::crypto::seal(
                &kek,
                &agent_vault::crypto::Aad::wrapped_dek(),
                dek.expose(),
            )
            .unwrap(),
        };
        assert!(store.insert_master_key_if_absent(&record).await.unwrap());
        let (ring, first) = keys::unseal_or_init(&store, weak, TINY_KDF, &gate)
            .await
            .unwrap();
        assert!(!first, "{backend}");
        assert_eq!(ring.dek().expose(), dek.expose(), "{backend}");
    })
    .await;
}

#[tokio::test]
async fn postgres_instances_starting_together_migrate_once() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let opens = (0..4).map(|_| Store::open(dir.path(), Some(&db.url)));
    let stores = futures_util::future::join_all(opens).await;
    for s in &stores {
        assert!(s.is_ok(), "{:?}", s.as_ref().err());
    }
    // And all of them unseal to the same key.
    let gate = KdfGate::new(1 << 20, KDF_QUEUE_WAIT);
    let unseals = stores.iter().map(|s| {
        keys::unseal_or_init(
            s.as_ref().unwrap(),
            SecretString::from("same password"),
            TINY_KDF,
            &gate,
        )
    });
    let rings = futures_util::future::join_all(unseals).await;
    let first = rings[0].as_ref().unwrap().0.dek().expose().to_owned();
    for r in &rings {
        assert_eq!(r.as_ref().unwrap().0.dek().expose(), &first);
    }
    for s in stores.into_iter().flatten() {
        s.close().await;
    }
}

#[tokio::test]
async fn request_logs_are_written_in_multi_row_batches() {
    for_each_store(|store, backend| async move {
        let vault = store
            .create_vault(&VaultName::parse("logs").unwrap(), None)
            .await
            .unwrap();
        let row = |i: usize, vault_id: &str| agent_vault::store::RequestLogRow {
            vault_id: vault_id.to_owned(),
            actor_kind: "agent",
            actor_id: format!("agent-{i}"),
            kind: "request",
            method: "GET".into(),
            host: "api.example.test:443".into(),
            path: format!("/v1/items/{i}"),
            service: i.is_multiple_of(2).then(|| "stripe".to_owned()),
            credential_keys: if i.is_multiple_of(2) {
                vec!["STRIPE_KEY".into()]
            } else {
                vec![]
            },
            status: 200,
            bytes_in: i as u64,
            bytes_out: u64::MAX,
            latency_ms: 3,
            error_code: i.is_multiple_of(3).then_some("upstream_timeout"),
            created_at: 1_700_000_000_000 + i as i64,
        };
        // More rows than one statement carries, and a row for a vault that no longer exists.
        let per_statement = agent_vault::store::REQUEST_LOG_ROWS_PER_STATEMENT;
        let mut rows: Vec<_> = (0..2 * per_statement + 50)
            .map(|i| row(i, &vault.id))
            .collect();
        rows.insert(120, row(999, "deleted-vault"));
        store.insert_request_logs(&rows).await.unwrap();
        let mut listed = Vec::new();
        loop {
            let page = store
                .list_request_logs(
                    &vault.id,
                    &agent_vault::store::RequestLogFilter {
                        after: Some(listed.last().map_or(0, |r: &RequestLogRecord| r.id)),
                        before: None,
                        limit: 1000,
                    },
                )
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            listed.extend(page);
        }
        assert_eq!(listed.len(), 2 * per_statement + 50, "{backend}");
        for (i, r) in listed.iter().enumerate() {
            assert_eq!(r.path, format!("/v1/items/{i}"), "{backend}: order kept");
            assert_eq!(r.actor_id, format!("agent-{i}"));
            assert_eq!(r.service.is_some(), i % 2 == 0);
            assert_eq!(r.credential_keys.len(), usize::from(i.is_multiple_of(2)));
            assert_eq!(
                r.error_code.as_deref(),
                i.is_multiple_of(3).then_some("upstream_timeout")
            );
            assert_eq!(r.bytes_in, i as i64);
            assert_eq!(r.bytes_out, i64::MAX);
        }
    })
    .await;
}
