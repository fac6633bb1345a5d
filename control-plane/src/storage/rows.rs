//! The row traits both backends share: approvals, runs, records and autonomy in one SQL text
//! that SQLite and PostgreSQL both accept (`$n` parameters, `ON CONFLICT`, `RETURNING`,
//! `CAST`), implemented for each backend's unit of work by [`impl_rows`]. Only the audit rows,
//! which each backend tunes for its own round trips, and the schema differ per backend.

/// Implements `ApprovalRows`, `RunRows`, `RecordRows` and `AutonomyRows` for `$unit`: a unit of
/// work with a sqlx `transaction` and an `inserted` list of run events, in a module where
/// `classify` turns that backend's `sqlx::Error` into a `StoreError`.
macro_rules! impl_rows {
    ($unit:ty) => {
        const _: () = {
            use async_trait::async_trait;

            use $crate::autonomy::{AutonomyCertificate, StepResult};
            use $crate::error::StoreError;
            use $crate::hitl::{ApprovalRequest, ApprovalStatus, ApprovalTransition, NewApproval, Vote, decisions_text};
            use $crate::records::{Insertion, Record};
            use $crate::run::{RequestKey, RunEvent, RunRecord};
            use $crate::storage::columns::{self, APPROVAL_COLUMNS, RUN_COLUMNS, RUN_EVENT_COLUMNS, signed};
            use $crate::storage::{ApprovalRows, AutonomyRows, RecordRows, RunRows};

            #[async_trait]
            impl ApprovalRows for $unit {
                async fn insert_approval(&mut self, request: &NewApproval, created_at_ms: i64) -> Result<i64, StoreError> {
                    let json = |value: serde_json::Result<String>| value.map_err(StoreError::corrupt);
                    sqlx::query_scalar(
                        "INSERT INTO approvals (created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id,
                             traceparent, skill_json, skill_id, skill_digest, input_digest, request_json, policy_version, reviewer_role,
                             quorum_required, deny_threshold, expires_at_ms, allowed_decisions, parent_id, status)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, 'pending')
                         RETURNING id",
                    )
                    .bind(created_at_ms)
                    .bind(&request.requester.tenant)
                    .bind(&request.requester.subject)
                    .bind(json(serde_json::to_string(&request.requester.roles))?)
                    .bind(&request.acting_agent)
                    .bind(&request.run_id)
                    .bind(&request.step_id)
                    .bind(&request.traceparent)
                    .bind(json(serde_json::to_string(&request.skill))?)
                    .bind(&request.skill.id)
                    .bind(&request.skill.digest)
                    .bind(&request.input_digest)
                    .bind(&request.request_json)
                    .bind(&request.policy_version)
                    .bind(request.reviewer_role.as_str())
                    .bind(i64::from(request.quorum.required.max(1)))
                    .bind(i64::from(request.quorum.deny_threshold.max(1)))
                    .bind(request.expires_at_ms)
                    .bind(decisions_text(&request.allowed_decisions))
                    .bind(request.parent_id)
                    .fetch_one(&mut *self.transaction)
                    .await
                    .map_err(classify)
                }

                async fn approval(&mut self, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
                    let row = sqlx::query(&format!("{APPROVAL_COLUMNS} WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&mut *self.transaction)
                        .await
                        .map_err(classify)?;
                    let Some(row) = row else { return Ok(None) };
                    let mut request = columns::approval(&row)?;
                    let votes = sqlx::query(
                        "SELECT reviewer, decision, reason, at_ms FROM approval_votes WHERE approval_id = $1 ORDER BY at_ms, reviewer",
                    )
                    .bind(id)
                    .fetch_all(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    request.votes = votes.iter().map(columns::vote).collect::<Result<_, _>>()?;
                    Ok(Some(request))
                }

                async fn approval_ids(&mut self, tenant: &str, status: Option<ApprovalStatus>) -> Result<Vec<i64>, StoreError> {
                    sqlx::query_scalar(
                        "SELECT id FROM approvals WHERE tenant = $1 AND (CAST($2 AS TEXT) IS NULL OR status = $2) ORDER BY id DESC",
                    )
                    .bind(tenant)
                    .bind(status.map(ApprovalStatus::as_str))
                    .fetch_all(&mut *self.transaction)
                    .await
                    .map_err(classify)
                }

                async fn count_approvals(&mut self, status: ApprovalStatus) -> Result<i64, StoreError> {
                    sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE status = $1")
                        .bind(status.as_str())
                        .fetch_one(&mut *self.transaction)
                        .await
                        .map_err(classify)
                }

                async fn due_approval_ids(&mut self, now_ms: i64) -> Result<Vec<i64>, StoreError> {
                    sqlx::query_scalar(
                        "SELECT id FROM approvals WHERE status IN ('pending', 'approved') AND expires_at_ms <= $1 ORDER BY id",
                    )
                    .bind(now_ms)
                    .fetch_all(&mut *self.transaction)
                    .await
                    .map_err(classify)
                }

                async fn insert_vote(&mut self, id: i64, vote: &Vote) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO approval_votes (approval_id, reviewer, decision, reason, at_ms) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(&vote.reviewer)
                    .bind(vote.decision.as_str())
                    .bind(&vote.reason)
                    .bind(vote.at_ms)
                    .execute(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    Ok(())
                }

                async fn apply_transition(&mut self, transition: &ApprovalTransition) -> Result<bool, StoreError> {
                    let updated = match &transition.decided {
                        Some(decided) => sqlx::query(
                            "UPDATE approvals SET status = $1, decided_by = $2, decided_at_ms = $3, decision_reason = $4,
                                 modified_request_json = COALESCE($5, modified_request_json) WHERE id = $6 AND status = $7",
                        )
                        .bind(transition.to.as_str())
                        .bind(&decided.by)
                        .bind(transition.at_ms)
                        .bind(&decided.reason)
                        .bind(&decided.modified_request_json)
                        .bind(transition.id)
                        .bind(transition.from.as_str()),
                        None => sqlx::query("UPDATE approvals SET status = $1, consumed_at_ms = $2 WHERE id = $3 AND status = $4")
                            .bind(transition.to.as_str())
                            .bind(transition.at_ms)
                            .bind(transition.id)
                            .bind(transition.from.as_str()),
                    }
                    .execute(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    Ok(updated.rows_affected() == 1)
                }
            }

            #[async_trait]
            impl RunRows for $unit {
                async fn run_events(&mut self, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
                    let rows = sqlx::query(&format!("{RUN_EVENT_COLUMNS} WHERE run_id = $1 ORDER BY lamport"))
                        .bind(run_id)
                        .fetch_all(&mut *self.transaction)
                        .await
                        .map_err(classify)?;
                    rows.iter().map(columns::run_event).collect()
                }

                async fn insert_run_event(&mut self, event: &RunEvent) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO run_events (run_id, lamport, event_id, node_id, traceparent, schema_version, recorded_at_ms,
                             event_type, payload, fencing_token) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(&event.run_id)
                    .bind(signed(event.lamport))
                    .bind(&event.event_id)
                    .bind(&event.node_id)
                    .bind(&event.traceparent)
                    .bind(i64::from(event.schema_version))
                    .bind(event.recorded_at_ms)
                    .bind(event.payload.name())
                    .bind(serde_json::to_string(&event.payload).map_err(StoreError::corrupt)?)
                    .bind(signed(event.fencing_token))
                    .execute(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    self.inserted.push(event.clone());
                    Ok(())
                }

                async fn run_ids(&mut self) -> Result<Vec<String>, StoreError> {
                    sqlx::query_scalar("SELECT DISTINCT run_id FROM run_events ORDER BY run_id")
                        .fetch_all(&mut *self.transaction)
                        .await
                        .map_err(classify)
                }

                async fn run_record(&mut self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
                    let row = sqlx::query(&format!("{RUN_COLUMNS} WHERE run_id = $1"))
                        .bind(run_id)
                        .fetch_optional(&mut *self.transaction)
                        .await
                        .map_err(classify)?;
                    row.as_ref().map(columns::run_record).transpose()
                }

                async fn put_run_record(&mut self, record: &RunRecord) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO runs (run_id, tenant, state, owner, lease_expires_at_ms, fencing_token, deadline_ms, approval_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, owner = excluded.owner,
                             lease_expires_at_ms = excluded.lease_expires_at_ms, fencing_token = excluded.fencing_token,
                             deadline_ms = excluded.deadline_ms, approval_id = excluded.approval_id",
                    )
                    .bind(&record.run_id)
                    .bind(&record.tenant)
                    .bind(record.state.as_str())
                    .bind(&record.owner)
                    .bind(record.lease_expires_at_ms)
                    .bind(signed(record.fencing_token))
                    .bind(record.deadline_ms)
                    .bind(record.approval_id)
                    .execute(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    Ok(())
                }

                async fn replace_run_record(&mut self, record: &RunRecord, expected_token: u64) -> Result<bool, StoreError> {
                    // The fencing check is in the statement: a node whose token moved on changes nothing.
                    let updated = sqlx::query(
                        "UPDATE runs SET state = $1, owner = $2, lease_expires_at_ms = $3, fencing_token = $4, deadline_ms = $5,
                             approval_id = $6
                         WHERE run_id = $7 AND fencing_token = $8",
                    )
                    .bind(record.state.as_str())
                    .bind(&record.owner)
                    .bind(record.lease_expires_at_ms)
                    .bind(signed(record.fencing_token))
                    .bind(record.deadline_ms)
                    .bind(record.approval_id)
                    .bind(&record.run_id)
                    .bind(signed(expected_token))
                    .execute(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    Ok(updated.rows_affected() == 1)
                }

                async fn runs_needing_attention(&mut self, now_ms: i64, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT r.run_id, r.tenant, r.state, r.owner, r.lease_expires_at_ms, r.fencing_token, r.deadline_ms,
                                r.approval_id
                         FROM runs r LEFT JOIN approvals a ON a.id = r.approval_id
                         WHERE r.state NOT IN ('succeeded', 'failed', 'cancelled', 'timed-out')
                           AND (
                             (r.owner IS NOT NULL AND r.lease_expires_at_ms < $1)
                             OR (r.owner IS NULL AND r.state IN ('pending', 'running'))
                             OR (r.owner IS NULL AND r.state IN ('awaiting-approval', 'escalated')
                                 AND (a.id IS NULL OR a.status != 'pending' OR a.expires_at_ms <= $1))
                           )
                         ORDER BY r.lease_expires_at_ms, r.run_id LIMIT $2",
                    )
                    .bind(now_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    rows.iter().map(columns::run_record).collect()
                }

                async fn run_records(&mut self, tenant: &str) -> Result<Vec<RunRecord>, StoreError> {
                    let rows = sqlx::query(&format!("{RUN_COLUMNS} WHERE tenant = $1 ORDER BY run_id"))
                        .bind(tenant)
                        .fetch_all(&mut *self.transaction)
                        .await
                        .map_err(classify)?;
                    rows.iter().map(columns::run_record).collect()
                }

                async fn run_request(&mut self, tenant: &str, key: &str) -> Result<Option<(String, String)>, StoreError> {
                    sqlx::query_as("SELECT request_digest, run_id FROM run_requests WHERE tenant = $1 AND idempotency_key = $2")
                        .bind(tenant)
                        .bind(key)
                        .fetch_optional(&mut *self.transaction)
                        .await
                        .map_err(classify)
                }

                async fn insert_run_request(
                    &mut self,
                    tenant: &str,
                    key: &RequestKey,
                    run_id: &str,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO run_requests (tenant, idempotency_key, request_digest, run_id, created_at_ms)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(tenant)
                    .bind(&key.key)
                    .bind(&key.request_digest)
                    .bind(run_id)
                    .bind(now_ms)
                    .execute(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    Ok(())
                }
            }

            #[async_trait]
            impl RecordRows for $unit {
                async fn insert_record(&mut self, record: &Record, recorded_at_ms: i64) -> Result<Insertion, StoreError> {
                    let inserted: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO records (tenant, trace_id, span_id, event_type, run_id, content_hash, idempotency_key, content,
                             cost_micro_eur, cost_status, pricing_version, recorded_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                         ON CONFLICT DO NOTHING RETURNING id",
                    )
                    .bind(&record.tenant)
                    .bind(&record.trace_id)
                    .bind(&record.span_id)
                    .bind(&record.event_type)
                    .bind(&record.run_id)
                    .bind(record.content_hash())
                    .bind(record.idempotency_key())
                    .bind(record.canonical_content())
                    .bind(record.cost.as_ref().and_then(|cost| cost.micro_eur))
                    .bind(record.cost.as_ref().map(|cost| cost.status.as_str()))
                    .bind(record.cost.as_ref().map(|cost| cost.pricing_version.as_str()))
                    .bind(recorded_at_ms)
                    .fetch_optional(&mut *self.transaction)
                    .await
                    .map_err(classify)?;
                    if let Some(id) = inserted {
                        return Ok(Insertion::Inserted { id });
                    }
                    let (id, content_hash): (i64, String) = sqlx::query_as(
                        "SELECT id, content_hash FROM records WHERE tenant = $1 AND trace_id = $2 AND span_id = $3 AND event_type = $4",
                    )
                    .bind(&record.tenant)
                    .bind(&record.trace_id)
                    .bind(&record.span_id)
                    .bind(&record.event_type)
                    .fetch_optional(&mut *self.transaction)
                    .await
                    .map_err(classify)?
                    .ok_or_else(|| StoreError::corrupt("a conflicting record vanished"))?;
                    Ok(Insertion::Existing { id, content_hash })
                }

                async fn record_count(&mut self, tenant: &str) -> Result<i64, StoreError> {
                    sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE tenant = $1")
                        .bind(tenant)
                        .fetch_one(&mut *self.transaction)
                        .await
                        .map_err(classify)
                }

                async fn spent_micro_eur(&mut self, tenant: &str, run_id: Option<&str>) -> Result<i64, StoreError> {
                    sqlx::query_scalar(
                        "SELECT CAST(COALESCE(SUM(cost_micro_eur), 0) AS BIGINT) FROM records
                         WHERE tenant = $1 AND (CAST($2 AS TEXT) IS NULL OR run_id = $2) AND cost_status = 'calculated'",
                    )
                    .bind(tenant)
                    .bind(run_id)
                    .fetch_one(&mut *self.transaction)
                    .await
                    .map_err(classify)
                }
            }

            #[async_trait]
            impl AutonomyRows for $unit {
                async fn insert_certificate(
                    &mut self,
                    certificate: &AutonomyCertificate,
                    token: &str,
                    issued_at_ms: i64,
                ) -> Result<i64, StoreError> {
                    sqlx::query_scalar(
                        "INSERT INTO autonomy_certificates (tenant, agent, skill, token, issued_at_ms) VALUES ($1, $2, $3, $4, $5)
                         RETURNING id",
                    )
                    .bind(&certificate.tenant)
                    .bind(&certificate.agent)
                    .bind(&certificate.skill)
                    .bind(token)
                    .bind(issued_at_ms)
                    .fetch_one(&mut *self.transaction)
                    .await
                    .map_err(classify)
                }

                async fn certificates(&mut self, tenant: &str, agent: &str, skill: &str) -> Result<Vec<(String, i64)>, StoreError> {
                    sqlx::query_as(
                        "SELECT token, issued_at_ms FROM autonomy_certificates
                         WHERE tenant = $1 AND agent = $2 AND (skill = $3 OR skill = '*') AND revoked_at_ms IS NULL
                         ORDER BY skill = '*', id DESC",
                    )
                    .bind(tenant)
                    .bind(agent)
                    .bind(skill)
                    .fetch_all(&mut *self.transaction)
                    .await
                    .map_err(classify)
                }

                async fn insert_step_result(
                    &mut self,
                    tenant: &str,
                    agent: &str,
                    skill: &str,
                    at_ms: i64,
                    result: StepResult,
                ) -> Result<(), StoreError> {
                    self.insert_agent_row(
                        "INSERT INTO autonomy_outcomes (tenant, agent, skill, at_ms, kind) VALUES ($1, $2, $3, $4, $5)",
                        (tenant, agent, skill, at_ms),
                        result.as_str(),
                    )
                    .await
                }

                async fn bad_results_since(
                    &mut self,
                    tenant: &str,
                    agent: &str,
                    skill: &str,
                    since_ms: i64,
                ) -> Result<u32, StoreError> {
                    self.count_since(
                        "SELECT COUNT(*) FROM autonomy_outcomes WHERE tenant = $1 AND agent = $2 AND skill = $3 AND at_ms >= $4
                         AND kind IN ('failure', 'escalation')",
                        (tenant, agent, skill, since_ms),
                    )
                    .await
                }

                async fn last_demotion(&mut self, tenant: &str, agent: &str, skill: &str) -> Result<Option<i64>, StoreError> {
                    sqlx::query_scalar("SELECT MAX(at_ms) FROM autonomy_demotions WHERE tenant = $1 AND agent = $2 AND skill = $3")
                        .bind(tenant)
                        .bind(agent)
                        .bind(skill)
                        .fetch_one(&mut *self.transaction)
                        .await
                        .map_err(classify)
                }

                async fn demotions_since(
                    &mut self,
                    tenant: &str,
                    agent: &str,
                    skill: &str,
                    since_ms: i64,
                ) -> Result<u32, StoreError> {
                    self.count_since(
                        "SELECT COUNT(*) FROM autonomy_demotions WHERE tenant = $1 AND agent = $2 AND skill = $3 AND at_ms >= $4",
                        (tenant, agent, skill, since_ms),
                    )
                    .await
                }

                async fn insert_demotion(
                    &mut self,
                    tenant: &str,
                    agent: &str,
                    skill: &str,
                    at_ms: i64,
                    reason: &str,
                ) -> Result<(), StoreError> {
                    self.insert_agent_row(
                        "INSERT INTO autonomy_demotions (tenant, agent, skill, at_ms, reason) VALUES ($1, $2, $3, $4, $5)",
                        (tenant, agent, skill, at_ms),
                        reason,
                    )
                    .await
                }
            }

            impl $unit {
                /// Runs a `COUNT(*)` over one agent's rows for one skill at or after a time.
                async fn count_since(
                    &mut self,
                    sql: &str,
                    (tenant, agent, skill, since_ms): (&str, &str, &str, i64),
                ) -> Result<u32, StoreError> {
                    let rows: i64 = sqlx::query_scalar(sql)
                        .bind(tenant)
                        .bind(agent)
                        .bind(skill)
                        .bind(since_ms)
                        .fetch_one(&mut *self.transaction)
                        .await
                        .map_err(classify)?;
                    Ok(u32::try_from(rows).unwrap_or(u32::MAX))
                }

                /// Inserts one agent's row for one skill at a time, with one more text column.
                async fn insert_agent_row(
                    &mut self,
                    sql: &str,
                    (tenant, agent, skill, at_ms): (&str, &str, &str, i64),
                    last: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(sql)
                        .bind(tenant)
                        .bind(agent)
                        .bind(skill)
                        .bind(at_ms)
                        .bind(last)
                        .execute(&mut *self.transaction)
                        .await
                        .map_err(classify)?;
                    Ok(())
                }
            }
        };
    };
}
pub(crate) use impl_rows;
