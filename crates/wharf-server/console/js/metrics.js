// GET /metrics (Prometheus text) read by the console: parsed into series,
// sampled every few seconds so counters become rates (publish/consume per
// topic, CPU), and the fsync histogram becomes percentiles. It needs the
// metrics right; without it the overview says so and shows the rest.

import { get } from './api.js';

/** Parses the text format into `{name: [{labels, value}]}`. */
export function parse(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
    }
    (out[m[1]] ||= []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

/** Sum of a family's values grouped by one label (or all, without one). */
export function sumBy(fams, name, label) {
  const acc = {};
  for (const s of fams[name] || []) {
    const k = label ? s.labels[label] : '';
    acc[k] = (acc[k] || 0) + s.value;
  }
  return acc;
}

/** The `q` quantile from cumulative histogram buckets (`le` labels), interpolated. */
export function quantile(fams, name, q) {
  const b = (fams[`${name}_bucket`] || [])
    .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), n: s.value }))
    .sort((x, y) => x.le - y.le);
  const total = b.length ? b[b.length - 1].n : 0;
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0, prevN = 0;
  for (const { le, n } of b) {
    if (n >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * ((rank - prevN) / Math.max(1, n - prevN));
    }
    prevLe = le; prevN = n;
  }
  return prevLe;
}

/** Keeps the last `keep` samples and derives rates between the last two. */
export class Sampler {
  constructor(keep = 60) { this.keep = keep; this.samples = []; this.error = null; }

  async sample() {
    try {
      const text = await get('/metrics');
      const fams = parse(text);
      this.samples.push({ t: performance.now() / 1000, fams });
      if (this.samples.length > this.keep) this.samples.shift();
      this.error = null;
      return fams;
    } catch (e) {
      this.error = e;
      return null;
    }
  }

  latest() { return this.samples[this.samples.length - 1]?.fams || null; }

  /** `sumBy` of one sample, computed once per sample (rows redraw on scroll). */
  sums(sample, name, label) {
    const k = `${name}|${label || ''}`;
    sample.sums ||= {};
    return (sample.sums[k] ||= sumBy(sample.fams, name, label));
  }

  /** Per-second rate history of counter `name` summed by `label` value `key`. */
  rates(name, label, key) {
    const pts = [];
    for (let i = 1; i < this.samples.length; i++) {
      const a = this.samples[i - 1], b = this.samples[i];
      const va = this.sums(a, name, label)[key] || 0, vb = this.sums(b, name, label)[key] || 0;
      pts.push(Math.max(0, (vb - va) / Math.max(0.001, b.t - a.t)));
    }
    return pts;
  }

  /** History of a gauge summed by `label` value `key`. */
  gauge(name, label, key) {
    return this.samples.map((s) => this.sums(s, name, label)[key] || 0);
  }
}
