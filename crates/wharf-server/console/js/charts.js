// Hand-written SVG charts: a sparkline for a short history and bars for a
// per-partition breakdown. SVG attributes only (no inline style), so the
// Content-Security-Policy needs no 'unsafe-inline'.

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

/** A sparkline of `values` (latest last), with an accessible label. */
export function sparkline(values, { width = 120, height = 28, label = 'trend', color = 'var(--spark)' } = {}) {
  const s = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label, class: 'spark' });
  const title = svg('title', {});
  title.textContent = label;
  s.append(title);
  const v = values.length ? values : [0];
  const max = Math.max(...v, 1e-9);
  const step = v.length > 1 ? width / (v.length - 1) : width;
  const pts = v.map((x, i) => `${(i * step).toFixed(1)},${(height - 2 - (x / max) * (height - 4)).toFixed(1)}`);
  if (v.length === 1) pts.push(`${width},${pts[0].split(',')[1]}`);
  s.append(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: color, 'stroke-width': '1.5', 'stroke-linejoin': 'round' }));
  return s;
}

/** Vertical bars, one per `{label, value}`; each bar has a title. */
export function bars(items, { width = 300, height = 70, label = 'by partition', color = 'var(--spark2)' } = {}) {
  const s = svg('svg', { width: '100%', height, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': label });
  const max = Math.max(...items.map((i) => i.value), 1);
  const bw = width / Math.max(items.length, 1);
  items.forEach((it, i) => {
    const bh = Math.max(1, (it.value / max) * (height - 2));
    const r = svg('rect', { x: (i * bw + 1).toFixed(1), y: (height - bh).toFixed(1), width: Math.max(1, bw - 2).toFixed(1), height: bh.toFixed(1), fill: color });
    const t = svg('title', {});
    t.textContent = `${it.label}: ${it.value}`;
    r.append(t);
    s.append(r);
  });
  return s;
}
