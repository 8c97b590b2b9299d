// Jobs: tables of jobs with live progress, and one job in detail (payload, result,
// attempts with their errors and tracebacks, logs per attempt, artifacts, Cancel and Retry).

import { call, events, getJson, jobPath, postJson } from "./api.js";
import {
  $,
  bytes,
  clear,
  element,
  notice,
  percent,
  progressBar,
  renderOnce,
  report,
  row,
  seconds,
  setText,
  short,
  showFacts,
  tableHead,
  time,
} from "./dom.js";

// Browsers open six connections per server over HTTP/1.1; each open event stream holds
// one, so follow a few jobs live and leave the rest to the periodic refresh.
const MAX_STREAMS = 3;
const THUMBNAIL = "thumbnail.png";
const STATUSES = ["queued", "processing", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const lastEventIds = new Map(); // job id -> the last event id seen, to resume after it

export function forgetEvents() {
  lastEventIds.clear();
}

// Fills a <select> that filters jobs by status: any, or one of them.
export function statusChoices(select) {
  const option = (value, text) => element("option", { value }, text);
  select.replaceChildren(option("", "any"), ...STATUSES.map((status) => option(status, status)));
}

// Follows a job's events until its terminal status, calling ``onChange`` with each change.
async function followEvents(id, signal, onChange) {
  const path = `${jobPath(id)}/events`;
  for await (const event of events(path, { signal, lastEventId: lastEventIds.get(id) })) {
    if (event.id) lastEventIds.set(id, event.id);
    if (event.data) {
      const { id: _, ...change } = JSON.parse(event.data);
      onChange(change);
    }
  }
}

// Artifacts need the key too: fetched, and shown or saved from a blob URL.
async function blobUrl(url) {
  return URL.createObjectURL(await (await call(url)).blob());
}

function revokeImages(node) {
  for (const img of node.querySelectorAll("img")) URL.revokeObjectURL(img.src);
}

// -- a table of jobs ---------------------------------------------------------------------

const jobLink = (job) =>
  element("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, `${job.type} ${short(job.id)}`);

export class JobTable {
  constructor(tbody) {
    this.tbody = tbody;
    tableHead(tbody, ["Job", "Status", "Progress", "Attempt", "Created", "Details"]);
    this.jobs = new Map(); // id -> the job as last seen, in the table's order
    this.streams = new Map(); // id -> AbortController of its open event stream
  }

  render(list) {
    for (const [id, controller] of this.streams) {
      if (!list.some((job) => job.id === id)) controller.abort();
    }
    this.jobs.clear();
    const rows = list.map((job) => {
      this.jobs.set(job.id, job);
      const tr = this.row(job.id);
      this.update(tr, job);
      return tr;
    });
    for (const tr of this.tbody.rows) if (!rows.includes(tr)) revokeImages(tr);
    this.tbody.replaceChildren(...rows);
    this.followActive();
  }

  stop() {
    for (const controller of this.streams.values()) controller.abort();
    this.streams.clear();
  }

  row(id) {
    const existing = this.tbody.querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
    if (existing) return existing;
    const retry = element("button", { type: "button", hidden: true }, "Retry");
    retry.dataset.action = "retry";
    retry.addEventListener("click", () => this.retry(id, retry));
    const part = (name, tag = "span", ...children) =>
      element(tag, { className: name }, ...children);
    return row({ jobId: id }, [
      part("job"),
      part("status"),
      part("progress", "span", progressBar(""), part("percent")),
      part("attempt"),
      part("created"),
      part("details", "div", part("error", "p"), retry, part("thumbnail")),
    ]);
  }

  update(tr, job) {
    const part = (name) => tr.querySelector(`.${name}`);
    tr.dataset.status = job.status;
    if (!part("job").firstChild) part("job").append(jobLink(job));
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
    if (thumbnail) this.thumbnail(part("thumbnail"), job, thumbnail.url);
  }

  // Shows a job's latest state (from a retry or the end of its stream).
  show(job) {
    this.jobs.set(job.id, job);
    this.update(this.row(job.id), job);
  }

  // Opens event streams for running jobs first, then queued ones, up to MAX_STREAMS.
  followActive() {
    const waiting = [...this.jobs.values()].filter(
      (job) => !TERMINAL.has(job.status) && !this.streams.has(job.id),
    );
    waiting.sort((a, b) => (b.status === "processing") - (a.status === "processing"));
    const room = Math.max(0, MAX_STREAMS - this.streams.size);
    for (const job of waiting.slice(0, room)) this.follow(job.id);
  }

  async follow(id) {
    const controller = new AbortController();
    this.streams.set(id, controller);
    try {
      await followEvents(id, controller.signal, (change) => {
        const job = this.jobs.get(id);
        if (!job) return;
        Object.assign(job, change);
        this.update(this.row(id), job);
      });
      // The stream ends after the terminal status: read the whole job for its error,
      // result and artifacts, and give the stream's place to another job.
      this.streams.delete(id);
      if (this.jobs.has(id)) this.show(await getJson(jobPath(id)));
      this.followActive();
    } catch (error) {
      report(error); // the next refresh follows the job again if it still runs
    } finally {
      if (this.streams.get(id) === controller) this.streams.delete(id);
    }
  }

  async retry(id, button) {
    button.disabled = true;
    try {
      this.show(await postJson(`${jobPath(id)}/retry`));
      notice(`Job ${short(id)} is queued again.`);
      this.followActive();
    } catch (error) {
      report(error);
    } finally {
      button.disabled = false;
    }
  }

  async thumbnail(cell, job, url) {
    if (cell.dataset.loaded) return;
    cell.dataset.loaded = "true";
    try {
      const alt = `Thumbnail of the mesh from job ${short(job.id)}`;
      cell.append(element("img", { src: await blobUrl(url), alt, width: 96, height: 96 }));
    } catch (error) {
      delete cell.dataset.loaded;
      report(error);
    }
  }
}

// -- one job in detail -------------------------------------------------------------------

const pretty = (value) => (value == null ? "–" : JSON.stringify(value, null, 2));

function duration(attempt) {
  if (!attempt.started_at || !attempt.finished_at) return "";
  return seconds((Date.parse(attempt.finished_at) - Date.parse(attempt.started_at)) / 1000);
}

function attemptRow(attempt, open) {
  const error = [];
  if (attempt.error) {
    const { type, message, traceback } = attempt.error;
    error.push(element("p", { className: "error" }, `${type}: ${message}`));
    if (traceback) {
      const trace = element("pre", { className: "traceback" }, traceback);
      error.push(element("details", { open }, element("summary", {}, "Traceback"), trace));
    }
  }
  return row({ attempt: String(attempt.attempt), status: attempt.status }, [
    String(attempt.attempt),
    attempt.status,
    time(attempt.started_at),
    time(attempt.finished_at),
    duration(attempt),
    element("div", {}, ...error),
  ]);
}

function logLine(line) {
  const at = new Date(line.ts);
  const clock = at.toLocaleTimeString([], { hour12: false, fractionalSecondDigits: 3 });
  const item = element(
    "li",
    {},
    element("time", { dateTime: line.ts, title: at.toLocaleString() }, clock),
    " ",
    element("span", { className: "level" }, line.level),
    " ",
    element("span", { className: "message" }, line.message),
  );
  item.dataset.level = line.level;
  return item;
}

export class JobDetail {
  constructor() {
    this.id = null;
    this.job = null;
    this.stream = null; // AbortController of the job's event stream
    this.chosenAttempt = null; // the attempt whose logs were asked for; null: the latest
    this.logsShown = null; // "job attempt" of the logs on display
    tableHead($("job-attempts"), ["Attempt", "Status", "Started", "Finished", "Took", "Error"]);
    $("job-cancel").addEventListener("click", () => this.act("cancel", "Cancellation requested"));
    $("job-retry").addEventListener("click", () => this.act("retry", "Queued again"));
    $("log-attempt").addEventListener("change", (event) => {
      this.chosenAttempt = Number(event.target.value);
      this.loadLogs();
    });
  }

  open(id) {
    this.clear();
    this.id = id;
    setText($("job-title"), `Job ${short(id)}`);
  }

  clear() {
    this.stop();
    this.id = null;
    this.job = null;
    this.chosenAttempt = null;
    this.logsShown = null;
    $("job-title").textContent = "Job";
    delete $("job-view").dataset.status;
    for (const part of ["job-facts", "job-attempts", "job-artifacts", "log-attempt", "job-logs"]) {
      revokeImages($(part));
      clear($(part));
    }
    for (const part of ["job-error", "job-payload", "job-result", "job-percent", "job-logs-note"]) {
      $(part).textContent = "";
    }
    $("job-cancel").hidden = $("job-retry").hidden = true;
    $("job-progress").value = 0;
  }

  stop() {
    this.stream?.abort();
    this.stream = null;
  }

  async refresh() {
    const id = this.id;
    if (!id) return;
    const job = await getJson(`${jobPath(id)}?include=attempts`);
    if (id !== this.id) return; // another job was opened meanwhile
    this.show(job);
    if (!TERMINAL.has(job.status) && !this.stream) this.follow();
    await this.loadLogs();
  }

  // Shows the job; a change from its event stream comes without attempts and keeps them.
  show(job) {
    this.job = { ...this.job, ...job, attempts: job.attempts ?? this.job?.attempts ?? [] };
    job = this.job;
    setText($("job-title"), `Job ${job.type} ${short(job.id)}`);
    $("job-view").dataset.status = job.status;
    $("job-progress").value = job.progress;
    setText($("job-percent"), percent(job.progress) + (job.message ? ` · ${job.message}` : ""));
    const cancel = $("job-cancel");
    cancel.hidden = TERMINAL.has(job.status);
    cancel.disabled = job.cancel_requested;
    setText(cancel, job.cancel_requested ? "Cancel requested" : "Cancel job");
    $("job-retry").hidden = !RETRYABLE.has(job.status);
    setText($("job-error"), job.error ? `${job.error.type}: ${job.error.message}` : "");
    setText($("job-payload"), pretty(job.payload));
    setText($("job-result"), pretty(job.result));
    this.showFacts(job);
    const latest = job.attempts.at(-1)?.attempt;
    renderOnce($("job-attempts"), JSON.stringify(job.attempts), () =>
      job.attempts.map((a) => attemptRow(a, a.attempt === latest)),
    );
    this.showArtifacts(job);
  }

  showFacts(job) {
    const batchLink = `#/batches/${encodeURIComponent(job.batch_id)}`;
    const batch = job.batch_id
      ? element("a", { href: batchLink }, `${short(job.batch_id)} #${job.batch_index}`)
      : "";
    const parent = job.parent_id
      ? element("a", { href: `#/jobs/${encodeURIComponent(job.parent_id)}` }, short(job.parent_id))
      : "";
    const cancelling = job.cancel_requested && !TERMINAL.has(job.status);
    showFacts($("job-facts"), [
      ["Id", element("code", {}, job.id), "id"],
      ["Status", job.status + (cancelling ? " (cancel requested)" : ""), "status"],
      ["Type", job.type, "type"],
      ["Queue", job.queue, "queue"],
      ["Priority", String(job.priority), "priority"],
      ["Attempt", `${job.attempt} of ${job.max_attempts}`, "attempt"],
      ["Stage", job.stage, "stage"],
      ["Tags", job.tags.join(", "), "tags"],
      ["Tenant", job.tenant, "tenant"],
      ["Batch", batch, "batch"],
      ["Follows", parent, "parent"],
      ["Created", time(job.created_at), "created"],
      ["Runs at", job.run_at === job.created_at ? "" : time(job.run_at), "run-at"],
      ["Started", time(job.started_at), "started"],
      ["Finished", time(job.finished_at), "finished"],
      ["Timeout", seconds(job.timeout_s), "timeout"],
    ]);
  }

  showArtifacts(job) {
    const list = $("job-artifacts");
    const key = JSON.stringify(job.artifacts.map((a) => [a.name, a.size]));
    const before = [...list.querySelectorAll("img")];
    const changed = renderOnce(list, key, () => {
      if (!job.artifacts.length) return [element("li", {}, "No artifacts.")];
      return job.artifacts.map((artifact) => this.artifact(job, artifact));
    });
    if (changed) for (const img of before) URL.revokeObjectURL(img.src);
  }

  artifact(job, artifact) {
    const save = element("button", { type: "button" }, `Download ${artifact.name}`);
    save.addEventListener("click", () => this.download(artifact, save));
    const item = element(
      "li",
      {},
      element("code", {}, artifact.name),
      ` ${bytes(artifact.size)}, ${artifact.content_type} `,
      save,
    );
    item.dataset.artifact = artifact.name;
    if (artifact.content_type.startsWith("image/")) this.image(item, job, artifact);
    return item;
  }

  async image(item, job, artifact) {
    try {
      const src = await blobUrl(artifact.url);
      const alt = `${artifact.name} of job ${short(job.id)}`;
      item.append(element("img", { src, alt }));
    } catch (error) {
      report(error);
    }
  }

  async download(artifact, button) {
    button.disabled = true;
    try {
      const href = await blobUrl(artifact.url);
      const link = element("a", { href, download: artifact.name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      // The browser has taken the file by the next task; the URL may go then.
      setTimeout(() => URL.revokeObjectURL(href));
    } catch (error) {
      report(error);
    } finally {
      button.disabled = false;
    }
  }

  async follow() {
    const controller = new AbortController();
    const id = this.id;
    this.stream = controller;
    try {
      await followEvents(id, controller.signal, (change) => this.show(change));
      // Ended: read the whole job again for its result, error, attempts and artifacts.
      this.stream = null;
      await this.refresh();
    } catch (error) {
      report(error); // the next refresh follows it again if it still runs
    } finally {
      if (this.stream === controller) this.stream = null;
    }
  }

  async act(verb, done) {
    const id = this.id;
    const button = $(`job-${verb}`);
    button.disabled = true;
    try {
      const job = await postJson(`${jobPath(id)}/${verb}`);
      notice(`${done}: job ${short(id)}.`);
      if (id !== this.id) return; // another job was opened meanwhile
      this.show(job);
      if (!this.stream) this.follow();
    } catch (error) {
      report(error);
    } finally {
      // A cancellation asked for stays asked for: its button stays disabled (see show).
      button.disabled = verb === "cancel" && Boolean(this.job?.cancel_requested);
    }
  }

  // The logs of the chosen attempt (the latest until one is chosen), from
  // GET /v1/jobs/{id}/logs?attempt=N.
  async loadLogs() {
    const id = this.id;
    const attempts = this.job.attempts.map((a) => a.attempt);
    const attempt = this.chosenAttempt ?? attempts.at(-1);
    renderOnce($("log-attempt"), attempts.join(","), () =>
      attempts.map((n) => element("option", { value: String(n) }, `Attempt ${n}`)),
    );
    $("log-attempt").disabled = !attempts.length;
    if (attempt) $("log-attempt").value = String(attempt);
    let logs = null;
    if (attempt) {
      try {
        logs = await getJson(`${jobPath(id)}/logs?attempt=${attempt}`);
      } catch (error) {
        report(error);
      }
    }
    if (id !== this.id) return;
    const lines = logs?.lines ?? [];
    const shown = `${id} ${attempt} ${lines.length} ${lines.at(-1)?.seq}`;
    if (this.logsShown !== shown) {
      this.logsShown = shown;
      $("job-logs").replaceChildren(...lines.map(logLine));
    }
    const dropped = logs?.dropped ? `${logs.dropped} earlier lines were dropped.` : "";
    const none = attempt ? "No logs." : "No attempt yet.";
    setText($("job-logs-note"), lines.length ? dropped : none);
  }
}
