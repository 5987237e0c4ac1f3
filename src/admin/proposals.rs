//! Proposals over the API: discovery and creation by agents, status polling, listing and review
//! by humans. The rules live in `manage::proposals`, shared with the approval page.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiJson, Caller};
use super::{AdminState, ApiError};
use crate::manage::proposals::{self, Approval, Decision, Viewed};
use crate::proposal::{self, ProposalRequest};
use crate::store::ProposalStatus;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoverQuery {
    vault: Option<String>,
}

/// `GET /v1/discover`: what an agent can use here: services (name, host) and credential key
/// names, never values.
pub(crate) async fn discover(
    State(state): State<AdminState>,
    caller: Caller,
    Query(q): Query<DiscoverQuery>,
) -> Result<Json<Value>, ApiError> {
    let (vault, vs) = proposals::discover(state.acting(&caller), q.vault.as_deref()).await?;
    let services: Vec<_> = vs
        .services
        .iter()
        .filter(|s| s.enabled)
        .map(|s| json!({ "name": s.name, "host": s.host }))
        .collect();
    Ok(Json(json!({
        "vault": vault.name,
        "unmatched_host_policy": vault.unmatched_host_policy,
        "services": services,
        "credentials": vs.keys.iter().collect::<Vec<_>>(),
        "propose": "POST /v1/proposals",
    })))
}

fn proposal_json(v: &Viewed) -> Value {
    let p = &v.record;
    json!({
        "id": p.id,
        "number": p.seq,
        "vault": v.vault.name,
        "status": p.status,
        "message": p.message,
        "services": v.content.services,
        "credentials": v.content.credentials,
        "created_by": { "kind": p.created_by.as_str(), "id": p.created_by.id() },
        "created_at": p.created_at,
        "expires_at": p.expires_at,
        "reviewed_at": p.reviewed_at,
        "review_note": p.review_note,
    })
}

/// `POST /v1/proposals`: an agent asks for services and credentials.
pub(crate) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(req): ApiJson<ProposalRequest>,
) -> Result<Response, ApiError> {
    let created = proposals::create(state.acting(&caller), req).await?;
    let body = json!({
        "id": created.record.id,
        "number": created.record.seq,
        "vault": created.vault.name,
        "status": "pending",
        "approval_url": created.approval_url,
        "expires_at": created.record.expires_at,
        "message": "a human must open approval_url, review and approve; poll GET /v1/proposals/{id} for the outcome",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/proposals/{id}`: status polling by the proposal's creator (or a member of the vault).
pub(crate) async fn poll(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let viewed = proposals::status(state.acting(&caller), &id).await?;
    Ok(Json(proposal_json(&viewed)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
}

/// `GET /v1/vaults/{vault}/proposals[?status=...]` (member or higher).
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let status = match q.status.map(|s| s.parse::<ProposalStatus>()).transpose() {
        Ok(status) => status,
        Err(e) => {
            // Checked after access, as before: a caller without the role learns nothing here.
            state
                .vault_access(&caller, &name, crate::domain::VaultRole::Member)
                .await?;
            return Err(ApiError::bad_request("invalid_status", e.to_string()));
        }
    };
    let (vault, found) = proposals::list(state.acting(&caller), &name, status).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|(record, content)| {
                proposal_json(&Viewed {
                    record,
                    vault: vault.clone(),
                    content,
                })
            })
            .collect(),
    ))
}

/// `GET /v1/vaults/{vault}/proposals/{n}` (member or higher; `n` is the number or the id): with
/// risks, the values still needed, and the approval hash the CLI sends back.
pub(crate) async fn show(
    State(state): State<AdminState>,
    caller: Caller,
    Path((name, n)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let review = proposals::review(state.acting(&caller), &name, &n).await?;
    let (content, vs) = (&review.viewed.content, &review.state);
    let mut out = proposal_json(&review.viewed);
    out["created_by"]["name"] = json!(review.creator);
    out["risks"] = json!(proposal::risks(content, vs));
    // Every proposed host in the A-label form the proxy routes on, beside its Unicode form.
    out["hosts"] = json!(
        content
            .services
            .iter()
            .filter_map(|c| match c {
                proposal::ServiceChange::Set(spec) => {
                    let forms = crate::policy::confusable::HostForms::of(&spec.host);
                    Some(json!({ "service": spec.name, "a_label": forms.ascii, "unicode": forms.unicode }))
                }
                proposal::ServiceChange::Delete { .. } => None,
            })
            .collect::<Vec<_>>()
    );
    out["missing_values"] = json!(proposal::missing_values(content));
    out["requires_role"] = json!(if proposal::needs_admin(content) {
        "admin"
    } else {
        "member"
    });
    out["approval_hash"] = json!(proposal::approval_hash(content, vs));
    Ok(Json(out))
}

/// Approval or rejection over the API needs a bearer token in `Authorization`: a cookie alone
/// is never enough here (the web pages have their own CSRF checks).
fn require_bearer(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "approving over the API needs an Authorization header".into(),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    #[serde(default)]
    values: BTreeMap<String, SecretString>,
    /// Metadata entries by key, over the ones the agent supplied (`{"KEY": {"username": ...}}`).
    #[serde(default)]
    metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// The `approval_hash` of what was reviewed; when given, the approval fails if anything changed.
    #[serde(default)]
    approval_hash: Option<String>,
    /// Risks the approver explicitly accepts: `true` for all shown, or their ids.
    #[serde(default)]
    acknowledge_risks: Option<AcknowledgeRisks>,
}

/// `"acknowledge_risks": true` or `["lookalike-host:stripe", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AcknowledgeRisks {
    /// All risks (or none, when false).
    All(bool),
    /// These risk ids.
    Ids(std::collections::BTreeSet<String>),
}

impl From<Option<AcknowledgeRisks>> for proposal::Acknowledgement {
    fn from(a: Option<AcknowledgeRisks>) -> Self {
        match a {
            Some(AcknowledgeRisks::All(true)) => Self::All,
            Some(AcknowledgeRisks::Ids(ids)) => Self::Ids(ids),
            Some(AcknowledgeRisks::All(false)) | None => Self::Nothing,
        }
    }
}

/// `POST /v1/vaults/{vault}/proposals/{n}/approve`.
pub(crate) async fn approve_api(
    State(state): State<AdminState>,
    caller: Caller,
    headers: HeaderMap,
    Path((name, n)): Path<(String, String)>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&headers)?;
    let approval = Approval {
        values: body.values,
        metadata: body.metadata,
        shown_hash: body.approval_hash,
        acknowledged: body.acknowledge_risks.into(),
    };
    let decision = Decision::Approve(approval);
    let p = proposals::decide_by_ref(state.acting(&caller), &name, &n, decision).await?;
    Ok(Json(
        json!({ "id": p.id, "number": p.seq, "status": "applied" }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectBody {
    #[serde(default)]
    reason: String,
}

/// `POST /v1/vaults/{vault}/proposals/{n}/reject`.
pub(crate) async fn reject_api(
    State(state): State<AdminState>,
    caller: Caller,
    headers: HeaderMap,
    Path((name, n)): Path<(String, String)>,
    ApiJson(body): ApiJson<RejectBody>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(&headers)?;
    let decision = Decision::Reject {
        reason: body.reason,
    };
    let p = proposals::decide_by_ref(state.acting(&caller), &name, &n, decision).await?;
    Ok(Json(
        json!({ "id": p.id, "number": p.seq, "status": "rejected" }),
    ))
}
