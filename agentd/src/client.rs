//! `--server URL`: the `hitl` and `runs` commands against a running `agentd serve` instead of
//! the local state directory. Answers are the API's JSON; a refusal is its problem detail.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A client of one server, authenticated with one bearer token.
pub struct Remote {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Remote {
    /// A client of the server at `base` (`http://host:port`).
    ///
    /// # Errors
    ///
    /// When `base` is not an `http://` or `https://` URL.
    pub fn new(base: &str, token: String) -> Result<Self> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server `{base}` is not an http:// or https:// URL");
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Remote {
            base: base.to_owned(),
            token,
            client,
        })
    }

    /// Sends one request; the answer's JSON, or an error quoting the server's problem detail.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {url}: the answer did not arrive"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        match value.get("detail").and_then(Value::as_str) {
            Some(detail) => bail!("the server refused ({status}): {detail}"),
            None => bail!("the server refused ({status}): {value}"),
        }
    }

    pub async fn list_approvals(&self, status: Option<&str>) -> Result<Value> {
        let query = status.map_or_else(String::new, |status| format!("?status={status}"));
        self.send(reqwest::Method::GET, &format!("/v1/approvals{query}"), None)
            .await
    }

    /// A vote: `approve`, `deny` or `modify` (with the edited input object).
    pub async fn vote(&self, id: i64, decision: &str, comment: Option<&str>, input: Option<Value>) -> Result<Value> {
        let mut body = serde_json::json!({ "decision": decision });
        if let Some(comment) = comment {
            body["comment"] = comment.into();
        }
        if let Some(input) = input {
            body["input"] = input;
        }
        self.send(reqwest::Method::POST, &format!("/v1/approvals/{id}/votes"), Some(&body))
            .await
    }

    pub async fn runs(&self) -> Result<Value> {
        self.send(reqwest::Method::GET, "/v1/runs", None).await
    }

    pub async fn run(&self, run_id: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, &format!("/v1/runs/{run_id}"), None)
            .await
    }

    pub async fn cancel_run(&self, run_id: &str, reason: &str) -> Result<Value> {
        let body = serde_json::json!({ "reason": reason });
        self.send(reqwest::Method::POST, &format!("/v1/runs/{run_id}/cancel"), Some(&body))
            .await
    }
}
