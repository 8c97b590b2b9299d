// Throughput and failure-rate charts over time, drawn as SVG from the `series` of
// GET /v1/stats: a few rects and a path need no charting library. Colours come from
// style.css (the page's policy allows no inline styles).

import { element, seconds } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 180;
const MARGIN = { left: 44, right: 10, top: 10, bottom: 22 };
const STATUSES = ["completed", "failed", "cancelled"];

function shape(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

// 1, 2, 5, 10, 20, 50… the first at or above ``value``: a round top for a count axis.
function roundUp(value) {
  const magnitude = 10 ** Math.floor(Math.log10(Math.max(value, 1)));
  return [1, 2, 5, 10].map((f) => f * magnitude).find((top) => top >= value);
}

// An empty chart over the window of ``buckets``, its y axis from 0 to ``top``: the SVG,
// and the functions placing a time (ms) and a value on it.
function plot(buckets, top, label, format) {
  const since = Date.parse(buckets[0].start);
  const until = Date.parse(buckets.at(-1).end);
  const width = WIDTH - MARGIN.left - MARGIN.right;
  const height = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (ms) => MARGIN.left + ((ms - since) / (until - since)) * width;
  const y = (value) => MARGIN.top + height - (value / top) * height;
  const svg = shape("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label });
  const tick = (attributes, text) => shape("text", { class: "tick", ...attributes }, text);
  for (const value of Number.isInteger(top / 2) ? [0, top / 2, top] : [0, top]) {
    const [x1, x2] = [MARGIN.left, WIDTH - MARGIN.right];
    svg.append(
      shape("line", { class: "grid", x1, x2, y1: y(value), y2: y(value) }),
      tick({ x: x1 - 6, y: y(value) + 4, "text-anchor": "end" }, format(value)),
    );
  }
  // Times of day over a few hours, dates and times over two days, dates beyond.
  const hours = (until - since) / 3_600_000;
  const style = { dateStyle: hours > 3 ? "short" : undefined };
  if (hours <= 48) style.timeStyle = "short";
  const when = (ms) => new Date(ms).toLocaleString([], style);
  for (const [ms, anchor] of [[since, "start"], [(since + until) / 2, "middle"], [until, "end"]]) {
    svg.append(tick({ x: x(ms), y: HEIGHT - 6, "text-anchor": anchor }, when(ms)));
  }
  return { svg, x, y };
}

const span = (bucket) =>
  `${new Date(bucket.start).toLocaleString()} – ${new Date(bucket.end).toLocaleTimeString()}`;
const decided = (bucket) => bucket.completed + bucket.failed;

function throughput(buckets, label) {
  const top = roundUp(Math.max(...buckets.map((b) => decided(b) + b.cancelled)));
  const { svg, x, y } = plot(buckets, top, label, (value) => String(value));
  for (const bucket of buckets) {
    const counts = STATUSES.map((status) => `${bucket[status]} ${status}`).join(", ");
    const group = shape("g", {}, shape("title", {}, `${span(bucket)}: ${counts}`));
    const left = x(Date.parse(bucket.start));
    const barWidth = Math.max(1, x(Date.parse(bucket.end)) - left - 1);
    let base = 0;
    for (const status of STATUSES.filter((s) => bucket[s])) {
      const end = base + bucket[status];
      const height = y(base) - y(end);
      group.append(shape("rect", { class: status, x: left, width: barWidth, y: y(end), height }));
      base = end;
    }
    svg.append(group);
  }
  return svg;
}

function failureRate(buckets, label) {
  const { svg, x, y } = plot(buckets, 100, label, (value) => `${value}%`);
  let path = "";
  let joined = false; // whether the previous bucket had a point to draw the line from
  for (const bucket of buckets) {
    if (!decided(bucket)) {
      joined = false;
      continue;
    }
    const rate = (100 * bucket.failed) / decided(bucket);
    const cx = (x(Date.parse(bucket.start)) + x(Date.parse(bucket.end))) / 2;
    path += `${joined ? "L" : "M"}${cx.toFixed(1)},${y(rate).toFixed(1)} `;
    joined = true;
    const title = shape(
      "title",
      {},
      `${span(bucket)}: ${Math.round(rate)}% failed (${bucket.failed} of ${decided(bucket)})`,
    );
    svg.append(shape("circle", { class: "rate", cx, cy: y(rate), r: 3 }, title));
  }
  if (path) svg.prepend(shape("path", { class: "rate", d: path.trim() }));
  return svg;
}

function legend(status) {
  const swatch = element("span", { className: `swatch ${status}` });
  return element("span", { className: "legend" }, swatch, status);
}

// Draws both charts of ``stats`` (GET /v1/stats) into their figures.
export function drawCharts(stats, throughputFigure, failureFigure) {
  const { bucket_s: bucketS, buckets } = stats.series;
  const every = `per ${seconds(bucketS)}`;
  const jobs = stats.jobs;
  const perHour = Math.round(stats.throughput_per_hour * 10) / 10;
  const ended =
    `Jobs ended ${every}: ${jobs.completed} completed, ${jobs.failed} failed, ` +
    `${jobs.cancelled} cancelled (${perHour} per hour)`;
  throughputFigure.replaceChildren(
    element("figcaption", {}, ended, " ", ...STATUSES.map(legend)),
    throughput(buckets, ended),
  );
  const rate =
    stats.success_rate == null
      ? "no job completed or failed"
      : `${Math.round(100 * (1 - stats.success_rate))}% overall ` +
        `(${jobs.failed} of ${jobs.completed + jobs.failed})`;
  const failures = `Failure rate ${every}: ${rate}`;
  failureFigure.replaceChildren(
    element("figcaption", {}, failures),
    failureRate(buckets, failures),
  );
}
