//! The store on SQLite and, when AGENT_VAULT_TEST_DATABASE_URL is set, on Postgres.

use std::collections::BTreeSet;

use agent_vault::credtype::CredentialType;
use agent_vault::crypto::{DataKey, KDF_QUEUE_WAIT, KdfGate, TokenKind};
use agent_vault::domain::{Actor, CredentialKey, Email, RequestLogKind, VaultName, VaultRole};
use agent_vault::keys::Keyring;
use agent_vault::store::{
    CredentialRecord, CredentialWrite, GrantChange, PrincipalKind, RequestLogRecord, Store,
    StoreError, VaultRecord, Written,
};
use agent_vault::unseal::{self, UnsealError};
use secrecy::{ExposeSecret, SecretSlice, SecretString};

use crate::support::{TINY_KDF, TestDatabase, assert_proxy_error, for_each_store};

fn key(k: &str) -> CredentialKey {
    CredentialKey::parse(k).unwrap()
}

/// The keyring these tests seal with (any data key will do).
fn ring() -> Keyring {
    Keyring::from_dek(DataKey::from_bytes([7; 32]))
}

/// A new vault `name`.
async fn vault(store: &Store, name: &str) -> VaultRecord {
    store
        .create_vault(&VaultName::parse(name).unwrap(), None)
        .await
        .unwrap()
}

/// A write of `k` holding `value` as an api_key, with no description.
fn write(k: &str, value: &str) -> CredentialWrite {
    CredentialWrite {
        key: key(k),
        ty: CredentialType::ApiKey,
        payload: SecretSlice::from(value.as_bytes().to_vec()),
        description: None,
        metadata: None,
        derived: Default::default(),
        expires_at: None,
        actor: "user test".into(),
        must_exist: false,
    }
}

/// Writes of `keys`, each `value-KEY`.
fn writes(keys: &[&str]) -> Vec<CredentialWrite> {
    keys.iter()
        .map(|k| write(k, &format!("value-{k}")))
        .collect()
}

/// Sets each of `keys` in the vault to `value-KEY`, sealed with `ring`.
async fn set_values(store: &Store, ring: &Keyring, vault_id: &str, keys: &[&str]) {
    store
        .set_credentials(ring, vault_id, &writes(keys), 1000)
        .await
        .unwrap();
}

/// The stored row of credential `k`.
async fn stored(store: &Store, vault_id: &str, k: &str) -> CredentialRecord {
    store.credential(vault_id, &key(k)).await.unwrap().unwrap()
}

/// Opens the active value of a stored credential.
fn open_active(
    ring: &Keyring,
    c: &CredentialRecord,
) -> Result<secrecy::SecretSlice<u8>, agent_vault::crypto::CryptoError> {
    let v = c.active.as_ref().expect("an active version");
    ring.open_version(
        &c.vault_id,
        c.key.as_str(),
        v.version,
        &v.wrapped_key,
        &v.sealed_value,
    )
}

/// (key, version) of each write.
fn versions_of(written: &[Written]) -> Vec<(CredentialKey, i64)> {
    written.iter().map(|w| (w.key.clone(), w.version)).collect()
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
        let ring = ring();
        let vault = vault(&store, "creds").await;
        let mut first = vec![write("A", "one"), write("B", "one")];
        first[0].description = Some("first".into());
        store
            .set_credentials(&ring, &vault.id, &first, 1000)
            .await
            .unwrap();
        let written = store
            .set_credentials(&ring, &vault.id, &[write("A", "two")], 1000)
            .await
            .unwrap();
        assert_eq!(
            versions_of(&written),
            vec![(key("A"), 2)],
            "{backend}: overwrite bumps the version"
        );
        let a = stored(&store, &vault.id, "A").await;
        assert_eq!(
            a.description, "first",
            "{backend}: description kept when not given"
        );
        assert_eq!(open_active(&ring, &a).unwrap().expose_secret(), b"two");
        let v = a.active.as_ref().unwrap();
        assert!(!v.sealed_value.windows(3).any(|w| w == b"two"));
        let versions = store
            .credential_versions(&vault.id, &key("A"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            versions
                .iter()
                .map(|v| (v.version, v.state.as_str()))
                .collect::<Vec<_>>(),
            [(2, "active"), (1, "rotated")],
            "{backend}"
        );
        assert_ne!(
            versions[0].wrapped_key, versions[1].wrapped_key,
            "{backend}: each version has its own data key"
        );

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
        let left: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) AS n FROM credential_versions")
                .fetch_one(store.pool())
                .await
                .unwrap(),
            "n",
        );
        assert_eq!(
            left, 0,
            "{backend}: every version (and data key) went with its credential"
        );
    })
    .await;
}

/// A vault holding more credentials than a lowered cap allows could not rotate any of them: the
/// cap counted the vault after the write, so an overwrite failed too. Growing past the cap is
/// refused; overwriting a held key is not.
#[tokio::test]
async fn resources_vault_over_a_lowered_cap_can_still_rotate() {
    for_each_store(|store, backend| async move {
        let ring = ring();
        let vault = vault(&store, "capped").await;
        let set = async |keys: &[&str], cap| {
            store
                .set_credentials(&ring, &vault.id, &writes(keys), cap)
                .await
        };
        // Cap 3, a vault with 3: a fourth is refused.
        set(&["A", "B", "C"], 3).await.unwrap();
        let err = set(&["D"], 3).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LimitReached(_)),
            "{backend}: {err:?}"
        );
        // Filled under a cap of 4, then the cap lowered to 3: overwriting is fine, growing is not.
        set(&["D"], 4).await.unwrap();
        let written = set(&["A"], 3).await.unwrap();
        assert_eq!(
            versions_of(&written),
            vec![(key("A"), 2)],
            "{backend}: rotation over the cap"
        );
        let err = set(&["A", "E"], 3).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LimitReached(_)),
            "{backend}: {err:?}"
        );
        assert_eq!(
            store.list_credentials(&vault.id).await.unwrap().len(),
            4,
            "{backend}: nothing of the refused write was stored"
        );
    })
    .await;
}

#[tokio::test]
async fn swapped_or_edited_ciphertext_fails_closed() {
    for_each_store(|store, backend| async move {
        let ring = ring();
        let vault = vault(&store, "swap").await;
        set_values(&store, &ring, &vault.id, &["A", "B"]).await;
        // Swap A's and B's ciphertexts (and their data keys) directly in the database.
        let a = stored(&store, &vault.id, "A").await;
        let b = stored(&store, &vault.id, "B").await;
        let bv = b.active.clone().unwrap();
        sqlx::query("UPDATE credential_versions SET sealed_value = $1, wrapped_key = $2 WHERE vault_id = $3 AND key = 'A'")
            .bind(bv.sealed_value.clone())
            .bind(bv.wrapped_key.bytes.clone())
            .bind(&vault.id)
            .execute(store.pool())
            .await
            .unwrap();
        let swapped = stored(&store, &vault.id, "A").await;
        assert!(open_active(&ring, &swapped).is_err(), "{backend}");
        // An edited value, or the right value under another version number, fails too.
        let av = a.active.clone().unwrap();
        let mut edited = av.sealed_value.clone();
        let last = edited.len() - 1;
        edited[last] ^= 0x01;
        assert!(
            ring.open_version(&vault.id, "A", av.version, &av.wrapped_key, &edited)
                .is_err()
        );
        assert!(
            ring.open_version(&vault.id, "A", av.version + 1, &av.wrapped_key, &av.sealed_value)
                .is_err()
        );
    })
    .await;
}

/// A bit flipped in SQL (on SQLite this also turns the column into non-UTF-8 TEXT) must fail that
/// one credential's AEAD check, not every listing of the vault.
#[tokio::test]
async fn one_flipped_bit_spoils_only_that_credential() {
    for_each_store(|store, backend| async move {
        let ring = ring();
        let vault = vault(&store, "bits").await;
        set_values(&store, &ring, &vault.id, &["BAD", "GOOD"]).await;
        crate::support::fixtures::flip_one_bit(&store, "BAD").await;
        let rows = store.list_credentials(&vault.id).await.unwrap();
        assert_eq!(rows.len(), 2, "{backend}: every row is still listed");
        for row in &rows {
            let opened = open_active(&ring, row);
            match row.key.as_str() {
                "BAD" => assert!(opened.is_err(), "{backend}"),
                _ => assert_eq!(opened.unwrap().expose_secret(), b"value-GOOD", "{backend}"),
            }
        }
        // A row whose type was edited fails its MAC: it is left out of the listing, not the
        // whole vault.
        sqlx::query("UPDATE credentials SET type = 'generic' WHERE vault_id = $1 AND key = 'BAD'")
            .bind(&vault.id)
            .execute(store.pool())
            .await
            .unwrap();
        let rows = store.list_credentials(&vault.id).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["GOOD"],
            "{backend}"
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
        assert!(store.claim_setup_token("abc", b"sealed-abc").await.unwrap());
        assert!(
            !store.claim_setup_token("def", b"sealed-def").await.unwrap(),
            "{backend}: one setup token per database"
        );
        assert!(
            !store
                .replace_setup_token("def", "ghi", b"sealed-ghi")
                .await
                .unwrap(),
            "{backend}: only the outstanding token is replaced"
        );
        let stored = store.setup_token().await.unwrap().unwrap();
        assert_eq!(
            (stored.hash_hex.as_str(), stored.sealed.as_deref()),
            ("abc", Some(&b"sealed-abc"[..])),
            "{backend}"
        );
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
        assert!(
            store.setup_token().await.unwrap().is_none(),
            "{backend}: the burn removes the sealed copy too"
        );
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
        let (ring, first) = unseal::unseal_or_init(
            &store,
            SecretString::from("first password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert!(first);
        let (again, first) = unseal::unseal_or_init(
            &store,
            SecretString::from("first password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert!(!first);
        assert_eq!(ring.key_fingerprint(), again.key_fingerprint(), "{backend}");
        let wrong = unseal::unseal_or_init(
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
        unseal::change_master_password(
            &store,
            SecretString::from("first password"),
            SecretString::from("second password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert!(
            unseal::unseal_or_init(
                &store,
                SecretString::from("first password"),
                TINY_KDF,
                &gate
            )
            .await
            .is_err()
        );
        let (changed, _) = unseal::unseal_or_init(
            &store,
            SecretString::from("second password"),
            TINY_KDF,
            &gate,
        )
        .await
        .unwrap();
        assert_eq!(
            changed.key_fingerprint(),
            ring.key_fingerprint(),
            "the DEK itself is unchanged"
        );
        let weak = unseal::change_master_password(
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
        let ring = ring();
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
            parent_id: None,
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
            key_version: 1,
        };
        assert!(store.insert_master_key_if_absent(&record).await.unwrap());
        let (ring, first) = unseal::unseal_or_init(&store, weak, TINY_KDF, &gate)
            .await
            .unwrap();
        assert!(!first, "{backend}");
        assert_eq!(
            ring.key_fingerprint(),
            Keyring::from_dek(dek.clone()).key_fingerprint(),
            "{backend}"
        );
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
        unseal::unseal_or_init(
            s.as_ref().unwrap(),
            SecretString::from("same password"),
            TINY_KDF,
            &gate,
        )
    });
    let rings = futures_util::future::join_all(unseals).await;
    let first = rings[0].as_ref().unwrap().0.key_fingerprint();
    for r in &rings {
        assert_eq!(r.as_ref().unwrap().0.key_fingerprint(), first);
    }
    for s in stores.into_iter().flatten() {
        s.close().await;
    }
}

#[tokio::test]
async fn request_logs_are_written_in_multi_row_batches() {
    for_each_store(|store, backend| async move {
        let vault = vault(&store, "logs").await;
        let row = |i: usize, vault_id: &str| agent_vault::store::RequestLogRow {
            vault_id: vault_id.to_owned(),
            actor: Actor::Agent(format!("agent-{i}")),
            kind: RequestLogKind::Request,
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

#[tokio::test]
async fn authority_rows_from_before_the_upgrade_are_bound_once_and_never_again() {
    for_each_store(|store, backend| async move {
        let vault = vault(&store, "old").await;
        // Rows as a version without MACs wrote them; migration 0003 marked the backfill pending.
        sqlx::query("INSERT INTO agents (id, name, created_by, created_at, updated_at) VALUES ('a-old', 'old-agent', NULL, 0, 0)")
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO vault_grants (vault_id, principal_kind, principal_id, role, created_at) VALUES ($1, 'agent', 'a-old', 'proxy', 0)")
            .bind(&vault.id)
            .execute(store.pool())
            .await
            .unwrap();
        assert!(store.agent_by_id("a-old").await.unwrap().is_none(), "{backend}: unbound rows are not trusted");
        assert_eq!(store.backfill_authority_macs().await.unwrap(), 2, "{backend}");
        assert!(store.agent_by_id("a-old").await.unwrap().is_some(), "{backend}");
        assert_eq!(
            store
                .role_in_vault(&vault.id, PrincipalKind::Agent, "a-old")
                .await
                .unwrap(),
            Some(VaultRole::Proxy)
        );
        // Done once: a row written without a MAC later (by a database writer) stays refused,
        // at this start and every later one.
        sqlx::query("INSERT INTO agents (id, name, created_by, created_at, updated_at) VALUES ('a-new', 'new-agent', NULL, 0, 0)")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(store.backfill_authority_macs().await.unwrap(), 0, "{backend}");
        assert!(store.agent_by_id("a-new").await.unwrap().is_none(), "{backend}");
        sqlx::query("UPDATE vault_grants SET mac = NULL WHERE principal_id = 'a-old'")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(store.backfill_authority_macs().await.unwrap(), 0, "{backend}");
        assert_eq!(
            store
                .role_in_vault(&vault.id, PrincipalKind::Agent, "a-old")
                .await
                .unwrap(),
            None,
            "{backend}: a MAC wiped after the upgrade is a failed MAC"
        );
    })
    .await;
}

#[tokio::test]
async fn two_last_human_admins_stepping_down_at_once_leave_one() {
    for_each_store(|store, backend| async move {
        let vault = vault(&store, "pair").await;
        for user in ["u-a", "u-b"] {
            store
                .grant(&vault.id, PrincipalKind::User, user, VaultRole::Admin)
                .await
                .unwrap();
        }
        store
            .grant(&vault.id, PrincipalKind::Agent, "bot", VaultRole::Admin)
            .await
            .unwrap();
        let step_down = |user: &'static str| {
            let store = store.clone();
            let vault_id = vault.id.clone();
            async move {
                store
                    .change_grant_keeping_a_human_admin(&vault_id, PrincipalKind::User, user, None)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = tokio::join!(step_down("u-a"), step_down("u-b"));
        let mut outcomes = vec![a, b];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            outcomes,
            vec![GrantChange::Done, GrantChange::LastHumanAdmin],
            "{backend}"
        );
        let humans = store
            .list_members(&vault.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.kind == PrincipalKind::User && m.role == VaultRole::Admin)
            .count();
        assert_eq!(
            humans, 1,
            "{backend}: the agent admin does not replace a human"
        );
    })
    .await;
}

/// A database from before web sessions had their own kind (migrations up to 0003) keeps its
/// tokens through 0004, which rebuilds the SQLite table and replaces the Postgres constraint,
/// and then accepts the `web` kind and nothing unknown.
#[tokio::test]
async fn web_session_migration_keeps_existing_tokens() {
    sqlx::any::install_default_drivers();
    let run = |url: String, tree: &'static str| async move {
        let mut old = sqlx::migrate::Migrator::new(std::path::Path::new(tree))
            .await
            .unwrap();
        old.migrations = old
            .migrations
            .iter()
            .filter(|m| m.version < 4)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        old.run(&pool).await.unwrap();
        sqlx::query("INSERT INTO users (id, email, password_hash, role, created_at, updated_at) VALUES ('u1', 'a@example.test', 'x', 'owner', 1, 1)")
            .execute(&pool)
            .await
            .unwrap();
        for (id, kind, hash) in [
            ("t1", "session", vec![1u8; 32]),
            ("t2", "agent", vec![2u8; 32]),
        ] {
            sqlx::query("INSERT INTO tokens (id, hash, kind, user_id, label, expires_at, created_at) VALUES ($1, $2, $3, 'u1', 'old', 99, 1)")
                .bind(id)
                .bind(hash)
                .bind(kind)
                .execute(&pool)
                .await
                .unwrap();
        }
        // A web login from before 0004: an ordinary session that works as an API bearer.
        sqlx::query("INSERT INTO tokens (id, hash, kind, user_id, label, expires_at, created_at) VALUES ('t4', $1, 'session', 'u1', 'web', 99, 1)")
            .bind(vec![4u8; 32])
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    };
    let check = |store: Store, backend: &'static str| async move {
        // Unsealed as the server does it: the first unseal after 0003 binds the old rows.
        let store = store.with_authority_macs(ring().authority_macs());
        assert_eq!(
            store.backfill_authority_macs().await.unwrap(),
            4,
            "{backend}"
        );
        let t1 = store
            .token_by_hash(&agent_vault::crypto::TokenHash([1; 32]))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{backend}: the old session survived"));
        assert_eq!(
            (t1.id.as_str(), t1.kind, t1.label.as_str(), t1.expires_at),
            (
                "t1",
                agent_vault::store::TokenStoreKind::Session,
                "old",
                Some(99)
            ),
            "{backend}"
        );
        let old_web = store
            .token_by_hash(&agent_vault::crypto::TokenHash([4; 32]))
            .await
            .unwrap()
            .unwrap();
        assert!(
            old_web.revoked_at.is_some(),
            "{backend}: web logins from before 0004 are revoked, not left as API bearers"
        );
        assert!(t1.revoked_at.is_none(), "{backend}: CLI sessions are kept");
        let web = agent_vault::store::TokenRecord {
            id: "t3".into(),
            hash: agent_vault::crypto::TokenHash([3; 32]),
            kind: agent_vault::store::TokenStoreKind::Web,
            user_id: Some("u1".into()),
            agent_id: None,
            vault_id: None,
            vault_role: None,
            label: "web".into(),
            expires_at: None,
            revoked_at: None,
            created_at: 2,
            parent_id: None,
        };
        store.insert_token(&web).await.unwrap();
        let stored = store
            .token_by_hash(&agent_vault::crypto::TokenHash([3; 32]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.kind,
            agent_vault::store::TokenStoreKind::Web,
            "{backend}"
        );
        let bogus = sqlx::query("UPDATE tokens SET kind = 'bogus' WHERE id = 't1'")
            .execute(store.pool())
            .await;
        assert!(bogus.is_err(), "{backend}: the constraint still holds");
        // Deleting the user still cascades to its tokens (the rebuilt table keeps its keys).
        sqlx::query("DELETE FROM users WHERE id = 'u1'")
            .execute(store.pool())
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE user_id IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(left, 0, "{backend}");
    };

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent-vault.db");
    run(
        format!("sqlite://{}?mode=rwc", db.display()),
        concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"),
    )
    .await;
    let store = Store::open(dir.path(), None).await.unwrap();
    check(store.clone(), "sqlite").await;
    store.close().await;
    if let Some(pg) = TestDatabase::create().await {
        run(
            pg.url.clone(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"),
        )
        .await;
        let store = Store::open(dir.path(), Some(&pg.url)).await.unwrap();
        check(store.clone(), "postgres").await;
        store.close().await;
    }
}

/// A service stored before substitutions named exact places (`in: [header, body]`, its MAC
/// valid) loads with that substitution disabled: the service still binds its host and attaches
/// its auth, the placeholder is refused wherever it appears (403 `placeholder_refused`, nothing
/// sent), and the loose substitution never runs. SQLite always, Postgres when configured.
#[tokio::test]
async fn stored_loose_substitutions_load_disabled() {
    use crate::support::{TestOptions, spawn_app_with};
    const SECRET: &str = "sk_legacy_0123456789abcdef";
    let mut backends = vec![None];
    if let Some(db) = TestDatabase::create().await {
        backends.push(Some(db));
    }
    for db in &backends {
        let url = db.as_ref().map(|d| d.url.clone());
        let app = spawn_app_with(TestOptions {
            postgres: url.clone(),
            ..TestOptions::default()
        })
        .await;
        let token = app
            .service_vault(
                "legacy",
                &[("KEY", SECRET), ("AUTH", "auth-value")],
                "- name: notes\n  host: notes.example.test\n  auth: {type: bearer, token: AUTH}\n",
            )
            .await;
        let agent = app.agent(&token, "legacy").await;
        // The row as an older version wrote it, with the MAC that version computed.
        let vault_id = app
            .proxy_state
            .snapshots
            .get("legacy")
            .unwrap()
            .vault_id
            .clone();
        let spec = serde_json::json!({
            "name": "notes", "host": "notes.example.test",
            "auth": { "type": "bearer", "token": "AUTH" },
            "substitutions": [{ "placeholder": "__LEGACY_KEY__", "key": "KEY", "in": ["header", "body"] }]
        })
        .to_string();
        let mac = app
            .proxy_state
            .keyring
            .service_mac(&vault_id, "notes", &spec);
        let store = app.open_store().await;
        sqlx::query(
            "UPDATE services SET spec = $1, mac = $2 WHERE vault_id = $3 AND name = 'notes'",
        )
        .bind(spec)
        .bind(mac)
        .bind(vault_id)
        .execute(store.pool())
        .await
        .unwrap();
        app.set_policy("legacy", "tunnel").await; // any write rebuilds the snapshot from the rows
        let before = app.upstream.count();
        let resp = agent
            .get("https://notes.example.test/x")
            .header("x-api-key", "__LEGACY_KEY__")
            .send()
            .await
            .unwrap();
        assert_proxy_error(&resp, 403, "placeholder_refused");
        let body = resp.text().await.unwrap();
        assert!(body.contains("old form"), "{body}");
        assert_eq!(app.upstream.count(), before, "nothing was sent");
        // The rest of the service still binds its host.
        let resp = agent
            .post("https://notes.example.test/notes")
            .json(&serde_json::json!({ "text": "__LEGACY_KEY__" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = app.upstream.last();
        assert_eq!(
            seen.header("authorization").as_deref(),
            Some("Bearer auth-value")
        );
        assert!(
            app.upstream
                .requests()
                .iter()
                .all(|r| !format!("{r:?}").contains(SECRET)),
            "the loose substitution never ran"
        );
        // Listing shows the stored definition as it is, and setting it again is refused with
        // directions.
        let listed = app.ok("GET", "/v1/vaults/legacy/services", None).await;
        assert_eq!(listed["services"][0]["substitutions"][0]["in"][0], "header");
        let (status, err) = app
            .call("PUT", "/v1/vaults/legacy/services", Some(listed))
            .await;
        assert_eq!(status, 400, "{err}");
        store.close().await;
        app.stop().await;
    }
}

/// Master-key rotation's re-binding: every authority row whose MAC verifies under the old keys
/// carries one under the new keys afterwards, and no longer under the old; an edited row is left
/// failing rather than laundered with a fresh MAC.
#[tokio::test]
async fn authority_rows_are_rebound_from_old_keys_to_new_keys() {
    for_each_store(|store, backend| async move {
        use agent_vault::keys::{AuthorityRow, MacField};
        use agent_vault::store::{AgentRecord, InviteRecord, TokenRecord, TokenStoreKind};
        let old = Keyring::from_dek(DataKey::from_bytes([42; 32])).authority_macs();
        let new = Keyring::from_dek(DataKey::from_bytes([43; 32])).authority_macs();
        let vault = vault(&store, "rekey").await;
        let token = |id: &str, agent: &str, hash: u8| TokenRecord {
            id: id.into(),
            hash: agent_vault::crypto::TokenHash([hash; 32]),
            kind: TokenStoreKind::Agent,
            user_id: None,
            agent_id: Some(agent.into()),
            vault_id: None,
            vault_role: None,
            label: String::new(),
            expires_at: Some(i64::MAX),
            revoked_at: None,
            created_at: 0,
            parent_id: None,
        };
        for (id, name, hash) in [("a-kept", "kept-agent", 1), ("a-edited", "edited-agent", 2)] {
            let agent = AgentRecord {
                id: id.into(),
                name: agent_vault::domain::AgentName::parse(name).unwrap(),
                created_by: None,
                created_at: 0,
                integrity_ok: true,
            };
            let grants = [(vault.id.clone(), VaultRole::Proxy)];
            store
                .create_agent(&agent, &grants, &token(&format!("t-{id}"), id, hash))
                .await
                .unwrap();
        }
        store
            .create_invite(&InviteRecord {
                id: "i1".into(),
                token_hash: agent_vault::crypto::TokenHash([9; 32]),
                email: Email::parse("rekey@example.com").unwrap(),
                role: agent_vault::domain::InstanceRole::Member,
                vault_grants: vec![],
                created_by: "u1".into(),
                expires_at: i64::MAX,
                accepted_at: None,
                revoked_at: None,
                created_at: 0,
                integrity_ok: true,
            })
            .await
            .unwrap();
        let user_mac = old.mac(
            AuthorityRow::User,
            &[
                MacField::Text("u1"),
                MacField::Text("u1@example.com"),
                MacField::Text("owner"),
                MacField::Text("phc"),
            ],
        );
        sqlx::query("INSERT INTO users (id, email, password_hash, role, created_at, updated_at, mac) VALUES ('u1', 'u1@example.com', 'phc', 'owner', 0, 0, $1)")
            .bind(user_mac)
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE agents SET name = 'renamed-agent' WHERE id = 'a-edited'")
            .execute(store.pool())
            .await
            .unwrap();

        let mut tx = store.begin_write().await.unwrap();
        let done = store
            .rebind_authority_macs(&mut tx, &old, &new)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // 2 grants, 2 tokens, 1 intact agent, 1 invite, 1 user; the edited agent refused.
        assert_eq!(
            done,
            agent_vault::store::Rebound {
                bound: 7,
                refused: 1
            },
            "{backend}"
        );
        let rekeyed = store.with_authority_macs(new);
        assert!(rekeyed.agent_by_id("a-kept").await.unwrap().is_some(), "{backend}");
        assert!(rekeyed.agent_by_id("a-edited").await.unwrap().is_none(), "{backend}");
        assert_eq!(
            rekeyed
                .role_in_vault(&vault.id, PrincipalKind::Agent, "a-kept")
                .await
                .unwrap(),
            Some(VaultRole::Proxy),
            "{backend}"
        );
        assert!(rekeyed.token_by_id("t-a-kept").await.unwrap().is_some(), "{backend}");
        assert!(rekeyed.user_by_id("u1").await.unwrap().is_some(), "{backend}");
        assert!(
            rekeyed
                .invite_by_hash(&agent_vault::crypto::TokenHash([9; 32]))
                .await
                .unwrap()
                .is_some(),
            "{backend}"
        );
        // The old keys bind nothing any more.
        assert!(store.agent_by_id("a-kept").await.unwrap().is_none(), "{backend}");
        assert!(store.token_by_id("t-a-kept").await.unwrap().is_none(), "{backend}");
    })
    .await;
}
