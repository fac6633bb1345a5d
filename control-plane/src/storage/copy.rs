//! Copying every table of a SQLite state into an empty PostgreSQL database, row for row, in
//! one snapshot of the source and one transaction on the target (`agentd migrate`, issue 14).
//!
//! The target's schema drives the copy: its columns and their types come from PostgreSQL's
//! `information_schema`, and each is read by name from the SQLite table of the same name. A
//! table or column on either side that the other lacks is refused before anything is written,
//! so no stored value is silently left behind. Ids are copied as they are (run events,
//! approvals and audit payloads refer to them), and identity sequences are moved past them.

use super::postgres::PostgresUnit;
use super::sqlite::SqliteUnit;
use super::table::Table;
use crate::error::{MigrateError, StoreError};

/// The tables, in an order that inserts every row after the rows it refers to (`approvals`
/// before `approval_votes`; `approvals` itself in id order, so a parent precedes its children).
pub(crate) const TABLES: &[&str] = &[
    "audit",
    "audit_anchor",
    "audit_log",
    "approvals",
    "approval_votes",
    "run_events",
    "runs",
    "run_requests",
    "records",
    "autonomy_certificates",
    "autonomy_outcomes",
    "autonomy_demotions",
];

/// Tables a freshly opened target already holds a row in: the empty log's anchor and tree
/// state, which the copy replaces with the source's.
const REPLACED: &[&str] = &["audit_anchor", "audit_log"];

/// Rows read and inserted at a time.
const PAGE_ROWS: i64 = 500;

/// How many rows of each table were copied, in [`TABLES`] order.
pub(crate) type Copied = Vec<(String, u64)>;

/// The tables to copy from `source` to `target`, in [`TABLES`] order, after checking that
/// both sides have the same tables and columns and that `target` holds nothing but a fresh
/// anchor and tree state. Reads only.
///
/// # Errors
///
/// [`MigrateError::TargetNotEmpty`] naming the first table holding rows;
/// [`MigrateError::SchemaMismatch`] when a table or column exists on one side only or a
/// column has a type this build does not copy; [`MigrateError::Store`] when either side fails.
pub(crate) async fn plan(
    source: &mut SqliteUnit,
    target: &mut PostgresUnit,
    target_location: &str,
) -> Result<Vec<Table>, MigrateError> {
    let tables = target.tables().await?;
    let mismatch = |detail: String| MigrateError::SchemaMismatch { detail };
    for table in &tables {
        if !TABLES.contains(&table.name.as_str()) {
            return Err(mismatch(format!(
                "the target has table `{}`, which this build does not know how to copy",
                table.name
            )));
        }
    }
    for name in source.table_names().await? {
        if !TABLES.contains(&name.as_str()) {
            return Err(mismatch(format!(
                "the source has table `{name}`, which this build does not know how to copy"
            )));
        }
    }
    let mut ordered = Vec::with_capacity(TABLES.len());
    for name in TABLES {
        let table = tables
            .iter()
            .find(|table| table.name == *name)
            .ok_or_else(|| mismatch(format!("the target has no table `{name}`")))?;
        let source_columns = source.column_names(name).await?;
        if source_columns.is_empty() {
            return Err(mismatch(format!("the source has no table `{name}`")));
        }
        for column in &source_columns {
            if !table.columns.iter().any(|(target, _)| target == column) {
                return Err(mismatch(format!(
                    "the source's `{name}.{column}` has no column to go to in the target"
                )));
            }
        }
        for (column, _) in &table.columns {
            if !source_columns.contains(column) {
                return Err(mismatch(format!("the source has no column `{name}.{column}`")));
            }
        }
        ordered.push(table.clone());
    }
    for table in &ordered {
        if REPLACED.contains(&table.name.as_str()) {
            continue;
        }
        let rows = target.row_count(table).await?;
        if rows > 0 {
            return Err(MigrateError::TargetNotEmpty {
                location: target_location.to_owned(),
                table: table.name.clone(),
                rows,
            });
        }
    }
    if target.anchored_entries().await? > 0 {
        return Err(MigrateError::TargetNotEmpty {
            location: target_location.to_owned(),
            table: "audit_anchor".to_owned(),
            rows: 1,
        });
    }
    Ok(ordered)
}

/// Copies `tables` (from [`plan`]) from `source` into `target`, replacing the fresh anchor and
/// tree state, and checks each table's row count afterwards. Writes only through `target`'s
/// transaction: nothing is stored until the caller commits it.
///
/// # Errors
///
/// [`MigrateError::Store`] when either side fails or a count differs.
pub(crate) async fn copy_tables(
    source: &mut SqliteUnit,
    target: &mut PostgresUnit,
    tables: &[Table],
) -> Result<Copied, MigrateError> {
    let mut copied = Vec::with_capacity(tables.len());
    for table in tables {
        if REPLACED.contains(&table.name.as_str()) {
            target.clear(table).await?;
        }
        let mut after = i64::MIN;
        let mut count = 0u64;
        loop {
            let page = source.table_page(table, after, PAGE_ROWS).await?;
            let Some(&(last, _)) = page.last() else { break };
            after = last;
            count += page.len() as u64;
            target
                .insert_rows(table, page.into_iter().map(|(_, row)| row).collect())
                .await?;
        }
        if table.identity.is_some() {
            target.move_identity_past_rows(table).await?;
        }
        let stored = target.row_count(table).await?;
        if stored != count {
            return Err(StoreError::Corrupt {
                detail: format!(
                    "{count} rows of `{}` were copied but the target holds {stored}",
                    table.name
                ),
            }
            .into());
        }
        copied.push((table.name.clone(), count));
    }
    Ok(copied)
}
