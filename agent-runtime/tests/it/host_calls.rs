//! Capability-gated host calls: `workspace-read`, `http-fetch` (against a server on 127.0.0.1
//! that the test starts and stops) and their byte bounds.

use std::sync::{Arc, Mutex};

use agent_runtime::{Outcome, RuntimeFailure, SkillFailure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{request, runtime_with_packages, skill};

/// A minimal HTTP/1.1 server on 127.0.0.1: answers every request with `status` and `body`
/// (after `delay`), and keeps each request's head for the test to inspect. Stopped on drop.
struct TestServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(status: u16, body: Vec<u8>, delay: std::time::Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let body = Arc::new(body);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (seen, body) = (Arc::clone(&seen), Arc::clone(&body));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        TestServer { port, requests, task }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_reaches_only_the_granted_origin_and_carries_the_trace_context() {
    let server = TestServer::start(200, b"hello from the test server".to_vec(), std::time::Duration::ZERO).await;
    let runtime = runtime_with_packages(None).await;
    let http_get = skill(&runtime, "http-get");
    let url = format!("{}/status", server.origin());
    let grant = format!("net.http:{}", server.origin());

    let report = runtime
        .dispatch(&http_get, &request(json!({ "url": url }), &[grant.as_str()]))
        .await;
    let Outcome::Completed { output } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"], "hello from the test server");
    assert_eq!(output["content_type"], "text/plain");
    assert_eq!(report.metrics.host_calls, 1);
    let head = server.requests.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /status HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "the invocation's traceparent was not propagated: {head}"
    );

    // Same host, other port: denied before any connection is made, naming the origin.
    let other_port = format!("http://127.0.0.1:{}/status", server.port.wrapping_add(1).max(1));
    let report = runtime
        .dispatch(&http_get, &request(json!({ "url": other_port }), &[grant.as_str()]))
        .await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { failure: RuntimeFailure::CapabilityDenied { capability, .. } } if capability.to_string().starts_with("net.http:http://127.0.0.1:")),
        "{:?}",
        report.outcome
    );
    // `localhost` is another origin than `127.0.0.1`, and no grant at all denies everything.
    for (url, grants) in [
        (format!("http://localhost:{}/", server.port), vec![grant.as_str()]),
        (url.clone(), vec![]),
    ] {
        let report = runtime
            .dispatch(&http_get, &request(json!({ "url": url }), &grants))
            .await;
        assert_eq!(
            report.outcome.name(),
            "capability-denied",
            "{url}: {:?}",
            report.outcome
        );
    }
    // Even granted by name, `localhost` resolves only to loopback, which a name may not reach
    // (DNS rebinding, internal services): only a grant of the IP literal reaches it.
    let by_name = format!("http://localhost:{}", server.port);
    let name_grant = format!("net.http:{by_name}");
    let report = runtime
        .dispatch(
            &http_get,
            &request(json!({ "url": format!("{by_name}/") }), &[name_grant.as_str()]),
        )
        .await;
    assert!(
        format!("{:?}", report.outcome).contains("not public"),
        "{:?}",
        report.outcome
    );
    assert_eq!(
        server.requests.lock().unwrap().len(),
        1,
        "a denied request reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_bounds_the_response_and_the_deadline_covers_a_slow_server() {
    let runtime = runtime_with_packages(None).await;
    let http_get = skill(&runtime, "http-get");

    // A body over 8 MiB is refused by the host; the guest turns that into a permanent error.
    let big = TestServer::start(200, vec![b'x'; 9 * 1024 * 1024], std::time::Duration::ZERO).await;
    let grant = format!("net.http:{}", big.origin());
    let report = runtime
        .dispatch(&http_get, &request(json!({ "url": big.origin() }), &[grant.as_str()]))
        .await;
    assert!(
        matches!(&report.outcome, Outcome::SkillFailed { error: SkillFailure::Permanent(message) } if message.contains("8388608")),
        "{:?}",
        report.outcome
    );

    // A server slower than the invocation's deadline: the host call is cut when the deadline
    // passes (the request's timeout is what is left of it), and the invocation is a timeout.
    let slow = TestServer::start(200, b"late".to_vec(), std::time::Duration::from_secs(30)).await;
    let grant = format!("net.http:{}", slow.origin());
    let started = std::time::Instant::now();
    let report = runtime
        .dispatch(&http_get, &request(json!({ "url": slow.origin() }), &[grant.as_str()]))
        .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            &report.outcome,
            Outcome::Failed {
                failure: RuntimeFailure::Timeout { deadline_ms: 5000, .. }
            }
        ),
        "{:?}",
        report.outcome
    );
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");

    // A 5xx answer is the skill's transient error (retryable); a 4xx its invalid input.
    let failing = TestServer::start(503, b"busy".to_vec(), std::time::Duration::ZERO).await;
    let grant = format!("net.http:{}", failing.origin());
    let report = runtime
        .dispatch(
            &http_get,
            &request(json!({ "url": failing.origin() }), &[grant.as_str()]),
        )
        .await;
    assert_eq!(report.outcome.name(), "transient");
}

#[tokio::test]
async fn workspace_read_needs_fs_read_and_cannot_leave_the_workspace() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workspace.path().join("acme/inbox")).unwrap();
    std::fs::write(workspace.path().join("acme/inbox/notes.txt"), "one two\nthree\n").unwrap();
    std::fs::create_dir_all(workspace.path().join("acme/private")).unwrap();
    std::fs::write(workspace.path().join("acme/private/keys.txt"), "secret").unwrap();
    let runtime = runtime_with_packages(Some(workspace.path())).await;
    let word_count = skill(&runtime, "word-count");

    let report = runtime
        .dispatch(
            &word_count,
            &request(json!({ "path": "inbox/notes.txt" }), &["fs.read:inbox/"]),
        )
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Completed {
            output: json!({ "lines": 2, "words": 3, "bytes": 14 })
                .as_object()
                .unwrap()
                .clone()
        }
    );

    // Outside the granted prefix, or with a write grant only: denied, naming fs.read.
    for (path, grants) in [
        ("private/keys.txt", vec!["fs.read:inbox/"]),
        ("inbox/notes.txt", vec!["fs.write:inbox/"]),
    ] {
        let report = runtime
            .dispatch(&word_count, &request(json!({ "path": path }), &grants))
            .await;
        assert!(
            matches!(&report.outcome, Outcome::Failed { failure: RuntimeFailure::CapabilityDenied { capability, .. } } if *capability == format!("fs.read:{path}").parse::<plugin_abi::Capability>().unwrap()),
            "{path}: {:?}",
            report.outcome
        );
    }

    // Escapes are invalid paths, refused before any grant is consulted.
    for path in ["../other/inbox/x", "/etc/passwd", "inbox/../private/keys.txt"] {
        let report = runtime
            .dispatch(&word_count, &request(json!({ "path": path }), &["fs.read:inbox/"]))
            .await;
        assert_eq!(report.outcome.name(), "invalid-input", "{path}: {:?}", report.outcome);
    }

    // A symbolic link inside the granted prefix that points out of the workspace is refused.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(
            workspace.path().join("acme/private/keys.txt"),
            workspace.path().join("acme/inbox/link.txt"),
        )
        .unwrap();
        let report = runtime
            .dispatch(
                &word_count,
                &request(json!({ "path": "inbox/link.txt" }), &["fs.read:inbox/"]),
            )
            .await;
        assert_eq!(report.outcome.name(), "invalid-input", "{:?}", report.outcome);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn workspace_write_never_creates_or_writes_through_a_link() {
    let workspace = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workspace.path().join("acme")).unwrap();
    // `reports` is a link to a directory outside the workspace.
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("acme/reports")).unwrap();
    let runtime = runtime_with_packages(Some(workspace.path())).await;
    for path in ["reports/a.md", "reports/new/dir/b.md"] {
        let report = runtime
            .dispatch(
                &skill(&runtime, "publish-report"),
                &request(
                    json!({ "title": "T", "body": "B", "path": path }),
                    &["fs.write:reports/"],
                ),
            )
            .await;
        assert!(
            matches!(&report.outcome, Outcome::SkillFailed { error: SkillFailure::InvalidInput(message) } if message.contains("symbolic link")),
            "{path}: {:?}",
            report.outcome
        );
    }
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was created through the link"
    );
}

/// A TLS server on 127.0.0.1 with the certificate of tests/fixtures/tls (signed by the test CA
/// for `IP:127.0.0.1`), answering every request with `body`. Stopped on drop.
struct TlsServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    async fn start(body: &'static str) -> Self {
        use rustls_pki_types::pem::PemObject;
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(fixtures.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(fixtures.join("server.key")).unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                        match tls.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer { port, task }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Review finding: `https://` grants could not be reached (no TLS in the build, ADR 0008). Now
/// rustls verifies the server against the trusted roots: with the test CA added the fetch
/// works; with only the Mozilla roots the same server is refused, so verification is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_speaks_https_and_verifies_the_certificate() {
    let server = TlsServer::start("hello over tls").await;
    let origin = format!("https://127.0.0.1:{}", server.port);
    let grant = format!("net.http:{origin}");
    let input = json!({ "url": format!("{origin}/status") });
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");

    let trusting = agent_runtime::Runtime::new(agent_runtime::RuntimeConfig {
        max_instances: 4,
        code_cache: Some(crate::test_code_cache()),
        extra_root_certificates: vec![ca],
        ..agent_runtime::RuntimeConfig::default()
    })
    .unwrap();
    trusting
        .load_package(&crate::packages_dir().join("http-get"))
        .await
        .unwrap();
    let report = trusting
        .dispatch(
            &skill(&trusting, "http-get"),
            &request(input.clone(), &[grant.as_str()]),
        )
        .await;
    let Outcome::Completed { output } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(
        (output["status"].as_u64(), output["body"].as_str()),
        (Some(200), Some("hello over tls"))
    );

    let runtime = runtime_with_packages(None).await;
    let report = runtime
        .dispatch(&skill(&runtime, "http-get"), &request(input, &[grant.as_str()]))
        .await;
    let Outcome::SkillFailed { error } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(error.message().contains("certificate"), "{}", error.message());
}
