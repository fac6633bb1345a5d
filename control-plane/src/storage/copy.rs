//! Copying every table of a SQLite state into an empty PostgreSQL database, row for row, in
//! one snapshot of the source and one transaction on the target (`agentd migrate`, issue 14).
//!
//! The target's schema drives the copy: its columns and their types come from PostgreSQL's
//! `information_schema`, and each is read by name from the SQLite table of the same name. A
//! table or column on either side that the other lacks is refused before anything is written,
//! so no stored value is silently left behind. Ids are copied as they are (run events,
//! approvals and audit payloads refer to them), and identity sequences are moved past them.
//!
//! The skills' key-value store and effects journal ([`SKILL_TABLES`]) come from a second
//! SQLite file (`kv.db`, agent-runtime's) when the state has one, in the same target
//! transaction: on PostgreSQL they are tables of the shared database.

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

/// The skills' key-value store and effects journal: agent-runtime's `kv.db` on SQLite, tables
/// of the same database on PostgreSQL (migration 3).
pub(crate) const SKILL_TABLES: &[&str] = &["kv", "effects"];

/// What [`plan`] found to copy: the state's tables from the state file, the skill store's from
/// its own file (none when the state has no skill store; the target's tables stay empty then).
#[derive(Debug)]
pub(crate) struct Plan {
    state: Vec<Table>,
    skills: Vec<Table>,
}

/// Tables a freshly opened target already holds a row in: the empty log's anchor and tree
/// state, which the copy replaces with the source's.
const REPLACED: &[&str] = &["audit_anchor", "audit_log"];

/// Rows read and inserted at a time.
const PAGE_ROWS: i64 = 500;

/// How many rows of each table were copied, in [`TABLES`] order.
pub(crate) type Copied = Vec<(String, u64)>;

/// The tables to copy from `source` (and `skills`, the skill store, when the state has one) to
/// `target`, in [`TABLES`] then [`SKILL_TABLES`] order, after checking that both sides have
/// the same tables and columns and that `target` holds nothing but a fresh anchor and tree
/// state. Reads only.
///
/// # Errors
///
/// [`MigrateError::TargetNotEmpty`] naming the first table holding rows;
/// [`MigrateError::SchemaMismatch`] when a table or column exists on one side only or a
/// column has a type this build does not copy; [`MigrateError::Store`] when either side fails.
pub(crate) async fn plan(
    source: &mut SqliteUnit,
    mut skills: Option<&mut SqliteUnit>,
    target: &mut PostgresUnit,
    target_location: &str,
) -> Result<Plan, MigrateError> {
    let tables = target.tables().await?;
    let mismatch = |detail: String| MigrateError::SchemaMismatch { detail };
    for table in &tables {
        if !TABLES.contains(&table.name.as_str()) && !SKILL_TABLES.contains(&table.name.as_str()) {
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
    if let Some(skills) = skills.as_deref_mut() {
        for name in skills.table_names().await? {
            if !SKILL_TABLES.contains(&name.as_str()) {
                return Err(mismatch(format!(
                    "the skill store has table `{name}`, which this build does not know how to copy"
                )));
            }
        }
    }
    let mut ordered = Vec::with_capacity(TABLES.len());
    for name in TABLES {
        let table = target_table(&tables, name)?;
        let source_columns = source.column_names(name).await?;
        if source_columns.is_empty() {
            return Err(mismatch(format!("the source has no table `{name}`")));
        }
        same_columns(table, &source_columns, "source")?;
        ordered.push(table.clone());
    }
    let mut skill_tables = Vec::with_capacity(SKILL_TABLES.len());
    for name in SKILL_TABLES {
        let table = target_table(&tables, name)?;
        if let Some(skills) = skills.as_deref_mut() {
            let source_columns = skills.column_names(name).await?;
            // A skill store is created with both its tables; one without them holds nothing.
            if !source_columns.is_empty() {
                same_columns(table, &source_columns, "skill store")?;
                skill_tables.push(table.clone());
            }
        }
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
    for name in SKILL_TABLES {
        let rows = target.row_count(target_table(&tables, name)?).await?;
        if rows > 0 {
            return Err(MigrateError::TargetNotEmpty {
                location: target_location.to_owned(),
                table: (*name).to_owned(),
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
    Ok(Plan {
        state: ordered,
        skills: skill_tables,
    })
}

/// The target's table `name`.
fn target_table<'t>(tables: &'t [Table], name: &str) -> Result<&'t Table, MigrateError> {
    tables
        .iter()
        .find(|table| table.name == name)
        .ok_or_else(|| MigrateError::SchemaMismatch {
            detail: format!("the target has no table `{name}`"),
        })
}

/// Checks that the `side`'s columns of `table` are the target's, no more and no fewer.
fn same_columns(table: &Table, source_columns: &[String], side: &str) -> Result<(), MigrateError> {
    let name = &table.name;
    for column in source_columns {
        if !table.columns.iter().any(|(target, _)| target == column) {
            return Err(MigrateError::SchemaMismatch {
                detail: format!("the {side}'s `{name}.{column}` has no column to go to in the target"),
            });
        }
    }
    for (column, _) in &table.columns {
        if !source_columns.contains(column) {
            return Err(MigrateError::SchemaMismatch {
                detail: format!("the {side} has no column `{name}.{column}`"),
            });
        }
    }
    Ok(())
}

/// Copies what [`plan`] found from `source` (and `skills`, the skill store) into `target`,
/// replacing the fresh anchor and tree state, and checks each table's row count afterwards. Writes only through `target`'s
/// transaction: nothing is stored until the caller commits it.
///
/// # Errors
///
/// [`MigrateError::Store`] when either side fails or a count differs.
pub(crate) async fn copy_tables(
    source: &mut SqliteUnit,
    skills: Option<&mut SqliteUnit>,
    target: &mut PostgresUnit,
    plan: &Plan,
) -> Result<Copied, MigrateError> {
    let mut copied = copy_from(source, target, &plan.state).await?;
    if let Some(skills) = skills {
        copied.extend(copy_from(skills, target, &plan.skills).await?);
    }
    Ok(copied)
}

/// Copies `tables` from `source` into `target`, counting each.
async fn copy_from(
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
        // Both ends are counted: the source in the snapshot the pages were read from, so a
        // page lost on the way is caught as surely as a row the target did not keep.
        let held = source.row_count(table).await?;
        let stored = target.row_count(table).await?;
        if held != count {
            return Err(StoreError::Corrupt {
                detail: format!("the source's `{}` holds {held} rows but {count} were read", table.name),
            }
            .into());
        }
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
