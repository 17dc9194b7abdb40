// One call: facts, an SVG timeline of who spoke when (interruptions and tool calls marked),
// the transcript with its times, per-turn latency, tool calls, usage and cost, and the recording.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function titled(node, text) {
  svg("title", {}, node).textContent = text;
  return node;
}

function row(table, cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  document.querySelector(table + " tbody").appendChild(tr);
}

function fact(name, value) {
  const dl = document.getElementById("facts");
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

const seconds = (s) => (s >= 0 ? "+" : "") + s.toFixed(2) + " s";

function spans(record) {
  // Who spoke when: the measured timings, or (older records) the transcript turns.
  if (record.turn_timings && record.turn_timings.length) {
    return record.turn_timings.map((t) => ({ role: t.role, start: t.started_at, end: t.ended_at ?? t.started_at,
      interrupted: t.interrupted, latency: t.response_latency_ms }));
  }
  return record.turns.map((t) => ({ role: t.role, start: t.started_at, end: t.updated_at, interrupted: false }));
}

function drawTimeline(record, zero) {
  const items = spans(record);
  const ends = [record.ended_at ?? zero, ...items.map((s) => s.end),
    ...record.events.map((e) => e.at), ...record.tool_calls.map((t) => t.at)];
  const total = Math.max(1, Math.max(...ends) - zero);
  const width = 1000, left = 60, right = 10, plot = width - left - right;
  const x = (at) => left + ((at - zero) / total) * plot;
  const root = svg("svg", { viewBox: `0 0 ${width} 120`, role: "img", "aria-label": "who spoke when", id: "timeline-svg" });
  const lanes = { caller: 20, agent: 55 };
  for (const [role, y] of Object.entries(lanes)) {
    svg("text", { x: 4, y: y + 14 }, root).textContent = role;
    svg("line", { x1: left, x2: width - right, y1: y + 10, y2: y + 10, class: "axis" }, root);
  }
  for (const s of items) {
    const rect = svg("rect", { x: x(s.start), y: lanes[s.role], width: Math.max(1, x(s.end) - x(s.start)), height: 20,
      class: `speech ${s.role}${s.interrupted ? " interrupted" : ""}` }, root);
    titled(rect, `${s.role} ${seconds(s.start - zero)} to ${seconds(s.end - zero)}` +
      (s.latency != null ? `, answered in ${Math.round(s.latency)} ms` : "") + (s.interrupted ? ", interrupted" : ""));
  }
  for (const e of record.events.filter((e) => e.kind === "interruption")) {
    titled(svg("line", { x1: x(e.at), x2: x(e.at), y1: 10, y2: 85, class: "interruption" }, root),
      `interruption at ${seconds(e.at - zero)}`);
  }
  for (const t of record.tool_calls) {
    titled(svg("circle", { cx: x(t.at), cy: 95, r: 5, class: "tool-call" }, root),
      `${t.name}: ${t.outcome}` + (t.latency_ms != null ? ` in ${Math.round(t.latency_ms)} ms` : ""));
  }
  const step = total > 600 ? 60 : total > 120 ? 15 : total > 30 ? 5 : 1;
  for (let s = 0; s <= total; s += step) {
    svg("text", { x: x(zero + s) - 6, y: 116 }, root).textContent = s + "s";
  }
  document.getElementById("timeline").replaceChildren(root);
}

async function load() {
  const sid = decodeURIComponent(location.pathname.split("/").pop());
  const status = document.getElementById("status");
  const response = await fetch("/dashboard/api/calls/" + encodeURIComponent(sid), { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/dashboard"; return; }
  if (!response.ok) { status.textContent = "No such call (" + response.status + ")."; return; }
  const record = await response.json();
  document.getElementById("title").textContent = "Call " + record.call_sid;
  document.title = "Call " + record.call_sid;
  const zero = record.started_at ?? (record.timeline[0] ? record.timeline[0].at : 0);
  fact("From", record.caller_masked || "-");
  fact("To", record.called_masked || "-");
  fact("Direction", record.direction || "-");
  fact("Agent", record.agent || "-");
  fact("Started", record.started_at ? new Date(record.started_at * 1000).toLocaleString() : "-");
  fact("Duration", record.duration_s == null ? "-" : record.duration_s.toFixed(2) + " s");
  fact("Outcome", record.outcome + (record.end_reason ? " (" + record.end_reason + ")" : ""));
  if (record.transfer_target) fact("Transfer", `${record.transfer_target}: ${record.transfer_outcome || "pending"}`);
  if (record.answered_by || record.amd_outcome) {
    fact("Answered by", `${record.amd_outcome || "-"} (Twilio: ${record.answered_by || "no verdict"})`);
  }
  fact("Interruptions", String(record.interruptions ?? 0));
  if (record.tokens) {
    const by = Object.entries(record.tokens.by_modality).map(([k, v]) => `${k} ${v}`).join(", ");
    fact("Usage", `${record.tokens.total} tokens (prompt ${record.tokens.prompt}, response ${record.tokens.response}` +
      (by ? `; ${by}` : "") + ")");
  }
  fact("Estimated cost", record.estimated_cost_usd == null ? "-" : "$" + record.estimated_cost_usd.toFixed(4));
  const latency = record.response_latency || {};
  fact("Response latency", latency.turns ? `median ${Math.round(latency.median_ms)} ms, worst ` +
    `${Math.round(latency.max_ms)} ms over ${latency.turns} answer(s)` : "-");

  drawTimeline(record, zero);

  const transcript = document.getElementById("transcript");
  for (const turn of record.turns) {
    const li = document.createElement("li");
    li.className = turn.role;
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = seconds(turn.started_at - zero);
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = turn.role;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = turn.text.trim();
    li.append(time, role, text);
    transcript.appendChild(li);
  }
  for (const t of (record.turn_timings || []).filter((t) => t.role === "agent")) {
    row("#latency", [String(t.seq), seconds(t.started_at - zero),
      t.response_latency_ms == null ? "-" : Math.round(t.response_latency_ms) + " ms",
      t.ended_at == null ? "-" : (t.ended_at - t.started_at).toFixed(2) + " s", t.interrupted ? "yes" : "no"]);
  }
  for (const t of record.tool_calls) {
    row("#tools", [seconds(t.at - zero), t.name, t.outcome, t.latency_ms == null ? "-" : Math.round(t.latency_ms) + " ms"]);
  }
  if (record.recording) {
    document.getElementById("recording").src = record.recording;
    document.getElementById("recording-section").hidden = false;
  }
  status.textContent = "";
}

document.addEventListener("DOMContentLoaded", load);
