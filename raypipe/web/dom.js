// Small DOM helpers shared by the page's views, the status line and the pager. Text goes
// in as text only (textContent, attributes): job types, messages and errors are user input.

export const $ = (id) => document.getElementById(id);
export const short = (id) => id.slice(0, 8);
export const percent = (value) => `${Math.round(value)}%`;

export function element(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

export function row(attributes, cells) {
  const tr = element("tr");
  Object.assign(tr.dataset, attributes);
  tr.append(...cells.map((cell) => element("td", {}, cell)));
  return tr;
}

// Puts a header above a table's <tbody>: a column for each of ``titles``.
export function tableHead(tbody, titles) {
  const cells = titles.map((title) => element("th", { scope: "col" }, title));
  tbody.before(element("thead", {}, element("tr", {}, ...cells)));
}

export function progressBar(label) {
  return element("progress", { max: 100, value: 0, ariaLabel: label });
}

export function time(iso) {
  return iso ? element("time", { dateTime: iso }, new Date(iso).toLocaleString()) : "";
}

export function seconds(value) {
  if (value == null) return "–";
  if (value < 60) return `${Math.round(value * 10) / 10} s`;
  if (value < 3600) return `${Math.round(value / 60)} min`;
  if (value < 86400) return `${Math.round(value / 360) / 10} h`;
  const days = Math.round(value / 8640) / 10;
  return `${days} ${days === 1 ? "day" : "days"}`;
}

export function bytes(size) {
  const units = ["B", "KB", "MB", "GB"];
  const power = Math.min(units.length - 1, Math.floor(Math.log10(Math.max(size, 1)) / 3));
  return `${Math.round((size / 1000 ** power) * 10) / 10} ${units[power]}`;
}

// Sets a node's text only when it changed, so a refresh keeps the reader's selection.
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

const shown = new WeakMap(); // node -> the key of what renderOnce put in it

// Rebuilds a node's children only when what they show changed (``key``), so a refresh
// keeps focus, selections and opened <details> where they are.
export function renderOnce(node, key, build) {
  if (shown.get(node) === key) return false;
  shown.set(node, key);
  node.replaceChildren(...build());
  return true;
}

// Empties a node that renderOnce fills.
export function clear(node) {
  node.replaceChildren();
  shown.delete(node);
}

// Term, description and field name triples shown in a <dl>, rebuilt only when one
// changed; empty descriptions are left out.
export function showFacts(list, triples) {
  const given = triples.filter(([, value]) => value !== "" && value != null);
  const key = JSON.stringify(given.map(([term, value]) => [term, value.textContent ?? value]));
  renderOnce(list, key, () =>
    given.flatMap(([term, value, field]) => {
      const description = element("dd", {}, value);
      description.dataset.field = field;
      return [element("dt", {}, term), description];
    }),
  );
}

// -- the status line ---------------------------------------------------------------------

export function notice(text) {
  $("notice").textContent = text;
}

// Shows a failed call; a refused key (401) also stops the page (see app.js).
export function report(error) {
  if (error.name === "AbortError") return;
  if (error.status === 401) {
    document.dispatchEvent(new CustomEvent("refused"));
    notice(`The API refused this key: ${error.message}`);
  } else {
    notice(`Error: ${error.message}`);
  }
}

// -- paging ------------------------------------------------------------------------------

// Previous/Next over a list the API pages with cursors: the cursor of every page shown so
// far is kept, so Previous goes back exactly and a refresh re-reads the same page. Its
// controls go under the table of the <tbody> whose id is ``prefix``, named ``label``.
export class Pager {
  constructor(prefix, label, load) {
    const button = (id, text) =>
      element("button", { type: "button", id: `${prefix}-${id}`, disabled: true }, text);
    this.previous = button("previous", "Previous page");
    this.next = button("next", "Next page");
    this.label = element("span", { id: `${prefix}-page`, ariaLive: "polite" }, "Page 1");
    const nav = element("nav", { className: "pager", ariaLabel: label });
    nav.append(this.previous, this.label, this.next);
    $(prefix).closest("table").after(nav);
    this.cursors = [null];
    this.nextCursor = null;
    this.busy = false;
    const go = async (move) => {
      if (this.busy) return; // one move at a time: a second Next would skip a page
      this.busy = true;
      move();
      try {
        await load();
      } finally {
        this.busy = false;
      }
    };
    this.previous.addEventListener("click", () => go(() => this.cursors.pop()));
    this.next.addEventListener("click", () => go(() => this.cursors.push(this.nextCursor)));
  }

  get cursor() {
    return this.cursors.at(-1);
  }

  // The position, to tell whether an answer still belongs to the page shown.
  get position() {
    return this.cursors.join(" ");
  }

  reset() {
    this.cursors = [null];
    this.nextCursor = null;
  }

  // After a page came: its next cursor (null on the last page) and how many it held.
  shown(nextCursor, count) {
    this.nextCursor = nextCursor;
    const page = this.cursors.length;
    const focused = document.activeElement;
    this.previous.disabled = page === 1;
    this.next.disabled = !nextCursor || count === 0;
    this.label.textContent = `Page ${page}` + (count === 0 && page > 1 ? " · no more" : "");
    // A button that turned disabled under the keyboard hands the focus to the other one.
    if (focused.disabled && (focused === this.previous || focused === this.next)) {
      (focused === this.next ? this.previous : this.next).focus();
    }
  }
}
