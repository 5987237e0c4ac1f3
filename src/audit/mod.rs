//! Records of what happened: the per-request log of proxied traffic (written in batches, off the
//! hot path) and control-plane audit events (who changed or revealed what).

mod request_log;

pub use request_log::{LogWriter, REQUEST_LINE_TARGET, RequestLogger};

use crate::identity::Authenticated;
use crate::store::{AuditEvent, Store};

/// Records a control-plane event. Failures are logged, never surfaced: the change itself has
/// already been committed and must not be reported as failed.
pub async fn record(
    store: &Store,
    who: &Authenticated,
    action: &str,
    vault_id: Option<&str>,
    target: String,
    detail: String,
) {
    let actor = who.actor();
    let event = AuditEvent {
        actor: &actor,
        action,
        vault_id,
        target,
        detail,
    };
    if let Err(e) = store.record_audit(&event).await {
        tracing::error!(action, error = %e, "could not record audit event");
    }
}
