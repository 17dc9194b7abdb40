// The list of calls: fetch /dashboard/api/calls with the filters, newest first. Text only (no innerHTML).
"use strict";

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function when(epoch) {
  return epoch == null ? "-" : new Date(epoch * 1000).toLocaleString();
}

async function load() {
  const form = document.getElementById("filters");
  const params = new URLSearchParams(new FormData(form));
  for (const [key, value] of [...params]) if (!value) params.delete(key);
  const status = document.getElementById("status");
  const response = await fetch("/dashboard/api/calls?" + params, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/dashboard"; return; }
  if (!response.ok) { status.textContent = "Could not load the calls (" + response.status + ")."; return; }
  const data = await response.json();
  const select = document.getElementById("outcome");
  if (select.options.length === 1) {
    for (const outcome of data.outcomes.concat(["in_progress"])) {
      const option = document.createElement("option");
      option.value = option.textContent = outcome;
      select.appendChild(option);
    }
    select.value = params.get("outcome") || "";
  }
  const agents = document.getElementById("agent");
  if (agents.options.length <= 2) {
    const chosen = agents.value;
    agents.replaceChildren(agents.options[0]);
    for (const name of data.agents || []) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      agents.appendChild(option);
    }
    agents.value = chosen;
  }
  const body = document.querySelector("#calls tbody");
  body.replaceChildren();
  for (const call of data.calls) {
    const row = document.createElement("tr");
    row.className = "call";
    row.dataset.sid = call.call_sid;
    const link = document.createElement("a");
    link.href = "/dashboard/calls/" + encodeURIComponent(call.call_sid);
    link.textContent = when(call.started_at);
    cell(row, "").appendChild(link);
    cell(row, call.duration_s == null ? "-" : call.duration_s.toFixed(1) + " s", "num");
    cell(row, call.direction);
    cell(row, call.agent || "-");
    cell(row, call.caller_masked || "-");
    cell(row, call.called_masked || "-");
    const extra = [call.transfer_target && `${call.transfer_target}: ${call.transfer_outcome || "pending"}`,
                   call.amd_outcome].filter(Boolean).join(", ");
    cell(row, extra ? `${call.outcome} (${extra})` : call.outcome);
    cell(row, String(call.turn_count), "num");
    cell(row, call.estimated_cost_usd == null ? "-" : "$" + call.estimated_cost_usd.toFixed(4), "num");
    body.appendChild(row);
  }
  status.textContent = data.calls.length ? data.calls.length + " call(s)" : "No calls match.";
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("filters");
  const query = new URLSearchParams(location.search);
  if (query.get("agent")) {  // the agents' names arrive with the first list: keep the one asked for
    const option = document.createElement("option");
    option.value = option.textContent = query.get("agent");
    form.elements.agent.appendChild(option);
  }
  for (const name of ["number", "date", "agent"]) if (query.get(name)) form.elements[name].value = query.get(name);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams(new FormData(form));
    for (const [key, value] of [...params]) if (!value) params.delete(key);
    history.replaceState(null, "", "?" + params);
    load();
  });
  load();
});
