// Batches: the newest ones with their counts, and one batch in detail with its jobs.

import { batchPath, getJson, withQuery } from "./api.js";
import {
  $,
  clear,
  element,
  Pager,
  percent,
  progressBar,
  row,
  seconds,
  setText,
  showFacts,
  short,
  tableHead,
  time,
} from "./dom.js";
import { JobTable, statusChoices } from "./jobs.js";

const PAGE_SIZE = 50;

tableHead($("batches"), ["Batch", "Status", "Jobs", "Progress", "Created"]);

const counted = (batch) =>
  `${batch.counts.completed ?? 0} of ${batch.total} done, ${batch.counts.failed ?? 0} failed`;

export function renderBatches(batches) {
  $("batches").replaceChildren(
    ...batches.map((b) => {
      const bar = progressBar(`Progress of batch ${short(b.id)}`);
      bar.value = b.progress;
      const link = element("a", { href: `#/batches/${encodeURIComponent(b.id)}` }, short(b.id));
      return row({ batchId: b.id, status: b.status }, [
        link,
        b.status,
        counted(b),
        element("span", { className: "progress" }, bar, percent(b.progress)),
        time(b.created_at),
      ]);
    }),
  );
}

export class BatchDetail {
  constructor(load) {
    this.id = null;
    this.table = new JobTable($("batch-jobs"));
    this.pager = new Pager("batch-jobs", "Pages of the batch's jobs", load);
    statusChoices($("batch-status"));
    $("batch-status").addEventListener("change", () => {
      this.pager.reset();
      load();
    });
  }

  open(id) {
    this.clear();
    this.id = id;
    setText($("batch-title"), `Batch ${short(id)}`);
  }

  clear() {
    this.stop();
    this.id = null;
    this.pager.reset();
    $("batch-status").value = "";
    $("batch-title").textContent = "Batch";
    delete $("batch-view").dataset.status;
    $("batch-progress").value = 0;
    $("batch-percent").textContent = "";
    clear($("batch-facts"));
    this.table.render([]);
  }

  stop() {
    this.table.stop();
  }

  async refresh() {
    const id = this.id;
    const query = {
      limit: String(PAGE_SIZE),
      status: $("batch-status").value,
      cursor: this.pager.cursor,
    };
    const asked = `${id} ${query.status} ${this.pager.position}`;
    const [batch, page] = await Promise.all([
      getJson(batchPath(id)),
      getJson(withQuery(`${batchPath(id)}/jobs`, query)),
    ]);
    const now = `${this.id} ${$("batch-status").value} ${this.pager.position}`;
    if (asked !== now) return; // another batch, status or page was asked for meanwhile
    $("batch-view").dataset.status = batch.status;
    $("batch-progress").value = batch.progress;
    setText($("batch-percent"), `${percent(batch.progress)} · ${counted(batch)}`);
    const counts = Object.entries(batch.counts)
      .filter(([, n]) => n)
      .map(([status, n]) => `${n} ${status}`);
    showFacts($("batch-facts"), [
      ["Id", element("code", {}, batch.id), "id"],
      ["Status", batch.status, "status"],
      ["Jobs", `${batch.total}: ${counts.join(", ")}`, "counts"],
      ["Time left", batch.eta_s == null ? "" : `about ${seconds(batch.eta_s)}`, "eta"],
      ["Tags", batch.tags.join(", "), "tags"],
      ["Created", time(batch.created_at), "created"],
      ["Finished", time(batch.finished_at), "finished"],
    ]);
    this.table.render(page.jobs);
    this.pager.shown(page.next_cursor, page.jobs.length);
  }
}
