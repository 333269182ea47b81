//! Periodic pruning: join tokens that expired unused, and (when
//! `prune_attested_agents_expired_for` is set) agents whose SVID expired longer ago than that,
//! which can never renew and only clutter `agent list`. Banned agents are never pruned:
//! deleting the record would lift the ban.
//!
//! Agent pruning mirrors SPIRE's `prune_attested_nodes_expired_for`, and is off by default as
//! there.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sigil_core::x509::unix_secs;
use tokio::sync::watch;

use crate::state::State;
use crate::status::ApiError;

/// What one pruning pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Expired join tokens deleted.
    pub join_tokens: usize,
    /// Agents deleted.
    pub agents: usize,
}

/// The SVID expiry at or before which an agent is pruned at `now`, or `None` when agent
/// pruning is off.
pub fn agent_cutoff(now: SystemTime, expired_for: Option<Duration>) -> Option<i64> {
    let expired_for = i64::try_from(expired_for?.as_secs()).unwrap_or(i64::MAX);
    Some(unix_secs(now).saturating_sub(expired_for))
}

/// One pass at `now`.
pub async fn prune_once(st: &State, now: SystemTime) -> Result<Pruned, ApiError> {
    let now_s = unix_secs(now);
    let join_tokens = st.store(move |s| s.prune_join_tokens(now_s)).await?;
    let mut agents = 0;
    if let Some(cutoff) = agent_cutoff(now, st.cfg.prune_attested_agents_expired_for) {
        // Under the write lock, so the revision is announced in store order; the store
        // re-checks every agent in the transaction that deletes it.
        let _w = st.write_lock.lock().await;
        let removed = st.store(move |s| s.prune_agents(cutoff)).await?;
        if !removed.is_empty() {
            let rev = st.store(|s| s.revision()).await?;
            st.registry.bump(rev);
        }
        for id in &removed {
            tracing::info!(agent_id = %id, "pruned agent whose SVID expired long ago");
        }
        agents = removed.len();
    }
    if join_tokens > 0 {
        tracing::info!(count = join_tokens, "pruned expired join tokens");
    }
    Ok(Pruned {
        join_tokens,
        agents,
    })
}

/// Prunes every `prune_interval` until shutdown.
pub async fn run(st: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(st.cfg.prune_interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = prune_once(&st, st.now()).await {
            tracing::warn!(error = %e, "pruning failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(agent_cutoff(now, None), None);
        assert_eq!(
            agent_cutoff(now, Some(Duration::from_secs(3600))),
            Some(10_000 - 3600)
        );
        assert_eq!(
            agent_cutoff(now, Some(Duration::from_secs(u64::MAX))),
            Some(10_000 - i64::MAX)
        );
    }
}
