//! MACs over authority rows (grants, users, invites, agents, tokens). Every write of such a row stores
//! a MAC keyed from the DEK; every read checks it, and a row that fails is treated as absent and
//! raised as an integrity alarm: logged (table and row id, never a value) and recorded as an
//! `integrity.failure` audit event, once per row per [`ALARM_WINDOW`] so a tampered row read by
//! every request cannot flood either. Rows from before migration 0003 get their MAC at the first
//! unseal after it, and rows bound before 0006 get the MAC that covers their lifetime (the DEK is
//! not available earlier); master-key rotation re-binds every row from the old keys to the new.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::{Store, StoreError, TokenRecord, col};
use crate::domain::now_ms;
use crate::keys::{AuthorityMacs, AuthorityRow, MacField};

/// Set by migration 0003; removed once the rows it found without a MAC have one.
const BACKFILL_PENDING_KEY: &str = "authority_macs_pending";

/// How long one row's integrity failure is alarmed once: later failures of the same row within
/// it are counted and reported with the next alarm instead of logged and recorded again.
const ALARM_WINDOW: Duration = Duration::from_secs(600);

/// Most rows whose alarms are remembered at once. Past it (thousands of distinct rows edited
/// within one window) further rows are counted, not logged or recorded one by one.
const ALARM_ROWS: usize = 4096;

/// The audit action of an integrity failure.
pub const INTEGRITY_ACTION: &str = "integrity.failure";

/// The fields of a `vault_grants` row under its MAC.
pub(super) fn grant_fields<'a>(
    vault_id: &'a str,
    kind: &'a str,
    principal_id: &'a str,
    role: &'a str,
) -> [MacField<'a>; 4] {
    [
        MacField::Text(vault_id),
        MacField::Text(kind),
        MacField::Text(principal_id),
        MacField::Text(role),
    ]
}

/// The fields of a `users` row under its MAC.
pub(super) fn user_fields<'a>(
    id: &'a str,
    email: &'a str,
    role: &'a str,
    password_hash: &'a str,
) -> [MacField<'a>; 4] {
    [
        MacField::Text(id),
        MacField::Text(email),
        MacField::Text(role),
        MacField::Text(password_hash),
    ]
}

/// An `invites` row as its MAC sees it.
pub(super) struct InviteMacView<'a> {
    pub id: &'a str,
    pub email: &'a str,
    pub role: &'a str,
    pub vault_grants: &'a str,
    pub expires_at: i64,
    pub token_hash: &'a [u8],
    pub created_by: &'a str,
    pub accepted_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// The fields of an `invites` row under its MAC: who it admits with what, until when, and
/// whether it was used or withdrawn (so a revoked or accepted invitation cannot be re-opened).
pub(super) fn invite_fields<'a>(i: &InviteMacView<'a>) -> [MacField<'a>; 9] {
    [
        MacField::Text(i.id),
        MacField::Text(i.email),
        MacField::Text(i.role),
        MacField::Text(i.vault_grants),
        MacField::Int(i.expires_at),
        MacField::Bytes(i.token_hash),
        MacField::Text(i.created_by),
        MacField::OptInt(i.accepted_at),
        MacField::OptInt(i.revoked_at),
    ]
}

/// The fields migration 0003 bound an `invites` row with (no acceptance or revocation); read
/// only to upgrade a row to [`invite_fields`].
fn invite_fields_v1<'a>(i: &InviteMacView<'a>) -> [MacField<'a>; 7] {
    let [a, b, c, d, e, f, g, _, _] = invite_fields(i);
    [a, b, c, d, e, f, g]
}

/// The fields of an `agents` row under its MAC.
pub(super) fn agent_fields<'a>(
    id: &'a str,
    name: &'a str,
    created_by: Option<&'a str>,
) -> [MacField<'a>; 3] {
    [
        MacField::Text(id),
        MacField::Text(name),
        MacField::OptText(created_by),
    ]
}

/// The fields of a `tokens` row under its MAC: whose it is, what it may do, until when, whether
/// it was revoked, and which token minted it. A revocation cleared or an expiry moved by a
/// database writer makes the row fail, so the token stops working rather than coming back.
pub(super) fn token_fields(t: &TokenRecord) -> [MacField<'_>; 10] {
    [
        MacField::Text(&t.id),
        MacField::Bytes(&t.hash.0),
        MacField::Text(t.kind.as_str()),
        MacField::OptText(t.user_id.as_deref()),
        MacField::OptText(t.agent_id.as_deref()),
        MacField::OptText(t.vault_id.as_deref()),
        MacField::OptText(t.vault_role.map(|r| r.as_str())),
        MacField::OptInt(t.expires_at),
        MacField::OptInt(t.revoked_at),
        MacField::OptText(t.parent_id.as_deref()),
    ]
}

/// The fields of a `credentials` row under its MAC: everything that decides whether and which
/// value is used (type, state, active version, expiry, the metadata key's wrap, revocation).
/// The last version number is bound too, so a writer cannot lower it to make a number be
/// issued twice. Counters, description and timestamps of changes are not bound: they grant
/// nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn credential_fields<'a>(
    vault_id: &'a str,
    key: &'a str,
    last_version: i64,
    ty: &'a str,
    state: &'a str,
    active_version: Option<i64>,
    expires_at: Option<i64>,
    wrapped_key: &'a [u8],
    key_version: i64,
    revoked_at: Option<i64>,
) -> [MacField<'a>; 10] {
    [
        MacField::Text(vault_id),
        MacField::Text(key),
        MacField::Int(last_version),
        MacField::Text(ty),
        MacField::Text(state),
        MacField::OptInt(active_version),
        MacField::OptInt(expires_at),
        MacField::Bytes(wrapped_key),
        MacField::Int(key_version),
        MacField::OptInt(revoked_at),
    ]
}

/// The fields migration 0003 bound a `tokens` row with (no lifetime, no parent); read only to
/// upgrade a row to [`token_fields`].
fn token_fields_v1(t: &TokenRecord) -> [MacField<'_>; 7] {
    let [a, b, c, d, e, f, g, _, _, _] = token_fields(t);
    [a, b, c, d, e, f, g]
}

/// What the process remembers of recent integrity alarms, so each row raises one per window.
#[derive(Debug, Default)]
pub(super) struct IntegrityAlarms {
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug)]
struct Seen {
    at: Instant,
    suppressed: u64,
}

impl IntegrityAlarms {
    /// Whether `target` should be alarmed now, and how many of its failures went unreported
    /// since its last alarm; `None` while its window is open (or too many rows are remembered).
    fn admit(&self, target: &str) -> Option<u64> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if let Some(s) = seen.get_mut(target) {
            if now.duration_since(s.at) < ALARM_WINDOW {
                s.suppressed = s.suppressed.saturating_add(1);
                return None;
            }
            let suppressed = s.suppressed;
            *s = Seen {
                at: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if seen.len() >= ALARM_ROWS {
            seen.retain(|_, s| now.duration_since(s.at) < ALARM_WINDOW);
            if seen.len() >= ALARM_ROWS {
                return None;
            }
        }
        seen.insert(
            target.to_owned(),
            Seen {
                at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

/// Computes one row's MAC under the given keys.
type RowMac = fn(&AuthorityMacs, &AnyRow) -> Result<Vec<u8>, StoreError>;

/// How one authority table is read and bound again: its columns, how its rows are found by key,
/// and how a row's MAC is computed (now, and as migration 0003 computed it).
struct Table {
    kind: AuthorityRow,
    /// Selected columns, `mac` included.
    columns: &'static str,
    /// The condition naming one row, binding from `$2` on.
    key_where: &'static str,
    /// The key values `key_where` binds, in order; the first one names the row in alarms.
    key: fn(&AnyRow) -> Result<Vec<String>, StoreError>,
    /// The vault a row concerns, if any (for the audit event).
    vault: fn(&AnyRow) -> Result<Option<String>, StoreError>,
    /// The row's MAC under `macs`.
    mac: RowMac,
    /// The row's MAC as migration 0003 computed it, for tables whose fields changed since.
    mac_v1: Option<RowMac>,
}

fn by_id(r: &AnyRow) -> Result<Vec<String>, StoreError> {
    Ok(vec![col(r, "id")?])
}

fn no_vault(_: &AnyRow) -> Result<Option<String>, StoreError> {
    Ok(None)
}

fn invite_mac(
    r: &AnyRow,
    mac: impl FnOnce(&InviteMacView<'_>) -> Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    let (id, email, role, grants, hash, created_by): (
        String,
        String,
        String,
        String,
        Vec<u8>,
        String,
    ) = (
        col(r, "id")?,
        col(r, "email")?,
        col(r, "role")?,
        col(r, "vault_grants")?,
        col(r, "token_hash")?,
        col(r, "created_by")?,
    );
    Ok(mac(&InviteMacView {
        id: &id,
        email: &email,
        role: &role,
        vault_grants: &grants,
        expires_at: col(r, "expires_at")?,
        token_hash: &hash,
        created_by: &created_by,
        accepted_at: col(r, "accepted_at")?,
        revoked_at: col(r, "revoked_at")?,
    }))
}

/// Every authority table, in the order they are bound.
const TABLES: [Table; 5] = [
    Table {
        kind: AuthorityRow::Grant,
        columns: "vault_id, principal_kind, principal_id, role, mac",
        key_where: "vault_id = $2 AND principal_kind = $3 AND principal_id = $4",
        key: |r| {
            Ok(vec![
                col(r, "vault_id")?,
                col(r, "principal_kind")?,
                col(r, "principal_id")?,
            ])
        },
        vault: |r| Ok(Some(col(r, "vault_id")?)),
        mac: |m, r| {
            let (v, k, p, role): (String, String, String, String) = (
                col(r, "vault_id")?,
                col(r, "principal_kind")?,
                col(r, "principal_id")?,
                col(r, "role")?,
            );
            Ok(m.mac(AuthorityRow::Grant, &grant_fields(&v, &k, &p, &role)))
        },
        mac_v1: None,
    },
    Table {
        kind: AuthorityRow::User,
        columns: "id, email, role, password_hash, mac",
        key_where: "id = $2",
        key: by_id,
        vault: no_vault,
        mac: |m, r| {
            let (id, email, role, phc): (String, String, String, String) = (
                col(r, "id")?,
                col(r, "email")?,
                col(r, "role")?,
                col(r, "password_hash")?,
            );
            Ok(m.mac(AuthorityRow::User, &user_fields(&id, &email, &role, &phc)))
        },
        mac_v1: None,
    },
    Table {
        kind: AuthorityRow::Invite,
        columns: "id, email, role, vault_grants, expires_at, token_hash, created_by, accepted_at, revoked_at, mac",
        key_where: "id = $2",
        key: by_id,
        vault: no_vault,
        mac: |m, r| invite_mac(r, |i| m.mac(AuthorityRow::Invite, &invite_fields(i))),
        mac_v1: Some(|m, r| invite_mac(r, |i| m.mac(AuthorityRow::Invite, &invite_fields_v1(i)))),
    },
    Table {
        kind: AuthorityRow::Agent,
        columns: "id, name, created_by, mac",
        key_where: "id = $2",
        key: by_id,
        vault: no_vault,
        mac: |m, r| {
            let (id, name, by): (String, String, Option<String>) =
                (col(r, "id")?, col(r, "name")?, col(r, "created_by")?);
            Ok(m.mac(
                AuthorityRow::Agent,
                &agent_fields(&id, &name, by.as_deref()),
            ))
        },
        mac_v1: None,
    },
    Table {
        kind: AuthorityRow::Token,
        columns: super::tokens::TOKEN_COLUMNS,
        key_where: "id = $2",
        key: by_id,
        vault: |r| col(r, "vault_id"),
        mac: |m, r| {
            let t = TokenRecord::from_row(r)?;
            Ok(m.mac(AuthorityRow::Token, &token_fields(&t)))
        },
        mac_v1: Some(|m, r| {
            let t = TokenRecord::from_row(r)?;
            Ok(m.mac(AuthorityRow::Token, &token_fields_v1(&t)))
        }),
    },
];

/// Which rows a re-binding takes, and what they must prove first.
#[derive(Clone, Copy)]
enum Proof<'a> {
    /// Rows without a MAC, trusted as they are (the one-time binding after migration 0003).
    Unbound,
    /// Rows whose MAC verifies as migration 0003 computed it (the upgrade after 0006); only
    /// tables whose fields changed since.
    V1(&'a AuthorityMacs),
    /// Rows whose MAC verifies under these keys (master-key rotation).
    Current(&'a AuthorityMacs),
}

/// What re-binding did: rows given a new MAC, and rows left as they were because they did not
/// prove themselves (each raised as an integrity alarm; they stay refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebound {
    /// Rows that now carry a MAC under the new keys.
    pub bound: u64,
    /// Rows whose MAC did not verify, left failing.
    pub refused: u64,
}

impl std::ops::AddAssign for Rebound {
    fn add_assign(&mut self, other: Self) {
        self.bound += other.bound;
        self.refused += other.refused;
    }
}

impl Store {
    /// This store with the keys that bind authority rows; without them those rows can be
    /// neither read nor written.
    pub fn with_authority_macs(&self, macs: AuthorityMacs) -> Store {
        Store {
            pool: self.pool.clone(),
            backend: self.backend,
            authority: Some(macs),
            alarms: self.alarms.clone(),
            home: self.home.clone(),
        }
    }

    pub(super) fn macs(&self) -> Result<&AuthorityMacs, StoreError> {
        self.authority.as_ref().ok_or(StoreError::Sealed)
    }

    /// Checks a row's MAC, raising the alarm when it fails. `row_id` names the row (never a
    /// value); `vault_id` is the vault it concerns, if any, so the vault's audit shows it.
    pub(super) fn verify_row(
        &self,
        kind: AuthorityRow,
        row_id: &str,
        vault_id: Option<&str>,
        fields: &[MacField<'_>],
        stored: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let ok = self.macs()?.verify(kind, fields, stored);
        if !ok {
            self.alarm(kind, row_id, vault_id);
        }
        Ok(ok)
    }

    /// Raises an integrity alarm for one row: an `INTEGRITY ALARM` log line and an
    /// `integrity.failure` audit event naming only the table and the row's id, at most once per
    /// row per [`ALARM_WINDOW`] (failures in between are counted into the next one). The event
    /// is written off the caller's path, which may hold a transaction.
    pub(super) fn alarm(&self, kind: AuthorityRow, row_id: &str, vault_id: Option<&str>) {
        let target = format!("{}/{row_id}", kind.table());
        let Some(suppressed) = self.alarms.admit(&target) else {
            return;
        };
        tracing::error!(
            table = kind.table(),
            row = %row_id,
            repeated = suppressed,
            "INTEGRITY ALARM: an authority row failed its MAC (edited outside agent-vault); it is treated as absent"
        );
        let detail = format!(
            "the row failed its MAC (edited outside agent-vault) and is treated as absent; {suppressed} further failures since the last alarm"
        );
        let store = self.clone();
        let vault_id = vault_id.map(str::to_owned);
        let write = async move {
            let done = sqlx::query(
                "INSERT INTO audit_events (at, actor_kind, actor_id, action, vault_id, target, detail) VALUES ($1, 'system', 'integrity', $2, $3, $4, $5)",
            )
            .bind(now_ms())
            .bind(INTEGRITY_ACTION)
            .bind(vault_id)
            .bind(target)
            .bind(detail)
            .execute(&store.pool)
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "could not record the integrity audit event");
            }
        };
        match self
            .home
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            Some(home) => {
                home.spawn(write);
            }
            None => tracing::error!("could not record the integrity audit event: no runtime"),
        }
    }

    /// Gives a MAC to every authority row that has none, once, right after migration 0003
    /// (which marks the backfill as pending). Returns how many rows were bound. Rows edited
    /// before this runs are trusted as they are: that is the price of adding MACs to an
    /// existing database, and the count is logged so an operator can see it happen.
    pub async fn backfill_authority_macs(&self) -> Result<u64, StoreError> {
        let macs = self.macs()?.clone();
        let mut tx = self.begin_write().await?;
        let pending = sqlx::query("SELECT value FROM instance_state WHERE key = $1")
            .bind(BACKFILL_PENDING_KEY)
            .fetch_optional(&mut *tx)
            .await?;
        if pending.is_none() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut done = Rebound::default();
        for table in &TABLES {
            done += self.rebind(&mut tx, table, Proof::Unbound, &macs).await?;
        }
        sqlx::query("DELETE FROM instance_state WHERE key = $1")
            .bind(BACKFILL_PENDING_KEY)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.bound)
    }

    /// Gives every token and invitation bound before migration 0006 the MAC that also covers
    /// its lifetime (expiry, revocation, acceptance, parent), once, at the first unseal after
    /// it. Only rows whose 0003 MAC verifies are re-bound: an edit of what that MAC covered
    /// stays refused. Their lifetime columns are trusted as they are, as 0003's backfill
    /// trusted whole rows. Returns what was bound and refused.
    pub async fn upgrade_authority_macs(&self) -> Result<Rebound, StoreError> {
        let macs = self.macs()?.clone();
        let mut tx = self.begin_write().await?;
        let mut done = Rebound::default();
        for table in TABLES.iter().filter(|t| t.mac_v1.is_some()) {
            done += self.rebind(&mut tx, table, Proof::V1(&macs), &macs).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Re-binds every authority row from the keys `old` to the keys `new`, inside `tx`, for
    /// master-key rotation: a row whose MAC verifies under `old` gets the MAC `new` computes;
    /// one that does not is left as it is (still refused, alarmed), since re-binding it would
    /// launder whatever was edited. Rows are updated only if their MAC is still the one read,
    /// so a concurrent write is never overwritten. The caller commits `tx`, together with
    /// whatever else the rotation changes, and then uses a store holding `new`.
    pub async fn rebind_authority_macs(
        &self,
        tx: &mut Transaction<'static, Any>,
        old: &AuthorityMacs,
        new: &AuthorityMacs,
    ) -> Result<Rebound, StoreError> {
        let mut done = Rebound::default();
        for table in &TABLES {
            done += self.rebind(tx, table, Proof::Current(old), new).await?;
        }
        Ok(done)
    }

    /// Binds the rows of one table that `proof` takes under `new`.
    async fn rebind(
        &self,
        tx: &mut Transaction<'static, Any>,
        table: &Table,
        proof: Proof<'_>,
        new: &AuthorityMacs,
    ) -> Result<Rebound, StoreError> {
        let (name, columns) = (table.kind.table(), table.columns);
        let filter = match proof {
            Proof::Unbound => " WHERE mac IS NULL",
            Proof::V1(_) | Proof::Current(_) => "",
        };
        // Table and column names are constants of this module, never input.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {name}{filter}"
        )))
        .fetch_all(&mut **tx)
        .await?;
        let keys = table.key_where;
        let unbound = format!("UPDATE {name} SET mac = $1 WHERE {keys} AND mac IS NULL");
        let bound = format!(
            "UPDATE {name} SET mac = $1 WHERE {keys} AND mac = ${}",
            keys.matches('$').count() + 2
        );
        let mut done = Rebound::default();
        for r in &rows {
            let key = (table.key)(r)?;
            let stored: Option<Vec<u8>> = col(r, "mac")?;
            let current = |m: &AuthorityMacs| {
                stored
                    .as_deref()
                    .is_some_and(|s| (table.mac)(m, r).is_ok_and(|expected| ct_eq(&expected, s)))
            };
            // Another instance upgrading the same database at the same moment got here first.
            if let Proof::V1(m) = proof
                && current(m)
            {
                continue;
            }
            let proven = match proof {
                Proof::Unbound => true,
                Proof::V1(m) => match table.mac_v1 {
                    Some(v1) => stored
                        .as_deref()
                        .is_some_and(|s| v1(m, r).is_ok_and(|expected| ct_eq(&expected, s))),
                    None => false,
                },
                Proof::Current(m) => current(m),
            };
            if !proven {
                done.refused += 1;
                let vault = (table.vault)(r)?;
                self.alarm(table.kind, &key.join("/"), vault.as_deref());
                continue;
            }
            let mac = (table.mac)(new, r)?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(match &stored {
                Some(_) => bound.clone(),
                None => unbound.clone(),
            }))
            .bind(mac);
            for k in key {
                q = q.bind(k);
            }
            if let Some(s) = stored {
                q = q.bind(s);
            }
            done.bound += q.execute(&mut **tx).await?.rows_affected();
        }
        Ok(done)
    }

    /// Removes the backfill marker without binding anything; says whether it was there. On a
    /// database whose MACs are already bound, a marker can only come from a database writer.
    pub async fn discard_backfill_marker(&self) -> Result<bool, StoreError> {
        self.changed(
            sqlx::query("DELETE FROM instance_state WHERE key = $1").bind(BACKFILL_PENDING_KEY),
        )
        .await
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_alarmed_once_per_window_and_repeats_are_counted() {
        let alarms = IntegrityAlarms::default();
        assert_eq!(alarms.admit("tokens/t1"), Some(0));
        for _ in 0..5 {
            assert_eq!(alarms.admit("tokens/t1"), None);
        }
        assert_eq!(alarms.admit("users/u1"), Some(0), "another row has its own");
        // Once the window has passed, the next failure is alarmed with the count it hid.
        if let Some(seen) = alarms.seen.lock().unwrap().get_mut("tokens/t1") {
            // A machine up for less than a window cannot go back that far.
            let Some(earlier) = seen.at.checked_sub(ALARM_WINDOW) else {
                return;
            };
            seen.at = earlier;
        }
        assert_eq!(alarms.admit("tokens/t1"), Some(5));
        assert_eq!(alarms.admit("tokens/t1"), None);
    }

    #[test]
    fn remembered_rows_are_bounded() {
        let alarms = IntegrityAlarms::default();
        for i in 0..ALARM_ROWS {
            assert_eq!(alarms.admit(&format!("tokens/{i}")), Some(0));
        }
        assert_eq!(alarms.admit("tokens/one-too-many"), None);
        assert_eq!(alarms.seen.lock().unwrap().len(), ALARM_ROWS);
    }
}
