//! What a guest wrote to its WASI stdout and stderr: the last [`TAIL_BYTES`] of each, kept so a
//! trap can say what the guest said before it (a Python traceback, a JavaScript exception, a
//! Rust panic message). Writes never fail and never block, whatever their size: older bytes are
//! dropped, and the totals are counted.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept of each stream, the newest ones.
pub const TAIL_BYTES: usize = 2048;

/// Most bytes one `write` may offer the guest (`check-write`); any amount is accepted.
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
    total: u64,
}

/// A stream keeping the newest [`TAIL_BYTES`] written to it; clones share the buffer.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputTail(Arc<Mutex<Tail>>);

impl OutputTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tail.total = tail.total.saturating_add(bytes.len() as u64);
        let keep = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (tail.bytes.len() + keep.len()).saturating_sub(TAIL_BYTES);
        tail.bytes.drain(..overflow);
        tail.bytes.extend(keep);
    }

    fn clear(&self) {
        let mut tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tail.bytes.clear();
        tail.total = 0;
    }

    /// The tail as text (invalid UTF-8 replaced, a character cut at the front dropped) and the
    /// bytes written in all.
    fn snapshot(&self) -> (String, u64) {
        let tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (front, back) = tail.bytes.as_slices();
        let mut bytes = Vec::with_capacity(tail.bytes.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        if tail.total > bytes.len() as u64 {
            // The front was cut: skip UTF-8 continuation bytes of a character begun before it.
            let start = bytes.iter().take(3).take_while(|byte| (**byte & 0xC0) == 0x80).count();
            bytes.drain(..start);
        }
        (String::from_utf8_lossy(&bytes).into_owned(), tail.total)
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputTail {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for OutputTail {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The guest's stdout and stderr of one invocation: the newest [`TAIL_BYTES`] of each, and how
/// many bytes each received in all. Attached to a trap's outcome and so to its audit entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestOutput {
    /// The end of stdout (UTF-8, invalid sequences replaced).
    pub stdout: String,
    /// Bytes written to stdout in all.
    pub stdout_bytes: u64,
    /// The end of stderr.
    pub stderr: String,
    /// Bytes written to stderr in all.
    pub stderr_bytes: u64,
}

/// The two streams of one store.
#[derive(Debug, Clone, Default)]
pub(crate) struct GuestStreams {
    pub(crate) stdout: OutputTail,
    pub(crate) stderr: OutputTail,
}

impl GuestStreams {
    /// Forgets what was written (a warm instance's next call starts empty).
    pub(crate) fn clear(&self) {
        self.stdout.clear();
        self.stderr.clear();
    }

    /// What the guest wrote, or `None` when it wrote nothing.
    pub(crate) fn output(&self) -> Option<GuestOutput> {
        let (stdout, stdout_bytes) = self.stdout.snapshot();
        let (stderr, stderr_bytes) = self.stderr.snapshot();
        (stdout_bytes > 0 || stderr_bytes > 0).then_some(GuestOutput {
            stdout,
            stdout_bytes,
            stderr,
            stderr_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_newest_bytes_and_counts_all() {
        let tail = OutputTail::default();
        tail.push(b"first line\n");
        assert_eq!(tail.snapshot(), ("first line\n".to_owned(), 11));
        let big = "x".repeat(TAIL_BYTES * 3);
        tail.push(big.as_bytes());
        tail.push(b"Traceback: boom\n");
        let (text, total) = tail.snapshot();
        assert_eq!(total, 11 + big.len() as u64 + 16);
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("xTraceback: boom\n"), "{text}");
    }

    #[test]
    fn many_small_writes_keep_exactly_the_last_bytes() {
        let tail = OutputTail::default();
        let mut all = Vec::new();
        for index in 0..5_000_u32 {
            let line = format!("{index}\n");
            all.extend_from_slice(line.as_bytes());
            tail.push(line.as_bytes());
        }
        let (text, total) = tail.snapshot();
        assert_eq!(total, all.len() as u64);
        assert_eq!(text.as_bytes(), &all[all.len() - TAIL_BYTES..]);
    }

    #[test]
    fn a_character_cut_at_the_front_is_dropped_not_mangled() {
        let tail = OutputTail::default();
        // "é" is two bytes; TAIL_BYTES + 1 bytes of them cut one in half at the front.
        let text = "é".repeat(TAIL_BYTES / 2 + 1);
        tail.push(text.as_bytes());
        tail.push(b"!");
        let (kept, _) = tail.snapshot();
        assert!(!kept.contains('\u{FFFD}'), "{kept}");
        assert!(kept.ends_with("é!"));
    }

    #[test]
    fn nothing_written_is_no_output() {
        assert_eq!(GuestStreams::default().output(), None);
    }
}
