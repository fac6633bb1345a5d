//! Tables as plain data, for copying one backend's rows into another (`copy`): a table's
//! columns with their types, and one stored value. Both backends read and write these; neither
//! knows the other.

/// A column's type, as both backends store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CellType {
    /// `BIGINT` / `INTEGER`.
    Integer,
    /// `TEXT`.
    Text,
    /// `BYTEA` / `BLOB`.
    Bytes,
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// An integer, or NULL.
    Integer(Option<i64>),
    /// Text, or NULL.
    Text(Option<String>),
    /// Bytes, or NULL.
    Bytes(Option<Vec<u8>>),
}

/// A table's columns as the target defines them.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Its name (lower-case ASCII letters and `_`: checked before it is put in SQL).
    pub(crate) name: String,
    /// `(name, type)` in the target's column order.
    pub(crate) columns: Vec<(String, CellType)>,
    /// The column filled by an identity sequence, if any.
    pub(crate) identity: Option<String>,
}

impl Table {
    /// The quoted column list, `"a", "b"`.
    pub(crate) fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether `name` is safe to put in SQL between double quotes.
pub(crate) fn plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}
