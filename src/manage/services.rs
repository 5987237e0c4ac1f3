//! Services: the rules that bind credentials to hosts. Members read them, only vault admins
//! change them; every definition is validated exactly as proposals are (including that each
//! credential it uses is of a type that can serve that use), and stored with a MAC that is
//! checked (in `registry::read_service`) whenever one is read back.

use std::collections::{BTreeMap, BTreeSet};

use super::{AccessError, Acting, Manage};
use crate::credtype::CredentialType;
use crate::domain::{CredentialKey, VaultRole};
use crate::policy::service::{
    IncompatibleCredential, ServiceSpec, check_credential_types, validate_services,
};
use crate::registry::{StoredServiceError, verified_services};
use crate::store::{ServiceRow, StoreError};

/// Why a services operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The caller may not see or change this vault.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A definition is invalid (the message names the service and the field).
    #[error(transparent)]
    Invalid(#[from] crate::policy::ServiceError),
    /// A service uses a credential of a type that cannot serve that use.
    #[error(transparent)]
    Incompatible(#[from] IncompatibleCredential),
    /// No service of that name in the vault.
    #[error("no service {service:?} in vault {vault:?}")]
    NotFound {
        /// The service name asked for.
        service: String,
        /// The vault, as the caller named it.
        vault: String,
    },
    /// A stored definition failed its MAC or cannot be read.
    #[error(transparent)]
    Stored(#[from] StoredServiceError),
    /// A definition could not be serialized for storage.
    #[error("cannot encode service {name}")]
    Encode {
        /// The service.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The verified definitions of a vault's services, in declaration order.
pub async fn specs(m: &Manage<'_>, vault_id: &str) -> Result<Vec<ServiceSpec>, ServicesError> {
    let rows = m.store.list_services(vault_id).await?;
    Ok(verified_services(m.keyring, vault_id, &rows)?)
}

/// The credential keys a vault holds (names only).
pub async fn known_keys(
    m: &Manage<'_>,
    vault_id: &str,
) -> Result<BTreeSet<CredentialKey>, StoreError> {
    Ok(m.store
        .list_credentials(vault_id)
        .await?
        .into_iter()
        .map(|c| c.key)
        .collect())
}

/// The type of every credential a vault holds.
pub async fn credential_types(
    m: &Manage<'_>,
    vault_id: &str,
) -> Result<BTreeMap<CredentialKey, CredentialType>, StoreError> {
    Ok(m.store
        .list_credentials(vault_id)
        .await?
        .into_iter()
        .map(|c| (c.key, c.ty))
        .collect())
}

/// Validates definitions against the vault's keys and their types (`types` holds the type of
/// every credential the vault will hold, so its keys are the known keys) and turns them into
/// rows with MACs.
pub fn rows_for(
    m: &Manage<'_>,
    vault_id: &str,
    specs: &[ServiceSpec],
    types: &BTreeMap<CredentialKey, CredentialType>,
) -> Result<Vec<ServiceRow>, ServicesError> {
    let keys: BTreeSet<CredentialKey> = types.keys().cloned().collect();
    let compiled = validate_services(specs, &keys)?;
    check_credential_types(&compiled, types)?;
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let json = serde_json::to_string(spec).map_err(|source| ServicesError::Encode {
                name: spec.name.clone(),
                source,
            })?;
            Ok(ServiceRow {
                name: spec.name.clone(),
                position: i64::try_from(i).unwrap_or(i64::MAX),
                mac: m.keyring.service_mac(vault_id, &spec.name, &json),
                spec: json,
            })
        })
        .collect()
}

/// A vault's services (member or higher).
pub async fn list(a: Acting<'_>, vault: &str) -> Result<Vec<ServiceSpec>, ServicesError> {
    let (vault, _) = a.vault(vault, VaultRole::Member).await?;
    specs(&a, &vault.id).await
}

/// Replaces every service of a vault atomically (admin); returns them as stored.
pub async fn replace(
    a: Acting<'_>,
    vault: &str,
    specs: Vec<ServiceSpec>,
) -> Result<Vec<ServiceSpec>, ServicesError> {
    let (vault, _) = a.vault(vault, VaultRole::Admin).await?;
    let specs: Vec<ServiceSpec> = specs.into_iter().map(ServiceSpec::normalized).collect();
    let types = credential_types(&a, &vault.id).await?;
    let rows = rows_for(&a, &vault.id, &specs, &types)?;
    a.store.replace_services(&vault.id, &rows).await?;
    a.changed(&vault.id).await;
    let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
    a.record("service.replace", Some(&vault), names.join(","))
        .await;
    Ok(specs)
}

/// Adds or replaces one service by name (admin); returns it as stored and whether it is new.
pub async fn upsert(
    a: Acting<'_>,
    vault: &str,
    spec: ServiceSpec,
) -> Result<(ServiceSpec, bool), ServicesError> {
    let (vault, _) = a.vault(vault, VaultRole::Admin).await?;
    let spec = spec.normalized();
    let types = credential_types(&a, &vault.id).await?;
    let rows = rows_for(&a, &vault.id, std::slice::from_ref(&spec), &types)?;
    let existed = a
        .store
        .list_services(&vault.id)
        .await?
        .iter()
        .any(|r| r.name == spec.name);
    for row in &rows {
        a.store.upsert_service(&vault.id, row).await?;
    }
    a.changed(&vault.id).await;
    a.record_with(
        "service.set",
        Some(&vault),
        spec.name.clone(),
        spec.host.clone(),
    )
    .await;
    Ok((spec, !existed))
}

/// Removes one service by name (admin).
pub async fn remove(a: Acting<'_>, vault: &str, service: &str) -> Result<(), ServicesError> {
    let (record, _) = a.vault(vault, VaultRole::Admin).await?;
    if !a.store.delete_service(&record.id, service).await? {
        return Err(ServicesError::NotFound {
            service: service.to_owned(),
            vault: vault.to_owned(),
        });
    }
    a.changed(&record.id).await;
    a.record("service.remove", Some(&record), service.to_owned())
        .await;
    Ok(())
}
