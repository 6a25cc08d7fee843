// The web view: plain DOM and EventSource over the same HTTP API anyone can call.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 23) : "";
}

function badge(status) {
  return el("span", { class: `status ${status}` }, status);
}

function live(source, label) {
  const mark = document.getElementById("live");
  source.addEventListener("open", () => { mark.textContent = `live: ${label}`; });
  source.addEventListener("error", () => { mark.textContent = "reconnecting…"; });
}

async function sagaList() {
  const body = document.getElementById("sagas");
  const typeSelect = document.getElementById("type");
  const statusSelect = document.getElementById("status");
  const params = new URLSearchParams(location.search);
  for (const t of await (await fetch("/api/types")).json()) typeSelect.append(el("option", {}, t.saga_type));
  typeSelect.value = params.get("type") || "";
  statusSelect.value = params.get("status") || "";
  for (const select of [typeSelect, statusSelect]) {
    select.addEventListener("change", () => {
      const next = new URLSearchParams();
      if (typeSelect.value) next.set("type", typeSelect.value);
      if (statusSelect.value) next.set("status", statusSelect.value);
      location.search = next.toString();
    });
  }
  const rows = new Map();
  const count = () => { document.getElementById("count").textContent = `${rows.size} saga(s)`; };

  function show(saga, fresh) {
    if (statusSelect.value && saga.status !== statusSelect.value) {
      rows.get(saga.saga_id)?.remove();
      rows.delete(saga.saga_id);
      return count();
    }
    const row = el("tr", { "data-saga": saga.saga_id, "data-status": saga.status, class: fresh ? "fresh" : "" },
      el("td", { class: "id" }, el("a", { href: `/sagas/${encodeURIComponent(saga.saga_id)}` }, saga.saga_id)),
      el("td", {}, saga.saga_type), el("td", {}, badge(saga.status)), el("td", {}, saga.state),
      el("td", {}, when(saga.updated_at)));
    const old = rows.get(saga.saga_id);
    if (old) old.replaceWith(row); else body.prepend(row);
    rows.set(saga.saga_id, row);
    count();
  }

  const query = new URLSearchParams({ limit: "200" });
  if (typeSelect.value) query.set("type", typeSelect.value);
  if (statusSelect.value) query.set("status", statusSelect.value);
  const sagas = await (await fetch(`/api/sagas?${query}`)).json();
  for (const saga of sagas.reverse()) show(saga, false);
  const source = new EventSource(typeSelect.value ? `/api/types/${encodeURIComponent(typeSelect.value)}/events` : "/api/events");
  live(source, "status changes as they happen");
  source.addEventListener("saga", (message) => show(JSON.parse(message.data), true));
}

async function sagaPage(sagaId) {
  const response = await fetch(`/api/sagas/${encodeURIComponent(sagaId)}`);
  if (!response.ok) {
    document.getElementById("facts").replaceChildren(el("dd", {}, (await response.json()).detail));
    return;
  }
  let saga = await response.json();
  document.title = `Saga ${sagaId}`;
  document.getElementById("title").textContent = `${saga.saga_type} ${sagaId}`;
  const history = document.getElementById("history");
  const token = document.getElementById("token");
  token.value = sessionStorage.getItem("saga-web-token") || "";
  token.addEventListener("change", () => sessionStorage.setItem("saga-web-token", token.value));

  function facts() {
    const rows = [["id", saga.saga_id], ["type", `${saga.saga_type} v${saga.definition_version}`],
      ["status", badge(saga.status)], ["state", saga.state], ["step", saga.step ? `${saga.step} (${saga.action}), attempt ${saga.attempt}` : ""],
      ["error", saga.error ? `${saga.error.code}: ${saga.error.message}` : ""],
      ["started", when(saga.created_at)], ["updated", when(saga.updated_at)]];
    document.getElementById("facts").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { id: `fact-${k}` }, v)]));
    document.getElementById("data").textContent = JSON.stringify(saga.data, null, 2);
  }

  let drawing = Promise.resolve();
  function graph() {
    drawing = drawing.then(async () => {
      const picture = await fetch(`/api/types/${encodeURIComponent(saga.saga_type)}/graph.svg?saga=${encodeURIComponent(sagaId)}`);
      document.getElementById("graph").innerHTML = await picture.text();
    });
  }

  function entry(step) {
    const move = step.source === step.dest ? step.dest : `${step.source} → ${step.dest}`;
    const what = step.step ? `${step.step} ${step.action} #${step.attempt}` : "";
    history.append(el("tr", { "data-event": step.event }, el("td", {}, when(step.at)), el("td", {}, step.event),
      el("td", {}, move), el("td", {}, what, step.detail ? el("div", { class: "muted" }, step.detail) : "")));
  }

  facts();
  graph();
  let last = null;
  for (const step of saga.history) { entry(step); last = step.id; }
  // Resume after what the page already shows: the stream sends only what is new.
  const source = new EventSource(`/api/sagas/${encodeURIComponent(sagaId)}/events${last ? `?after=${encodeURIComponent(last)}` : ""}`);
  live(source, "each step as it happens");
  source.addEventListener("step", async (message) => {
    entry(JSON.parse(message.data));
    saga = await (await fetch(`/api/sagas/${encodeURIComponent(sagaId)}`)).json();
    facts();
    graph();
  });
  source.addEventListener("end", async () => {
    source.close();
    document.getElementById("live").textContent = "finished";
    saga = await (await fetch(`/api/sagas/${encodeURIComponent(sagaId)}`)).json();
    facts();
    graph();
  });

  async function act(action) {
    const message = document.getElementById("message");
    const result = await fetch(`/api/sagas/${encodeURIComponent(sagaId)}/${action}`, {
      method: "POST", headers: token.value ? { Authorization: `Bearer ${token.value}` } : {},
    });
    const body = await result.json();
    message.className = result.ok ? "done" : "refused";
    message.textContent = result.ok ? `${action}: ${body.changed ? `now ${body.status}` : body.note}` : `refused: ${body.detail}`;
  }
  document.getElementById("retry").addEventListener("click", () => act("retry"));
  document.getElementById("compensate").addEventListener("click", () => act("compensate"));
}
