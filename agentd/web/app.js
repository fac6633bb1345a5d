// agentd reviewer page. Everything a requester or a guest controls is shown with textContent,
// never parsed as HTML. The token lives in sessionStorage (this tab only) and goes out only in
// the Authorization header: never in a URL, a cookie or a log.
"use strict";

const TOKEN_KEY = "agentd.token";
const TICK_MS = 1000; // countdowns to expiry are redrawn this often, without a request
let token = sessionStorage.getItem(TOKEN_KEY);
let current = null; // the approval shown in detail
let timer = null;
let following = null; // AbortController of the approvals stream
let known = null; // the tenant's approval requests as last fetched (null: not yet)

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch (_) { value = text; }
  if (!response.ok) {
    const detail = value && value.detail ? value.detail : response.statusText;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return value;
}

function expiry(ms) {
  const seconds = Math.floor((ms - Date.now()) / 1000);
  if (seconds <= 0) return "expired";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60);
  return h > 0 ? `expires in ${h}h ${m}m` : `expires in ${m}m ${seconds % 60}s`;
}

function approvals(request) {
  return request.votes.filter((vote) => vote.decision === "approve").length;
}

function inputOf(request) {
  try { return JSON.parse(request.request_json).input; } catch (_) { return {}; }
}

async function signIn(candidate) {
  token = candidate;
  try {
    await api("GET", "/v1/approvals?status=pending");
  } catch (error) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("sign-in-error").textContent = "Sign-in refused: " + error.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in-error").textContent = "";
  $("token").value = "";
  $("sign-in").hidden = true;
  $("queue").hidden = false;
  $("sign-out").hidden = false;
  await refresh();
  timer = setInterval(tick, TICK_MS);
  follow();
}

// Pending approvals arrive by push: the server's `GET /v1/approvals/events` stream, read with
// fetch (EventSource cannot send an Authorization header). Each `approvals` event refreshes the
// page; a broken stream is reopened with a growing delay.
async function follow() {
  const controller = new AbortController();
  following = controller;
  let delay = 1000;
  while (token && following === controller) {
    try {
      const response = await fetch("/v1/approvals/events", {
        headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (response.status === 401) { signOut(); $("sign-in-error").textContent = "Your token was refused."; return; }
      if (!response.ok || !response.body) throw new Error(response.statusText);
      delay = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (block.split("\n").includes("event: approvals")) await refresh();
        }
      }
    } catch (_) {
      if (controller.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 30000);
  }
}

function signOut() {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  if (following) following.abort();
  following = null;
  known = null;
  $("queue").hidden = true;
  $("detail").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("token").focus();
}

function listItem(request) {
  const item = el("li");
  const button = el("button", `#${request.id} ${request.skill.id} ${request.skill.version}`, {
    type: "button",
    "data-approval": String(request.id),
  });
  button.addEventListener("click", () => show(request.id));
  const pending = request.status === "pending";
  const when = el("span", pending ? expiry(request.expires_at_ms) : request.status);
  if (pending) when.setAttribute("data-expires", String(request.expires_at_ms));
  item.append(
    button,
    el("span", ` requested by ${request.requester}; ${approvals(request)} of ${request.quorum.required} approvals; `),
    when,
  );
  return item;
}

// Redraws the countdowns in place (the lists are rebuilt only when their data changes, so
// keyboard focus stays where it is).
function tick() {
  for (const span of document.querySelectorAll("[data-expires]")) {
    span.textContent = expiry(Number(span.getAttribute("data-expires")));
  }
}

function render() {
  if (!known) return;
  const pending = known.filter((request) => request.status === "pending");
  const decided = known.filter((request) => request.status !== "pending");
  $("pending-count").textContent = `(${pending.length})`;
  $("pending").replaceChildren(...(pending.length ? pending.map(listItem) : [el("li", "Nothing waits for you.")]));
  $("history").replaceChildren(...decided.slice(0, 50).map(listItem));
  if (known.length) $("who").textContent = `tenant ${known[0].tenant}`;
}

async function refresh() {
  if (!token) return;
  try {
    const fetched = await api("GET", "/v1/approvals");
    if (JSON.stringify(fetched) !== JSON.stringify(known)) {
      known = fetched;
      render();
    }
  } catch (error) {
    if (error.status === 401) { signOut(); $("sign-in-error").textContent = "Your token was refused: " + error.message; }
  }
  try {
    const audit = await api("GET", "/v1/audit/verify");
    $("audit").textContent = audit.status === "intact"
      ? `audit log intact: ${audit.entries} entries`
      : `AUDIT LOG BROKEN at entry ${audit.seq}: ${audit.reason}`;
  } catch (error) {
    $("audit").textContent = "audit status unavailable: " + error.message;
  }
}

async function show(id) {
  const detail = await api("GET", `/v1/approvals/${id}`);
  const request = detail.approval;
  current = request;
  $("queue").hidden = true;
  $("detail").hidden = false;
  $("result").textContent = "";
  $("comment").value = "";
  $("modify-box").hidden = true;
  $("modify").hidden = true;
  $("modify-toggle").setAttribute("aria-expanded", "false");
  $("detail-title").textContent = `Approval #${request.id}: ${request.skill.id} ${request.skill.version} (${request.status})`;
  const decision = detail.verdict ? detail.verdict.decision : null;
  const facts = [
    ["Skill", `${request.skill.id} ${request.skill.version} (${request.skill.side_effect})`],
    ["Component", request.skill.digest],
    ["Risk tier", decision ? decision.risk_tier : "unknown"],
    ["Requester", `${request.requester} (acting agent ${request.acting_agent})`],
    ["Run", `${request.run_id}, step ${request.step_id}`],
    ["Quorum", `${approvals(request)} of ${request.quorum.required} ${request.reviewer_role} approvals; ` +
      `${request.quorum.deny_threshold} denial(s) deny`],
    ["Expiry", request.status === "pending" ? expiry(request.expires_at_ms) : request.status],
    ["Allowed answers", request.allowed_decisions.join(", ")],
  ];
  $("facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", name), el("dd", value)]));
  $("input").textContent = JSON.stringify(inputOf(request), null, 2);
  const reasons = [];
  if (decision) {
    for (const policy of decision.determining_policies) reasons.push(el("li", `policy ${policy}`));
    for (const obligation of decision.verdict.obligations || []) reasons.push(el("li", `obligation: ${obligation}`));
    for (const capability of decision.granted_capabilities) reasons.push(el("li", `grants ${capability}`));
  }
  $("reasons").replaceChildren(...(reasons.length ? reasons : [el("li", "no policy detail recorded")]));
  const steps = detail.run ? detail.run.steps : [];
  $("steps").replaceChildren(...steps.map((step) => el("li", `${step.spec.step_id} (${step.spec.skill}): ${step.state}`)));
  $("votes").replaceChildren(...(request.votes.length
    ? request.votes.map((vote) => el("li", `${vote.reviewer}: ${vote.decision}${vote.reason ? " — " + vote.reason : ""}`))
    : [el("li", "no votes yet")]));
  const pending = request.status === "pending";
  for (const name of ["approve", "deny", "modify-toggle"]) $(name).disabled = !pending;
  $("modify-toggle").disabled = !pending || !request.allowed_decisions.includes("modify");
  $("edited").value = JSON.stringify(inputOf(request), null, 2);
  renderDiff();
  $("detail-title").focus();
}

// A line diff (longest common subsequence) of the original input against the edit.
function lineDiff(before, after) {
  const a = before.split("\n"), b = after.split("\n");
  const n = a.length, m = b.length;
  const table = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (table[i + 1][j] >= table[i][j + 1]) out.push(["-", a[i++]]);
    else out.push(["+", b[j++]]);
  }
  while (i < n) out.push(["-", a[i++]]);
  while (j < m) out.push(["+", b[j++]]);
  return out;
}

function parseEdit() {
  const value = JSON.parse($("edited").value);
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("the input must be a JSON object");
  return value;
}

function renderDiff() {
  if (!current) return;
  const original = JSON.stringify(inputOf(current), null, 2);
  let edited;
  try {
    edited = JSON.stringify(parseEdit(), null, 2);
    $("edit-error").textContent = "";
  } catch (error) {
    $("edit-error").textContent = "Not valid: " + error.message;
    return;
  }
  const lines = lineDiff(original, edited).map(([mark, text]) => {
    const line = el("span", `${mark} ${text}\n`);
    if (mark === "+") line.className = "added";
    if (mark === "-") line.className = "removed";
    return line;
  });
  $("diff").replaceChildren(...lines);
}

async function vote(decision) {
  const body = { decision };
  const comment = $("comment").value.trim();
  if (comment) body.comment = comment;
  if (decision === "modify") {
    try { body.input = parseEdit(); } catch (error) { $("edit-error").textContent = "Not valid: " + error.message; return; }
  }
  try {
    const answer = await api("POST", `/v1/approvals/${current.id}/votes`, body);
    let text = `Request #${answer.approval.id} is ${answer.approval.status}.`;
    if (answer.step) {
      text += ` The run ${answer.step.run_id} step ${answer.step.status}.`;
    }
    $("result").textContent = text;
    for (const name of ["approve", "deny", "modify-toggle", "modify"]) $(name).disabled = true;
  } catch (error) {
    $("result").textContent = "Refused: " + error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => { event.preventDefault(); signIn($("token").value.trim()); });
  $("sign-out").addEventListener("click", signOut);
  $("approve").addEventListener("click", () => vote("approve"));
  $("deny").addEventListener("click", () => vote("deny"));
  $("modify").addEventListener("click", () => vote("modify"));
  $("modify-toggle").addEventListener("click", () => {
    const open = $("modify-box").hidden;
    $("modify-box").hidden = !open;
    $("modify").hidden = !open;
    $("modify-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("edited").focus();
  });
  $("edited").addEventListener("input", renderDiff);
  $("back").addEventListener("click", () => { $("detail").hidden = true; $("queue").hidden = false; current = null; refresh(); });
  if (token) signIn(token);
});
