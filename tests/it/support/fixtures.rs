//! Shared vault fixtures: a vault with a service of every auth type, and a database writer's
//! tampering with a sealed credential.

use serde_json::json;

use super::TestApp;

/// Services of every auth type, a path- and method-scoped rule, and one whose credential is
/// deleted after the fact.
pub(crate) const SERVICES: &str = r#"
- name: bearer
  host: bearer.example.test
  auth: {type: bearer, token: TOKEN}
- name: basic
  host: basic.example.test
  auth: {type: basic, username: USER, password: PASS}
- name: apikey
  host: apikey.example.test
  auth: {type: api-key, key: TOKEN, header: X-Api-Key, prefix: "Key "}
- name: custom
  host: custom.example.test
  auth: {type: custom, headers: {X-Auth: "id={{ USER }} sig={{ TOKEN }}"}}
- name: open
  host: open.example.test
  auth: {type: passthrough}
- name: scoped
  host: scoped.example.test/v1/*
  methods: [GET]
  auth: {type: bearer, token: TOKEN}
- name: ghost
  host: ghost.example.test
  auth: {type: bearer, token: GONE}
"#;

/// Creates `vault` with [`SERVICES`] and their credentials (`GONE` deleted) and returns a proxy
/// token for it.
pub(crate) async fn vault_with_services(app: &TestApp, vault: &str) -> String {
    app.create_vault(vault).await;
    app.set_credentials(
        vault,
        &[
            ("TOKEN", "tok-123"),
            ("USER", "alice"),
            ("PASS", "pw-456"),
            ("GONE", "soon"),
        ],
    )
    .await;
    app.set_services_yaml(vault, SERVICES).await;
    app.ok(
        "DELETE",
        &format!("/v1/vaults/{vault}/credentials"),
        Some(json!({ "keys": ["GONE"] })),
    )
    .await;
    app.proxy_token(vault).await.0
}

/// Flips one bit of one credential's active sealed value in SQL, the way a database writer would:
/// on SQLite with `||` (which also turns the column into TEXT), on Postgres with `set_bit`.
pub(crate) async fn flip_one_bit(store: &agent_vault::store::Store, key: &str) {
    let done = match store.backend() {
        agent_vault::store::Backend::Sqlite => {
            let row = sqlx::query("SELECT hex(substr(sealed_value, 21, 1)) AS b FROM credential_versions WHERE key = $1 AND state = 'active'")
                .bind(key)
                .fetch_one(store.pool())
                .await
                .unwrap();
            let hex: String = sqlx::Row::get(&row, "b");
            let flipped = u8::from_str_radix(&hex, 16).unwrap() ^ 0x01;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE credential_versions SET sealed_value = substr(sealed_value, 1, 20) || X'{flipped:02X}' || substr(sealed_value, 22) WHERE key = $1 AND state = 'active'"
            )))
            .bind(key)
            .execute(store.pool())
            .await
            .unwrap()
        }
        agent_vault::store::Backend::Postgres => sqlx::query(
            "UPDATE credential_versions SET sealed_value = set_bit(sealed_value, 160, 1 - get_bit(sealed_value, 160)) WHERE key = $1 AND state = 'active'",
        )
        .bind(key)
        .execute(store.pool())
        .await
        .unwrap(),
    };
    assert_eq!(done.rows_affected(), 1);
}
