// The raypipe job page: queues, throughput and failure charts, batches and a searchable,
// paged list of jobs; one job (#/jobs/{id}) or batch (#/batches/{id}) in detail. It holds
// no data of its own: everything comes from the /v1 API with the user's key (api.js), and
// every text is inserted as text (dom.js).

import { currentKey, forgetKey, getJson, postJson, useKey, withQuery } from "./api.js";
import { BatchDetail, renderBatches } from "./batches.js";
import { drawCharts } from "./charts.js";
import { $, element, notice, Pager, percent, report, row, tableHead } from "./dom.js";
import { forgetEvents, JobDetail, JobTable, statusChoices } from "./jobs.js";

const REFRESH_MS = 5000;
// The statistics cost the database more than a page of jobs: charts refresh less often.
const CHARTS_MS = 30_000;
const PAGE_SIZE = 50;
const VIEWS = { jobs: "job", batches: "batch" };

let timer = null;
let view = "overview"; // or "job", "batch"
let generation = 0; // bumped when the key or the view changes: older answers are dropped
let chartsAt = 0; // when the charts were last drawn (0: draw them at the next refresh)
let jobTypesOf = null; // the key whose job types the type search suggests
let filters = {}; // the job list's search: type, tag, status

const jobs = new JobTable($("jobs"));
statusChoices($("search-status"));
const jobPager = new Pager("jobs", "Pages of jobs", () => refresh());
const jobDetail = new JobDetail();
const batchDetail = new BatchDetail(() => refresh());

// -- queues ------------------------------------------------------------------------------

const QUEUE_COLUMNS = [
  "Queue",
  "State",
  "Waiting",
  "Running",
  "Concurrency",
  "Oldest wait",
  "Action",
];
const TENANT_COLUMNS = [
  "Tenant",
  "Waiting",
  "Running",
  "Weight",
  "Share",
  "Recent usage (resource-s)",
];
tableHead($("queues"), QUEUE_COLUMNS);

function renderQueues(queues) {
  $("queues").replaceChildren(...queues.flatMap((q) => [queueRow(q), ...tenantRows(q)]));
}

function queueRow(q) {
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
}

// The tenants with jobs waiting or running in a queue (every one for an admin key, the
// key's own otherwise), in a table on a row under the queue's; nothing when it has none.
function tenantRows(q) {
  if (!q.tenants?.length) return [];
  const tenants = element(
    "tbody",
    {},
    ...q.tenants.map((t) =>
      row({ tenant: t.tenant }, [
        t.tenant,
        String(t.waiting),
        String(t.running),
        String(t.weight),
        percent(t.share * 100),
        t.usage_s == null ? "–" : String(Math.round(t.usage_s * 10) / 10),
      ]),
    ),
  );
  const table = element(
    "table",
    { className: "tenants" },
    element("caption", {}, `Tenants in ${q.name}`),
    tenants,
  );
  tableHead(tenants, TENANT_COLUMNS);
  const under = element("tr", {}, element("td", { colSpan: QUEUE_COLUMNS.length }, table));
  under.dataset.tenantsOf = q.name;
  return [under];
}

async function toggleQueue(name, verb, button) {
  button.disabled = true;
  try {
    await postJson(`/v1/queues/${encodeURIComponent(name)}/${verb}`);
    notice(`Queue ${name} ${verb === "pause" ? "paused" : "resumed"}.`);
    refresh();
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}

// -- the overview ------------------------------------------------------------------------

// The chosen window, ending now. Both ends are sent: a window of exactly an hour (a day…)
// gets round buckets (60 of a minute); one a request's latency longer would get 2 minutes.
function statsPath() {
  const until = Date.now();
  const since = until - Number($("chart-window").value) * 1000;
  const iso = (ms) => new Date(ms).toISOString();
  return withQuery("/v1/stats", { since: iso(since), until: iso(until) });
}

// The type search suggests the registered job types, read once per key.
const jobTypes = () => (jobTypesOf === currentKey() ? null : getJson("/v1/job-types"));

async function refreshOverview(current) {
  const position = jobPager.position;
  const query = { limit: String(PAGE_SIZE), ...filters, cursor: jobPager.cursor };
  const chartsDue = Date.now() - chartsAt >= CHARTS_MS;
  const [queues, batches, list, stats, types] = await Promise.all([
    getJson("/v1/queues"),
    getJson("/v1/batches?limit=20"),
    getJson(withQuery("/v1/jobs", query)),
    chartsDue ? getJson(statsPath()) : null,
    jobTypes(),
  ]);
  if (!current() || position !== jobPager.position) return; // moved on meanwhile
  renderQueues(queues);
  renderBatches(batches.batches);
  jobs.render(list.jobs);
  jobPager.shown(list.next_cursor, list.jobs.length);
  if (stats) {
    chartsAt = Date.now();
    drawCharts(stats, $("throughput-chart"), $("failure-chart"));
  }
  if (types) {
    $("job-types").replaceChildren(...types.map((t) => element("option", { value: t.type })));
    jobTypesOf = currentKey();
  }
}

// -- refreshing and views ----------------------------------------------------------------

async function refresh() {
  if (!currentKey() || document.hidden) return;
  const asked = generation;
  const current = () => asked === generation;
  try {
    if (view === "job") await jobDetail.refresh();
    else if (view === "batch") await batchDetail.refresh();
    else await refreshOverview(current);
    if (current() && $("notice").textContent.startsWith("Error")) notice("");
  } catch (error) {
    if (current()) report(error);
  }
}

function stopStreams() {
  jobs.stop();
  jobDetail.stop();
  batchDetail.stop();
}

// An id from the address as it was written into it (a hand-typed "%" stays as it is).
function decoded(id) {
  try {
    return decodeURIComponent(id);
  } catch {
    return id;
  }
}

// Shows the view the address names; ``focus`` moves the keyboard focus into it.
function route(focus) {
  const [, kind, id] = location.hash.match(/^#\/(jobs|batches)\/([^/]+)$/) || [];
  const left = view === "job" ? jobDetail.id : null;
  generation += 1;
  stopStreams();
  view = VIEWS[kind] ?? "overview";
  $("overview").hidden = view !== "overview";
  $("job-view").hidden = view !== "job";
  $("batch-view").hidden = view !== "batch";
  if (view === "job") jobDetail.open(decoded(id));
  if (view === "batch") batchDetail.open(decoded(id));
  if (focus) {
    const address = `#/jobs/${encodeURIComponent(left)}`;
    const back = left && $("jobs").querySelector(`a[href="${CSS.escape(address)}"]`);
    const heading = { overview: "jobs-title", job: "job-title", batch: "batch-title" }[view];
    (back || $(heading)).focus();
  }
  refresh();
}

function start() {
  stop();
  notice("");
  route(false);
  timer = setInterval(refresh, REFRESH_MS);
}

function stop() {
  clearInterval(timer);
  stopStreams();
}

// -- searching ---------------------------------------------------------------------------

// The list with the search's type, tag and status, from its first page.
function searchJobs() {
  const value = (field) => $(field).value.trim();
  filters = {
    type: value("search-type"),
    tag: value("search-tag"),
    status: value("search-status"),
  };
  jobPager.reset();
  generation += 1;
  refresh();
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("search-id").value.trim();
  if (!id) {
    searchJobs();
    return;
  }
  // An id opens that job (GET /v1/jobs/{id}): the list has no id filter.
  const address = `#/jobs/${encodeURIComponent(id)}`;
  if (location.hash === address) route(true);
  else location.hash = address;
});

// "Clear" empties the fields first, then the list follows them.
$("search").addEventListener("reset", () => setTimeout(searchJobs));
$("search-status").addEventListener("change", searchJobs);

// -- the key and the controls ------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  useKey($("key").value.trim());
  forgetEvents();
  jobs.render([]);
  chartsAt = 0;
  start();
});

$("forget").addEventListener("click", () => {
  forgetKey();
  $("key").value = "";
  stop();
  renderQueues([]);
  renderBatches([]);
  jobs.render([]);
  jobDetail.clear();
  batchDetail.clear();
  $("throughput-chart").replaceChildren();
  $("failure-chart").replaceChildren();
  $("job-types").replaceChildren();
  jobTypesOf = null;
  notice("Key forgotten.");
});

document.addEventListener("refused", stop);
window.addEventListener("hashchange", () => route(true));
$("refresh").addEventListener("click", () => {
  chartsAt = 0;
  refresh();
});
$("chart-window").addEventListener("change", () => {
  chartsAt = 0;
  refresh();
});

$("key").value = currentKey();
if (currentKey()) start();
else route(false);
