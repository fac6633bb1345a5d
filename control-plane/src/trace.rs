//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` that follows a
//! run through the control plane, the runtime, the guest and every audit record.

use std::fmt;
use std::str::FromStr;

/// A parsed `traceparent`: version `00`, 16-byte trace id, 8-byte parent (span) id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// Trace id, never all zeros.
    pub trace_id: [u8; 16],
    /// Span id, never all zeros.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// Why a `traceparent` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent `{0}`: expected `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids")]
pub struct TraceParseError(pub String);

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // A failing OS random source leaves zeros; fix them up so the id stays valid (W3C forbids
    // all-zero ids). Trace ids are correlation handles, not secrets.
    if getrandom::fill(&mut bytes).is_err() || bytes.iter().all(|b| *b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

impl TraceContext {
    /// A new sampled root context with random ids.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: random_bytes(),
            span_id: random_bytes(),
            flags: 1,
        }
    }

    /// A child: same trace, new span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: random_bytes(),
            ..*self
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

impl FromStr for TraceContext {
    type Err = TraceParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || TraceParseError(text.to_owned());
        let parts: Vec<&str> = text.split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return Err(error());
        };
        let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if *version != "00" || ![trace, span, flags].iter().all(|part| lower_hex(part)) {
            return Err(error());
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag_byte = [0u8; 1];
        hex::decode_to_slice(trace, &mut trace_id).map_err(|_| error())?;
        hex::decode_to_slice(span, &mut span_id).map_err(|_| error())?;
        hex::decode_to_slice(flags, &mut flag_byte).map_err(|_| error())?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err(error());
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags: flag_byte[0],
        })
    }
}

/// A random id with a prefix, e.g. `run-5f0c9a1e2b3d4c6f`: 64 random bits in hex.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(random_bytes::<8>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_bad_input() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context: TraceContext = text.parse().unwrap();
        assert_eq!(context.to_string(), text);
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceContext>().is_err(), "{bad}");
        }
        assert!(TraceContext::new_root().to_string().parse::<TraceContext>().is_ok());
    }
}
