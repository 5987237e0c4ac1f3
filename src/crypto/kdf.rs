//! Argon2id: the master password becomes the key-encryption key, and user passwords become
//! PHC hash strings. Parameters are stored next to each salt so they can change over time.
//!
//! Every Argon2 run goes through a [`KdfGate`]: each one allocates its whole memory cost at once
//! (64 MiB by default), so without a bound a flood of logins for unknown e-mails is a flood of
//! allocations. The gate bounds how many run at once, both by cores and by a memory budget.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::{CryptoError, DataKey};

/// How long a caller waits for a free KDF slot before it is told `busy`. Long enough for a few
/// queued hashes to finish on a loaded machine, well under the timeouts of clients and reverse
/// proxies, so a flood is answered quickly instead of piling up open requests.
pub const KDF_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl KdfParams {
    /// The production default: 64 MiB, three passes, four lanes.
    pub const PRODUCTION: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    fn argon2(&self) -> Result<Argon2<'static>, CryptoError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(CryptoError::KdfParams)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Checks that Argon2 accepts these parameters.
    pub fn validate(&self) -> Result<(), CryptoError> {
        self.argon2().map(|_| ())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::PRODUCTION
    }
}

/// Derives a 256-bit key from a password and salt. Private: callers go through
/// [`KdfGate::derive_key`].
fn derive_key(
    password: &SecretString,
    salt: &[u8],
    params: &KdfParams,
) -> Result<DataKey, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    params
        .argon2()?
        .hash_password_into(password.expose_secret().as_bytes(), salt, out.as_mut())
        .map_err(CryptoError::KdfParams)?;
    Ok(DataKey::from_bytes(*out))
}

/// Bounds concurrent Argon2 work for the whole process: at most one run per core, and at most
/// `memory_budget` bytes of Argon2 memory at once. A run whose cost exceeds the budget on its
/// own still runs, alone. Callers that cannot start within the queue wait get
/// [`CryptoError::Busy`].
#[derive(Clone, Debug)]
pub struct KdfGate {
    slots: Arc<Semaphore>,
    slot_count: usize,
    memory_kib: Arc<Semaphore>,
    budget_kib: u32,
    wait: Duration,
}

impl KdfGate {
    /// A gate with one slot per core and `memory_budget` bytes of Argon2 memory.
    pub fn new(memory_budget: u64, wait: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_slots(cores, memory_budget, wait)
    }

    /// A gate with an explicit number of slots.
    pub fn with_slots(slots: usize, memory_budget: u64, wait: Duration) -> Self {
        let budget_kib = u32::try_from(memory_budget / 1024)
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            slot_count: slots.max(1),
            memory_kib: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            wait,
        }
    }

    /// How many runs of `memory_kib` each may execute at once.
    pub fn concurrency(&self, memory_kib: u32) -> usize {
        let by_memory = (self.budget_kib / memory_kib.max(1)).max(1) as usize;
        by_memory.min(self.slot_count)
    }

    /// Runs `job` (an Argon2 computation costing `memory_kib`) on the blocking pool once the
    /// budget allows it, or fails with `Busy` after the queue wait.
    async fn run<T: Send + 'static>(
        &self,
        memory_kib: u32,
        job: impl FnOnce() -> Result<T, CryptoError> + Send + 'static,
    ) -> Result<T, CryptoError> {
        let need = memory_kib.clamp(1, self.budget_kib);
        let acquire = async {
            let slot = self.slots.clone().acquire_owned().await;
            let memory = self.memory_kib.clone().acquire_many_owned(need).await;
            (slot, memory)
        };
        let (slot, memory) = match tokio::time::timeout(self.wait, acquire).await {
            Ok((Ok(slot), Ok(memory))) => (slot, memory),
            _ => {
                return Err(CryptoError::Busy {
                    retry_after_secs: 1,
                });
            }
        };
        // The permits move into the blocking task: a caller that goes away (a closed
        // connection) must not free the budget while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let _held = (slot, memory);
            job()
        })
        .await
        .map_err(|_| CryptoError::PasswordHash)?
    }

    /// Derives a 256-bit key from a password and salt within the budget.
    pub async fn derive_key(
        &self,
        password: &SecretString,
        salt: &[u8],
        params: KdfParams,
    ) -> Result<DataKey, CryptoError> {
        let (password, salt) = (password.clone(), salt.to_vec());
        self.run(params.memory_kib, move || {
            derive_key(&password, &salt, &params)
        })
        .await
    }
}

/// Failed password checks of all clients together within one minute; beyond the limit every
/// password check is refused until the minute ends. The per-address budget cannot see an
/// attacker who spreads guesses over many addresses.
#[derive(Debug)]
struct FailureWindow {
    limit: u32,
    state: Mutex<(Instant, u32)>,
}

const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl FailureWindow {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, (Instant, u32)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(state.0) >= FAILURE_WINDOW {
            *state = (now, 0);
        }
        state
    }

    /// `Err(seconds until the window ends)` once the limit is reached.
    fn check(&self) -> Result<(), u64> {
        let state = self.current();
        if state.1 < self.limit {
            return Ok(());
        }
        let left = FAILURE_WINDOW.saturating_sub(state.0.elapsed());
        Err(left.as_secs().max(1))
    }

    fn record(&self) {
        let mut state = self.current();
        state.1 = state.1.saturating_add(1);
    }
}

/// Hashes and verifies user passwords as PHC strings. Every check waits for the process-wide
/// [`KdfGate`] and counts against the global failure window, so no call site can skip either.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    params: KdfParams,
    /// A hash of a random password, verified against when an email is unknown so that the
    /// response time does not reveal which accounts exist.
    dummy: Arc<str>,
    gate: KdfGate,
    failures: Arc<FailureWindow>,
}

impl PasswordHasher {
    /// Builds a hasher with the given cost, gate, and limit of failed checks per minute (all
    /// clients together).
    pub fn new(
        params: KdfParams,
        gate: KdfGate,
        failures_per_minute: u32,
    ) -> Result<Self, CryptoError> {
        let seed: [u8; 16] = super::random_bytes()?;
        // Built once at startup, before anything listens: nothing competes with it.
        let dummy = hash_with(&params, &SecretString::from(hex::encode(seed)))?;
        Ok(Self {
            params,
            dummy: dummy.into(),
            gate,
            failures: Arc::new(FailureWindow::new(failures_per_minute)),
        })
    }

    /// Hashes a password into a PHC string that embeds salt and parameters.
    pub async fn hash(&self, password: SecretString) -> Result<String, CryptoError> {
        let params = self.params;
        self.gate
            .run(params.memory_kib, move || hash_with(&params, &password))
            .await
    }

    /// Verifies a password against a stored PHC string, or against the dummy hash when there is
    /// none (unknown account; always false). Malformed hashes never verify. Fails with `Busy`
    /// when too many checks failed this minute or the gate stays full.
    pub async fn verify(
        &self,
        password: SecretString,
        phc: Option<String>,
    ) -> Result<bool, CryptoError> {
        if let Err(retry_after_secs) = self.failures.check() {
            return Err(CryptoError::Busy { retry_after_secs });
        }
        let ok = self.verify_for_session(password, phc).await?;
        if !ok {
            self.failures.record();
        }
        Ok(ok)
    }

    /// Like [`Self::verify`], but outside the instance-wide failure limit: for a password
    /// re-entered by someone already logged in (the caller budgets those failures per person),
    /// so failed logins by others cannot block them. The gate still bounds the work.
    pub async fn verify_for_session(
        &self,
        password: SecretString,
        phc: Option<String>,
    ) -> Result<bool, CryptoError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let Some(memory_kib) = PasswordHash::new(&phc)
            .ok()
            .and_then(|h| Params::try_from(&h).ok())
            .map(|p| p.m_cost())
        else {
            return Ok(false);
        };
        let ok = self
            .gate
            .run(memory_kib, move || {
                Ok(Argon2::default()
                    .verify_password(password.expose_secret().as_bytes(), phc.as_str())
                    .is_ok())
            })
            .await?
            && known;
        Ok(ok)
    }
}

fn hash_with(params: &KdfParams, password: &SecretString) -> Result<String, CryptoError> {
    params
        .argon2()?
        .hash_password(password.expose_secret().as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| CryptoError::PasswordHash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn production_defaults_meet_the_floor() {
        let p = KdfParams::default();
        assert!(p.memory_kib >= 64 * 1024);
        assert!(p.iterations >= 3);
        assert!(p.parallelism >= 4);
        p.validate().unwrap();
    }

    #[test]
    fn same_password_and_salt_give_same_key() {
        let pw = SecretString::from("correct horse");
        let a = derive_key(&pw, b"saltsaltsaltsalt", &TINY).unwrap();
        let b = derive_key(&pw, b"saltsaltsaltsalt", &TINY).unwrap();
        let c = derive_key(&SecretString::from("wrong"), b"saltsaltsaltsalt", &TINY).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
    }

    fn gate() -> KdfGate {
        KdfGate::new(256 << 20, KDF_QUEUE_WAIT)
    }

    #[tokio::test]
    async fn password_hashes_verify() {
        let hasher = PasswordHasher::new(TINY, gate(), 100).unwrap();
        let pw = SecretString::from("hunter22hunter22");
        let phc = hasher.hash(pw.clone()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("hunter22"));
        assert!(hasher.verify(pw.clone(), Some(phc.clone())).await.unwrap());
        let nope = SecretString::from("nope");
        assert!(!hasher.verify(nope, Some(phc)).await.unwrap());
        assert!(
            !hasher
                .verify(pw.clone(), Some("not a hash".into()))
                .await
                .unwrap()
        );
        assert!(!hasher.verify(pw, None).await.unwrap());
    }

    #[test]
    fn concurrency_follows_cores_and_memory_budget() {
        let gate = KdfGate::with_slots(8, 256 << 20, KDF_QUEUE_WAIT);
        assert_eq!(gate.concurrency(64 * 1024), 4);
        assert_eq!(gate.concurrency(16 * 1024), 8);
        assert_eq!(
            gate.concurrency(1024 * 1024),
            1,
            "an oversized cost runs alone"
        );
    }

    #[tokio::test]
    async fn a_full_gate_answers_busy_after_the_wait() {
        let gate = KdfGate::with_slots(1, 1 << 20, Duration::from_millis(50));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.run(1024, move || {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                    Ok(())
                })
                .await
            }
        });
        started_rx.await.unwrap();
        let busy = gate.run(1, || Ok(())).await;
        assert!(matches!(busy, Err(CryptoError::Busy { .. })), "{busy:?}");
        release_tx.send(()).unwrap();
        held.await.unwrap().unwrap();
        gate.run(1, || Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn failures_of_all_clients_together_are_limited() {
        let hasher = PasswordHasher::new(TINY, gate(), 3).unwrap();
        let phc = hasher
            .hash(SecretString::from("right password"))
            .await
            .unwrap();
        for _ in 0..3 {
            let wrong = SecretString::from("wrong password");
            assert!(!hasher.verify(wrong, Some(phc.clone())).await.unwrap());
        }
        let right = SecretString::from("right password");
        let limited = hasher.verify(right, Some(phc)).await;
        assert!(
            matches!(limited, Err(CryptoError::Busy { retry_after_secs }) if retry_after_secs <= 60),
            "{limited:?}"
        );
    }
}
