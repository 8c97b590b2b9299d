// The raypipe job page. Everything it shows comes from the /v1 API with the user's key,
// sent as an Authorization header (never in a URL). Data is written with textContent
// only: job types, messages and errors are user input.

const KEY_STORAGE = "raypipe.apiKey";
const REFRESH_MS = 5000;
// Browsers open six connections per server over HTTP/1.1; each open event stream holds
// one, so follow a few jobs live and leave the rest to the periodic refresh.
const MAX_STREAMS = 3;
const THUMBNAIL = "thumbnail.png";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const RETRYABLE = new Set(["failed", "cancelled"]);

const $ = (id) => document.getElementById(id);
let key = localStorage.getItem(KEY_STORAGE) || "";
let timer = null;
const jobs = new Map(); // id -> the job as last seen, newest first
const streams = new Map(); // id -> AbortController of its open event stream
const lastEventIds = new Map(); // id -> the last event id seen, to resume after it

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(path, options = {}) {
  const headers = { ...options.headers, Authorization: `Bearer ${key}` };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch {
      // not the API's error format: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

const getJson = async (path) => (await call(path)).json();
const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;
const short = (id) => id.slice(0, 8);

function notice(text) {
  $("notice").textContent = text;
}

function report(error) {
  if (error.name === "AbortError") return;
  if (error.status === 401) {
    stop();
    notice(`The API refused this key: ${error.message}`);
  } else {
    notice(`Error: ${error.message}`);
  }
}

// -- small DOM helpers -------------------------------------------------------------------

function element(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function row(attributes, cells) {
  const tr = element("tr");
  Object.assign(tr.dataset, attributes);
  tr.append(...cells.map((cell) => element("td", {}, cell)));
  return tr;
}

function progressBar(label) {
  return element("progress", { max: 100, value: 0, ariaLabel: label });
}

function time(iso) {
  return iso ? element("time", { dateTime: iso }, new Date(iso).toLocaleString()) : "";
}

const percent = (value) => `${Math.round(value)}%`;

// -- queues and batches ------------------------------------------------------------------

function renderQueues(queues) {
  $("queues").replaceChildren(
    ...queues.map((q) => {
      // Pausing and resuming take an admin key; another key is told so by the API.
      const verb = q.paused ? "resume" : "pause";
      const toggle = element("button", { type: "button" }, q.paused ? "Resume" : "Pause");
      toggle.dataset.action = verb;
      toggle.addEventListener("click", () => toggleQueue(q.name, verb, toggle));
      return row({ queue: q.name, paused: String(q.paused) }, [
        q.name,
        q.paused ? "paused" : "active",
        String(q.depth),
        String(q.running),
        String(q.concurrency),
        q.oldest_waiting_s == null ? "–" : `${Math.round(q.oldest_waiting_s)} s`,
        toggle,
      ]);
    }),
  );
}

async function toggleQueue(name, verb, button) {
  button.disabled = true;
  try {
    await call(`/v1/queues/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
    notice(`Queue ${name} ${verb === "pause" ? "paused" : "resumed"}.`);
    refresh();
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}

function renderBatches(batches) {
  $("batches").replaceChildren(
    ...batches.map((b) => {
      const bar = progressBar(`Progress of batch ${short(b.id)}`);
      bar.value = b.progress;
      const done = `${b.counts.completed ?? 0} of ${b.total} done, ${b.counts.failed ?? 0} failed`;
      return row({ batchId: b.id, status: b.status }, [
        element("code", { title: b.id }, short(b.id)),
        b.status,
        done,
        element("span", { className: "progress" }, bar, percent(b.progress)),
        time(b.created_at),
      ]);
    }),
  );
}

// -- jobs --------------------------------------------------------------------------------

function jobRow(id) {
  const existing = $("jobs").querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
  if (existing) return existing;
  const retry = element("button", { type: "button", hidden: true }, "Retry");
  retry.dataset.action = "retry";
  retry.addEventListener("click", () => retryJob(id, retry));
  const part = (name, tag = "span", ...children) => element(tag, { className: name }, ...children);
  return row({ jobId: id }, [
    part("job"),
    part("status"),
    part("progress", "span", progressBar(""), part("percent")),
    part("attempt"),
    part("created"),
    part("details", "div", part("error", "p"), retry, part("thumbnail")),
  ]);
}

function update(tr, job) {
  const part = (name) => tr.querySelector(`.${name}`);
  tr.dataset.status = job.status;
  part("job").replaceChildren(job.type, " ", element("code", { title: job.id }, short(job.id)));
  part("status").textContent = job.status;
  const bar = tr.querySelector("progress");
  bar.value = job.progress;
  bar.ariaLabel = `Progress of job ${job.type} ${short(job.id)}`;
  part("percent").textContent = percent(job.progress) + (job.message ? ` · ${job.message}` : "");
  part("attempt").textContent = `${job.attempt} of ${job.max_attempts}`;
  if (!part("created").firstChild) part("created").append(time(job.created_at));
  const ended = RETRYABLE.has(job.status);
  part("error").textContent = ended && job.error ? `${job.error.type}: ${job.error.message}` : "";
  const retry = tr.querySelector('button[data-action="retry"]');
  retry.hidden = !ended;
  retry.ariaLabel = `Retry job ${job.type} ${short(job.id)}`;
  const thumbnail = (job.artifacts || []).find((a) => a.name === THUMBNAIL);
  if (thumbnail) showThumbnail(part("thumbnail"), job, thumbnail.url);
}

// Shows a job's latest state (from a list, a retry or the end of its stream).
function showJob(job) {
  jobs.set(job.id, job);
  update(jobRow(job.id), job);
}

function renderJobs(list) {
  for (const id of streams.keys()) {
    if (!list.some((job) => job.id === id)) streams.get(id).abort();
  }
  jobs.clear();
  const rows = list.map((job) => {
    jobs.set(job.id, job);
    const tr = jobRow(job.id);
    update(tr, job);
    return tr;
  });
  for (const img of $("jobs").querySelectorAll("img")) {
    if (!rows.some((tr) => tr.contains(img))) URL.revokeObjectURL(img.src);
  }
  $("jobs").replaceChildren(...rows);
  followActive();
}

// Opens event streams for running jobs first, then queued ones, up to MAX_STREAMS.
function followActive() {
  const waiting = [...jobs.values()].filter(
    (job) => !TERMINAL.has(job.status) && !streams.has(job.id),
  );
  waiting.sort((a, b) => (b.status === "processing") - (a.status === "processing"));
  for (const job of waiting.slice(0, Math.max(0, MAX_STREAMS - streams.size))) follow(job.id);
}

async function follow(id) {
  const controller = new AbortController();
  streams.set(id, controller);
  try {
    const last = lastEventIds.get(id);
    const headers = last ? { "Last-Event-ID": last } : {};
    const response = await call(`${jobPath(id)}/events`, { headers, signal: controller.signal });
    for await (const event of readEvents(response.body)) {
      if (event.id) lastEventIds.set(id, event.id);
      const job = jobs.get(id);
      if (job && event.data) {
        const { id: _, ...change } = JSON.parse(event.data);
        Object.assign(job, change);
        update(jobRow(id), job);
      }
    }
    // The stream ends after the terminal status: read the whole job for its error,
    // result and artifacts, and give the stream's place to another job.
    streams.delete(id);
    if (jobs.has(id)) showJob(await getJson(jobPath(id)));
    followActive();
  } catch (error) {
    report(error); // the next refresh follows the job again if it still runs
  } finally {
    if (streams.get(id) === controller) streams.delete(id);
  }
}

// Server-Sent Events from a fetch body: EventSource cannot send an Authorization header.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = { data: [] };
      for (const line of buffer.slice(0, end).split("\n")) {
        if (line.startsWith(":")) continue; // a keep-alive comment
        const [field, ...rest] = line.split(":");
        const text = rest.join(":").replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "id" || field === "event") event[field] = text;
      }
      buffer = buffer.slice(end + 2);
      yield { ...event, data: event.data.join("\n") };
    }
  }
}

async function retryJob(id, button) {
  button.disabled = true;
  try {
    const response = await call(`${jobPath(id)}/retry`, { method: "POST" });
    showJob(await response.json());
    notice(`Job ${short(id)} is queued again.`);
    followActive();
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}

// Artifacts need the key too, so a thumbnail is fetched and shown from a blob URL.
async function showThumbnail(cell, job, url) {
  if (cell.dataset.loaded) return;
  cell.dataset.loaded = "true";
  try {
    const blob = await (await call(url)).blob();
    const alt = `Thumbnail of the mesh from job ${short(job.id)}`;
    cell.append(element("img", { src: URL.createObjectURL(blob), alt, width: 96, height: 96 }));
  } catch (error) {
    delete cell.dataset.loaded;
    report(error);
  }
}

// -- refreshing --------------------------------------------------------------------------

async function refresh() {
  if (!key || document.hidden) return;
  const status = $("status-filter").value;
  const query = new URLSearchParams({ limit: "50", ...(status && { status }) });
  const asked = key;
  try {
    const [queues, batches, list] = await Promise.all([
      getJson("/v1/queues"),
      getJson("/v1/batches?limit=20"),
      getJson(`/v1/jobs?${query}`),
    ]);
    if (asked !== key) return; // the key changed meanwhile: its own refresh shows its data
    renderQueues(queues);
    renderBatches(batches.batches);
    renderJobs(list.jobs);
    if ($("notice").textContent.startsWith("Error")) notice("");
  } catch (error) {
    if (asked === key) report(error);
  }
}

function start() {
  stop();
  notice("");
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

function stop() {
  clearInterval(timer);
  for (const controller of streams.values()) controller.abort();
  streams.clear();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("key").value.trim();
  localStorage.setItem(KEY_STORAGE, key);
  lastEventIds.clear();
  renderJobs([]);
  start();
});

$("forget").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORAGE);
  key = "";
  $("key").value = "";
  stop();
  renderQueues([]);
  renderBatches([]);
  renderJobs([]);
  notice("Key forgotten.");
});

$("refresh").addEventListener("click", refresh);
$("status-filter").addEventListener("change", refresh);

$("key").value = key;
if (key) start();
