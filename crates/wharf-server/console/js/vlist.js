// A virtualized list: only the rows in view (plus a margin) are in the
// DOM, placed by transform over a spacer as tall as every row, so 1,000s
// of topics scroll without layout work per row. Rows are rebuilt only when
// the window of visible indices changes or `update` brings new items.

import { h } from './format.js';

export class VirtualList {
  /**
   * @param {HTMLElement} host the element to fill
   * @param {(item, index) => HTMLElement} render one row (gets class vrow)
   * @param {{rowHeight?: number, header?: HTMLElement, label?: string}} opts
   */
  constructor(host, render, { rowHeight = 40, header = null, label = 'list' } = {}) {
    this.render = render;
    this.rowHeight = rowHeight;
    this.items = [];
    this.window = [-1, -1];
    this.el = h('div', { class: 'vlist', role: 'table', 'aria-label': label, 'aria-rowcount': '0' });
    if (header) this.el.append(header);
    this.space = h('div', { class: 'vspace', role: 'rowgroup' });
    this.el.append(this.space);
    host.append(this.el);
    this.el.addEventListener('scroll', () => this.draw(false), { passive: true });
    this.el.addEventListener('keydown', (e) => this.keys(e));
    this.headerHeight = header ? rowHeight : 0;
    this.maxHeight = Math.max(240, Math.round(window.innerHeight * 0.7));
  }

  update(items) {
    this.items = items;
    this.el.setAttribute('aria-rowcount', String(items.length));
    this.space.style.height = `${items.length * this.rowHeight}px`;
    // As tall as the rows up to a screenful; then it scrolls.
    const want = Math.min(this.maxHeight, this.headerHeight + Math.max(1, items.length) * this.rowHeight + 2);
    this.el.style.height = `${want}px`;
    // Fewer rows than the scroll position reaches (a filter typed while
    // scrolled down): clamp it now. The browser clamps too, but later, with
    // a scroll event; until then the window would hold no row.
    const maxTop = this.maxScrollTop(this.el.clientHeight || 420);
    if (this.el.scrollTop > maxTop) this.el.scrollTop = maxTop;
    this.draw(true);
  }

  /** The furthest the list can scroll with its current items in a `view` px tall window. */
  maxScrollTop(view) {
    return Math.max(0, this.headerHeight + this.items.length * this.rowHeight - view);
  }

  draw(force) {
    const view = this.el.clientHeight || 420;
    const top = Math.max(0, Math.min(this.el.scrollTop, this.maxScrollTop(view)) - this.headerHeight);
    const first = Math.max(0, Math.floor(top / this.rowHeight) - 10);
    const last = Math.min(this.items.length, Math.ceil((top + view) / this.rowHeight) + 10);
    if (!force && first === this.window[0] && last === this.window[1]) return;
    this.window = [first, last];
    const rows = [];
    for (let i = first; i < last; i++) {
      const row = this.render(this.items[i], i);
      row.classList.add('vrow');
      row.setAttribute('role', 'row');
      row.setAttribute('aria-rowindex', String(i + 1));
      row.style.transform = `translateY(${i * this.rowHeight}px)`;
      rows.push(row);
    }
    // Keep keyboard focus on the same row across a redraw.
    const focused = document.activeElement?.closest?.('.vrow');
    const at = focused && this.space.contains(focused) ? focused.getAttribute('aria-rowindex') : null;
    this.space.replaceChildren(...rows);
    if (at) this.space.querySelector(`[aria-rowindex="${at}"] a, [aria-rowindex="${at}"] button`)?.focus({ preventScroll: true });
  }

  /** Arrow keys move between rows' first links. */
  keys(e) {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
    const row = document.activeElement?.closest?.('.vrow');
    if (!row) return;
    const i = Number(row.getAttribute('aria-rowindex')) - 1 + (e.key === 'ArrowDown' ? 1 : -1);
    if (i < 0 || i >= this.items.length) return;
    e.preventDefault();
    const top = i * this.rowHeight;
    if (top < this.el.scrollTop - this.headerHeight || top > this.el.scrollTop + this.el.clientHeight - 2 * this.rowHeight) {
      this.el.scrollTop = Math.max(0, top - this.rowHeight);
    }
    this.draw(true);
    this.space.querySelector(`[aria-rowindex="${i + 1}"] a`)?.focus({ preventScroll: true });
  }
}
