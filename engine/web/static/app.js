// autonomy's run browser: live refresh of the run list, the live tail, filters, the
// state at a version and the answer box. Plain DOM, no framework, no build step.
"use strict";

// Text from a log shown with its control, bidirectional and invisible characters as
// escapes, as the server's pages show it (engine.terminal.printable, whose character
// list this is): a right-to-left override in a file name or a title reorders what
// follows it on the screen, a zero-width space makes a name look like another.
const INVISIBLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}]/gu;
// by what stands around them: a subdivision flag and a keycap are kept; a variation
// selector after no character it could vary (the start, ASCII, another), and a tag
// anywhere else, are escaped
const IN_CONTEXT = /(\u{1f3f4}[\u{e0020}-\u{e007e}]+\u{e007f}|[0-9#*]\ufe0f\u20e3)|(?<![^\u0000-\u007f\ufe00-\ufe0f\u{e0100}-\u{e01ef}])[\ufe00-\ufe0f\u{e0100}-\u{e01ef}]|[\u{e0020}-\u{e007f}]/gu;
function escaped(c) {  // as JSON writes it: each UTF-16 unit, a surrogate pair past U+FFFF
  let out = "";
  for (let i = 0; i < c.length; i++) {
    const code = c.charCodeAt(i);
    out += code < 0x20 ? "\\x" + code.toString(16).padStart(2, "0") : "\\u" + code.toString(16).padStart(4, "0");
  }
  return out;
}
function visible(text) {
  return String(text).replace(INVISIBLE, escaped)
    .replace(IN_CONTEXT, (found, kept) => kept ? found : escaped(found));
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(typeof c === "string" ? visible(c) : c);
  return node;
}

function shortTime(t) { return (t || "").slice(0, 19).replace("T", " "); }

// -- the run list: refreshed every 2 s, rendered by the server's own template -------------
function runList(table) {
  async function refresh() {
    try {
      const response = await fetch(location.pathname + location.search, { cache: "no-store" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      table.querySelector("tbody").replaceWith(fresh.querySelector("#runs tbody"));
      document.getElementById("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) { /* the server is restarting: try again later */ }
  }
  setInterval(refresh, 2000);
}

// -- the live tail: Server-Sent Events ----------------------------------------------------
function describe(e) {
  const d = e.data || {};
  switch (e.type) {
    case "model.requested": return `${d.call_id} ${d.role} → ${d.model}`;
    case "model.responded": return `${d.call_id} ${(d.tool_calls || []).map(c => c.name).join(", ") || JSON.stringify((d.content || "").slice(0, 60))} (${d.usage ? d.usage.prompt_tokens + "+" + d.usage.completion_tokens : 0} tokens)`;
    case "model.failed": return `${d.call_id} ${d.kind}: ${d.detail}`;
    case "tool.requested": return `${d.call_id} ${d.tool} ${JSON.stringify(d.arguments).slice(0, 100)}`;
    case "tool.executed": return `${d.call_id} ${d.tool} ${d.ok ? "ok" : "FAILED: " + d.error}`;
    case "phase.changed": return `${d.from_phase} → ${d.to_phase} (${d.trigger}, ${d.decided_by})`;
    case "arbiter.decided": return `${d.action} by ${d.decided_by}${d.fallback_used ? " [fallback: " + d.fallback_reason + "]" : ""}`;
    case "task.added": return `${d.task_id} ${d.title}`;
    case "task.updated": return `${d.task_id} ${d.status}${d.error ? ": " + d.error : ""}`;
    case "specialist.consulted": return `${d.specialist} ${d.task_id || ""}: ${d.outcome}`;
    case "run.finished": return `${d.status} ${d.reason || ""}`;
    case "user.asked": return d.question;
    case "user.answered": return d.answer;
    default: return JSON.stringify(d).slice(0, 120);
  }
}

function liveTail(table) {
  const body = table.querySelector("tbody");
  const state = document.getElementById("tail-state");
  let last = 0;  // the last version shown: where a new stream starts
  function connect() {
    const url = new URL(table.dataset.stream, location.href);
    if (last) url.searchParams.set("after", String(last));
    const source = new EventSource(url);
    source.onmessage = (message) => {
      const e = JSON.parse(message.data);
      last = e.version;
      const failed = (e.type === "tool.executed" && !e.data.ok) || e.type === "model.failed";
      body.append(el("tr", { class: failed ? "failed" : "", "data-type": e.type },
        el("td", { class: "num" }, String(e.version)),
        el("td", { class: "time" }, shortTime(e.recorded_at).slice(11)),
        el("td", {}, e.type),
        el("td", {}, describe(e))));
      table.parentElement.scrollIntoView({ block: "nearest" });
    };
    source.addEventListener("end", () => {
      source.close();
      state.textContent = "the run stopped: reloading";
      setTimeout(() => location.reload(), 800);
    });
    source.addEventListener("failed", (message) => {  // the log failed; EventSource retries
      state.textContent = visible(`${JSON.parse(message.data).error}: reconnecting…`);
    });
    source.onerror = () => {
      state.textContent = "reconnecting…";
      // refused (a 503: every stream the service serves is taken), an EventSource
      // gives up for good: another one, a little later, from the last event shown
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    };
    source.onopen = () => { state.textContent = "following"; };
  }
  connect();
}

// -- filters --------------------------------------------------------------------------
function filters(form) {
  function apply() {
    const kinds = new Set([...form.querySelectorAll("input[name=kind]:checked")].map(i => i.value));
    const role = form.querySelector("select[name=role]").value;
    for (const node of document.querySelectorAll("#trace [data-kind]")) {
      let shown = kinds.has(node.dataset.kind) || !["decision", "model", "tool", "phase", "task", "run", "user"].includes(node.dataset.kind);
      if (role && node.dataset.kind === "model" && node.dataset.role !== role) shown = false;
      node.classList.toggle("hidden", !shown);
    }
    for (const step of document.querySelectorAll("#trace .step")) {
      const roles = step.dataset.roles.split(" ");
      step.classList.toggle("hidden", Boolean(role) && !roles.includes(role));
    }
  }
  form.addEventListener("change", apply);
  document.getElementById("expand-all").onclick = () => document.querySelectorAll("#trace details").forEach(d => { d.open = true; });
  document.getElementById("collapse-all").onclick = () => document.querySelectorAll("#trace details").forEach(d => { d.open = false; });
}

// -- state at a version ---------------------------------------------------------------
function stateAt(slider) {
  const view = document.getElementById("state-view");
  const shown = document.getElementById("at-shown");
  let timer = null;
  async function load(version) {
    shown.textContent = version;
    const response = await fetch(slider.dataset.url + "?at=" + version, { cache: "no-store" });
    const doc = await response.json();
    if (!response.ok) { view.replaceChildren(el("p", { class: "error-message" }, doc.error)); return; }
    const p = doc.pipeline;
    const tasks = Object.values(p.tasks || {}).map(t => `${t.task_id} ${t.status}`).join(", ") || "none";
    const files = Object.keys(p.files || {}).join(", ") || "none";
    const pipeline = el("details", { class: "json" }, el("summary", {}, "pipeline"), el("pre", {}, JSON.stringify(p, null, 2)));
    const orchestration = el("details", { class: "json" }, el("summary", {}, "orchestration"), el("pre", {}, JSON.stringify(doc.orchestration, null, 2)));
    view.replaceChildren(
      el("p", {}, `at v${doc.version}: ${p.status}, phase ${p.phase}, ${p.steps} steps; tasks: ${tasks}; files: ${files}`),
      pipeline, orchestration);
  }
  slider.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => load(slider.value), 120); });
  document.addEventListener("click", (event) => {
    const link = event.target.closest("[data-version]");
    if (!link) return;
    slider.value = link.dataset.version;
    document.querySelectorAll(".v.current").forEach(v => v.classList.remove("current"));
    link.classList.add("current");
    load(link.dataset.version);
  });
}

// -- the answer box -------------------------------------------------------------------
function answerBox(form) {
  const result = document.getElementById("answer-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = form.elements.answer.value;
    const response = await fetch(form.dataset.url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ answer }),
    });
    const doc = await response.json();
    if (response.ok) {
      form.remove();
      result.className = "ok";
      result.textContent = visible(`Answered. Continue the run with: ${doc.next}`);
      const status = document.getElementById("run-status");
      if (status) { status.textContent = "running"; status.className = "status status-running"; }
    } else {
      result.className = "error-message";
      result.textContent = visible(doc.error);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const runs = document.getElementById("runs");
  if (runs) runList(runs);
  const tail = document.getElementById("tail");
  if (tail) liveTail(tail);
  const form = document.getElementById("filters");
  if (form) filters(form);
  const slider = document.getElementById("at");
  if (slider) stateAt(slider);
  const answer = document.getElementById("answer-form");
  if (answer) answerBox(answer);
});
