//! Enforcement changes (admin only, audited before they take effect) and the error budget's
//! demotions.

use std::sync::Arc;

use super::{ControlPlane, audit_log};
use crate::audit::{AuditEvent, Demotion, EnforcementChange};
use crate::autonomy::{self, AutonomyCertificate, AutonomyLevel, AutonomyLimits, StepResult};
use crate::error::StoreError;
use crate::governance::{PolicyEngine, PolicyError};
use crate::identity::{IdentityError, Principal, Role, with_system_identity};
use crate::storage::LockKey;

/// Why an enforcement change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The principal is not an admin.
    #[error("`{principal}` is not an admin; changing enforcement needs the `admin` role")]
    NotAdmin {
        /// Who tried.
        principal: String,
    },
    /// The new policy set does not load; the old one stays in force.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The change could not be audited; the old setting stays in force.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate could not be signed.
    #[error("cannot sign the autonomy certificate: {0}")]
    Certificate(#[from] IdentityError),
}

impl AdminError {
    /// Whether retrying can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::NotAdmin { .. } | AdminError::Certificate(_) => false,
            AdminError::Policy(error) => error.is_retryable(),
            AdminError::Store(error) => error.is_retryable(),
        }
    }
}

fn require_admin(principal: &Principal) -> Result<(), AdminError> {
    if principal.has_role(Role::Admin) {
        Ok(())
    } else {
        Err(AdminError::NotAdmin {
            principal: principal.to_string(),
        })
    }
}

/// The subject of the system job that records demotions.
const DEMOTION_JOB: &str = "autonomy-demotion";

impl ControlPlane {
    /// Changes the error budget and spending budgets: an enforcement change (admin only,
    /// audited before it takes effect).
    ///
    /// # Errors
    ///
    /// [`AdminError::NotAdmin`] or [`AdminError::Store`]; nothing changes then.
    pub async fn set_limits(&self, admin: &Principal, limits: AutonomyLimits) -> Result<(), AdminError> {
        require_admin(admin)?;
        let event = AuditEvent::EnforcementChange(EnforcementChange::AutonomyLimits {
            old: self.limits(),
            new: limits,
        });
        self.append_audit(&event, admin).await?;
        match self.limits.write() {
            Ok(mut guard) => *guard = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
        Ok(())
    }

    /// Issues a signed autonomy certificate capping `agent`'s level for `skill` (`*` for all)
    /// in the admin's tenant for `ttl_secs`, and stores it (audited, in one unit of work).
    ///
    /// # Errors
    ///
    /// [`AdminError::NotAdmin`], [`AdminError::Store`]; an identity error is reported as
    /// [`AdminError::Certificate`].
    pub async fn grant_autonomy(
        &self,
        admin: &Principal,
        agent: &str,
        skill: &str,
        level: AutonomyLevel,
        ttl_secs: u64,
    ) -> Result<String, AdminError> {
        require_admin(admin)?;
        let now = self.now_ms();
        let issued_at = u64::try_from(now / 1_000).unwrap_or(0);
        let certificate = AutonomyCertificate {
            agent: agent.to_owned(),
            skill: skill.to_owned(),
            tenant: admin.tenant.clone(),
            level,
            issued_by: admin.subject.clone(),
            issued_at,
            expires_at: issued_at.saturating_add(ttl_secs),
        };
        let token = self.authority.sign_certificate(&certificate)?;
        let mut unit = self.write().await?;
        let id = unit.insert_certificate(&certificate, &token, now).await?;
        let event = AuditEvent::EnforcementChange(EnforcementChange::AutonomyCertificate {
            certificate_id: id,
            agent: certificate.agent.clone(),
            skill: certificate.skill.clone(),
            level,
            expires_at: certificate.expires_at,
        });
        audit_log::append(&mut *unit, self.store.anchor_key(), &event, admin, now).await?;
        unit.commit().await?;
        Ok(token)
    }

    /// Replaces the policy set: an enforcement change, so it needs an admin and is audited
    /// (old and new version) before it takes effect. Decisions already made keep the version
    /// they were made under, so approvals bound to the old version can no longer be consumed.
    ///
    /// # Errors
    ///
    /// [`AdminError::NotAdmin`], [`AdminError::Policy`] when the new set does not load (every
    /// problem listed), [`AdminError::Store`] when the change cannot be audited. The old set
    /// stays in force on any error.
    pub async fn replace_policy(&self, admin: &Principal, text: &str, origin: &str) -> Result<String, AdminError> {
        require_admin(admin)?;
        let engine = PolicyEngine::from_text(text, origin)?;
        let event = AuditEvent::EnforcementChange(EnforcementChange::PolicySet {
            origin: origin.to_owned(),
            old_version: self.policy().version().to_owned(),
            new_version: engine.version().to_owned(),
            policies: engine.len(),
        });
        self.append_audit(&event, admin).await?;
        let version = engine.version().to_owned();
        match self.policy.write() {
            Ok(mut guard) => *guard = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        Ok(version)
    }

    /// Records how a step of `agent` for `skill` ended, for autonomy's error budget: failures
    /// and escalations count against it, and exceeding it ([`autonomy::demotion_due`]) demotes
    /// the agent one level, audited as `system:autonomy-demotion`. Returns whether a demotion
    /// happened.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is recorded then.
    pub async fn record_outcome(&self, agent: &Principal, skill: &str, result: StepResult) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let budget = self.limits().error_budget;
        let mut unit = self.write().await?;
        // The count and the demotion it may cause are one decision per agent and skill.
        unit.lock(LockKey::Autonomy {
            tenant: &agent.tenant,
            agent: &agent.subject,
            skill,
        })
        .await?;
        unit.insert_step_result(&agent.tenant, &agent.subject, skill, now, result)
            .await?;
        let last_demotion = unit.last_demotion(&agent.tenant, &agent.subject, skill).await?;
        let since = autonomy::budget_window_start(now, budget, last_demotion);
        let bad = unit
            .bad_results_since(&agent.tenant, &agent.subject, skill, since)
            .await?;
        let demotion = autonomy::demotion_due(bad, budget);
        if let Some(reason) = &demotion {
            unit.insert_demotion(&agent.tenant, &agent.subject, skill, now, reason)
                .await?;
            let system =
                with_system_identity(DEMOTION_JOB, &agent.tenant, &[Role::Admin]).map_err(StoreError::corrupt)?;
            let event = AuditEvent::AutonomyDemotion(Demotion {
                agent: agent.subject.clone(),
                skill: skill.to_owned(),
                reason: reason.clone(),
            });
            audit_log::append(&mut *unit, self.store.anchor_key(), &event, &system, now).await?;
        }
        unit.commit().await?;
        Ok(demotion.is_some())
    }
}
