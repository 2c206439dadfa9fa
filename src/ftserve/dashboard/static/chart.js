// A chart by step, drawn as SVG: train and validation loss, or for a reinforcement job its mean rewards.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640, HEIGHT = 260;
const PAD = {left: 52, right: 16, top: 16, bottom: 36};
export const SERIES = [
  {key: "train_loss", label: "Training loss", class: "train"},
  {key: "valid_loss", label: "Validation loss", class: "valid"},
];
export const REWARD_SERIES = [
  {key: "train_reward_mean", label: "Training reward (mean)", class: "train"},
  {key: "valid_reward_mean", label: "Validation reward (mean)", class: "valid"},
];

function s(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

// About `count` round values (1, 2 or 5 times a power of ten apart) covering lo..hi.
function ticks(lo, hi, count, whole = false) {
  const raw = (hi - lo) / count || 1;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * magnitude).find((candidate) => candidate >= raw);
  if (whole) step = Math.max(1, Math.round(step));
  const out = [];
  for (let value = Math.ceil(lo / step) * step; value <= hi + step * 1e-9; value += step) out.push(Number(value.toPrecision(12)));
  return out;
}

// `points`: [{step, <series keys>?}] sorted by step, of which those with a value of `series` are drawn;
// `totalSteps` fixes the x axis, so the line grows across it as the job runs. `name`: what is plotted.
export function lossChart(allPoints, totalSteps, series = SERIES, name = "Loss") {
  const points = allPoints.filter((p) => series.some((one) => typeof p[one.key] === "number"));
  const values = points.flatMap((p) => series.map((one) => p[one.key])).filter((v) => typeof v === "number");
  const last = points.at(-1) ?? {};
  const first = series[0];
  const summary = points.length
    ? `${name} by step: ${points.length} steps plotted, ${first.label.toLowerCase()} ${last[first.key] ?? "not reported"} at step ${last.step}.`
    : `${name} by step: no steps reported yet.`;
  const svg = s("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": summary, "data-points": points.length});
  const xMax = Math.max(totalSteps || 0, last.step || 0, 1);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!values.length) [lo, hi] = [0, 1];
  const margin = (hi - lo) * 0.08 || 0.5;
  lo = lo >= 0 ? Math.max(0, lo - margin) : lo - margin;
  hi += margin;
  const x = (step) => PAD.left + (step / xMax) * (WIDTH - PAD.left - PAD.right);
  const y = (loss) => HEIGHT - PAD.bottom - ((loss - lo) / (hi - lo)) * (HEIGHT - PAD.top - PAD.bottom);

  for (const value of ticks(lo, hi, 6)) {
    svg.append(s("line", {class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value)}),
      s("text", {class: "tick", x: PAD.left - 6, y: y(value), "text-anchor": "end", "dominant-baseline": "middle"}, String(value)));
  }
  for (const step of ticks(0, xMax, 6, true)) {
    svg.append(s("text", {class: "tick", x: x(step), y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle"}, String(step)));
  }
  svg.append(
    s("line", {class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom}),
    s("text", {class: "tick", x: (PAD.left + WIDTH - PAD.right) / 2, y: HEIGHT - 4, "text-anchor": "middle"}, "step"));

  for (const line of series) {
    const own = points.filter((p) => typeof p[line.key] === "number");
    if (own.length === 1) {
      svg.append(s("circle", {class: line.class, cx: x(own[0].step), cy: y(own[0][line.key]), r: 3}));
    } else if (own.length > 1) {
      const path = own.map((p) => `${x(p.step).toFixed(1)},${y(p[line.key]).toFixed(1)}`).join(" ");
      svg.append(s("polyline", {class: line.class, points: path}));
    }
  }
  return svg;
}
