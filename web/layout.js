// Which tile goes where on the stage, how large, and how each remote video is wanted from
// the server (shown or not, low or high quality).
//
//   const layout = new StageLayout(elements, { dominant: () => id });
//   layout.setTiles([{id, el, remote}])   every tile in join order, ours first
//   layout.setMode('gallery' | 'speaker');  layout.setSharing(bool);  layout.setPinned([ids])
//   layout.setSelfView('float' | 'grid');  layout.page(+1 | -1);  layout.render() -> Map id -> {shown, quality}
//   layout.addEventListener('change', ...)  the user changed the mode, the page or the self view
//   layout.addEventListener('resize', ...)  the stage changed size: render again
//
// Gallery (as Meet and Jitsi do): every tile 16:9 and of one size, the largest that fits
// the stage for the number of tiles on the page: each column count is tried, and the one
// that gives the widest tile wins (`fitGrid`). So 4 tiles in a wide window make a 2 x 2
// grid that fills the stage, and a portrait phone stacks them. A page holds as many tiles as
// stay at least MIN_TILE_W wide (at most MAX_PAGE); further ones go to other pages, hidden
// and unsubscribed. Order: ours, then the pinned, then everyone else by join order.
// Our own tile floats small in a corner of the stage when there is exactly one other person
// (dragged, or moved with the arrow keys), unless the user keeps it in the grid.
// Speaker: the pinned participant, else the dominant speaker, large; everyone else in a
// strip beside it that asks for the lowest layer. A screen share takes the large place in
// either mode, the tiles then all go to the strip.

/** The fixed gallery page size of old (tests may still set one with setPageSize). */
export const PAGE_SIZE = 9;
/** Tiles per page when the stage is large: Meet's default tops out about here. */
export const MAX_PAGE = 25;
/** The narrowest tile the gallery makes before it starts a new page (CSS px). */
const MIN_TILE_W = 200;
const MIN_TILE_W_PHONE = 120;
const ASPECT = 16 / 9;

/**
 * The largest 16:9 tile for `n` tiles in a `width` x `height` area with `gap` between
 * them: {cols, rows, w, h} (w, h in whole CSS px, never more than the area allows).
 */
export function fitGrid(n, width, height, gap) {
  let best = { cols: 1, rows: Math.max(1, n), w: 0, h: 0 };
  if (n <= 0 || width <= 0 || height <= 0) return best;
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const cellW = (width - (cols - 1) * gap) / cols;
    const cellH = (height - (rows - 1) * gap) / rows;
    const w = Math.floor(Math.min(cellW, cellH * ASPECT));
    if (w > best.w) best = { cols, rows, w, h: Math.floor(w / ASPECT) };
  }
  return best;
}

/** How many tiles a page of a `width` x `height` stage holds, each at least `minW` wide. */
export function pageCapacity(width, height, gap, minW) {
  let n = 1;
  while (n < MAX_PAGE && fitGrid(n + 1, width, height, gap).w >= minW) n++;
  return n;
}

const CORNERS = ['tl', 'tr', 'bl', 'br'];

export class StageLayout extends EventTarget {
  /**
   * @param {{stage, grid, main, galleryButton, speakerButton, pager, prev, next, pageLabel}} els
   * @param {{pageSize?: number, dominant?: (accept: (id) => boolean) => string|null}} options
   */
  constructor(els, { pageSize = null, dominant = () => null } = {}) {
    super();
    this.els = els;
    /** A page size set by setPageSize, or null: as many as fit (pageCapacity). */
    this.fixedPageSize = pageSize;
    this.pageSize = pageSize ?? PAGE_SIZE;
    /** 'float': ours floats in a corner when we are two; 'grid': always in the grid. */
    this.selfView = 'float';
    this.corner = 'br';
    /** Whether our tile floats now (set by render). */
    this.selfFloating = false;
    this.dominant = dominant;
    this.mode = 'gallery';
    this.sharing = false;
    this.pageIndex = 0;
    this.pinned = [];
    /** [{id, el, remote}] in join order, ours first. */
    this.tiles = [];
    /** The id shown large in speaker view, or null. */
    this.mainId = null;
    els.selfButton?.addEventListener('click', () => this.setSelfView(this.selfView === 'grid' ? 'float' : 'grid', true));
    if (els.area) {
      let queued = false;
      new ResizeObserver(() => {
        if (queued) return;
        queued = true;
        requestAnimationFrame(() => {
          queued = false;
          this.dispatchEvent(new CustomEvent('resize'));
        });
      }).observe(els.area);
    }
    els.galleryButton.addEventListener('click', () => this.setMode('gallery', true));
    els.speakerButton.addEventListener('click', () => this.setMode('speaker', true));
    els.prev.addEventListener('click', () => this.page(-1));
    els.next.addEventListener('click', () => this.page(+1));
    // PageUp / PageDown anywhere on the stage turn gallery pages.
    els.stage.addEventListener('keydown', (ev) => {
      if (this.mode !== 'gallery' || this.sharing || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      if (ev.key === 'PageDown' && !els.next.disabled) this.page(+1);
      else if (ev.key === 'PageUp' && !els.prev.disabled) this.page(-1);
      else return;
      ev.preventDefault();
    });
  }

  setTiles(tiles) {
    this.tiles = tiles;
  }

  /** Tiles per gallery page, fixed from now on (the page shown keeps its first tile in view). */
  setPageSize(n) {
    const size = Math.max(1, Math.floor(n));
    this.fixedPageSize = size;
    if (size === this.pageSize) return;
    const first = this.pageIndex * this.pageSize;
    this.pageSize = size;
    this.pageIndex = Math.floor(first / size);
    this._changed();
  }

  setMode(mode, byUser = false) {
    if (mode !== 'gallery' && mode !== 'speaker') return;
    if (mode === this.mode) return;
    this.mode = mode;
    if (byUser) this._changed();
  }

  setSelfView(view, byUser = false) {
    if (view !== 'float' && view !== 'grid') return;
    if (view === this.selfView) return;
    this.selfView = view;
    if (byUser) this._changed();
  }

  /** Moves our floating tile to `corner` (tl, tr, bl, br). */
  setCorner(corner, byUser = false) {
    if (!CORNERS.includes(corner) || corner === this.corner) return;
    this.corner = corner;
    if (byUser) this._changed();
  }

  /** The corner one arrow key away from ours (`key`: ArrowLeft, ArrowRight, ArrowUp, ArrowDown). */
  cornerToward(key) {
    const [v, h] = this.corner.split('');
    if (key === 'ArrowLeft') return `${v}l`;
    if (key === 'ArrowRight') return `${v}r`;
    if (key === 'ArrowUp') return `t${h}`;
    if (key === 'ArrowDown') return `b${h}`;
    return this.corner;
  }

  setSharing(sharing) {
    this.sharing = !!sharing;
  }

  setPinned(ids) {
    this.pinned = [...ids];
  }

  /** Tiles that take part in the gallery's pages (not our floating one). */
  get _paged() {
    return this.selfFloating ? this.tiles.length - 1 : this.tiles.length;
  }

  get pageCount() {
    return Math.max(1, Math.ceil(this._paged / this.pageSize));
  }

  page(delta) {
    const to = Math.min(this.pageCount - 1, Math.max(0, this.pageIndex + delta));
    if (to === this.pageIndex) return;
    this.pageIndex = to;
    this._changed();
  }

  _changed() {
    this.dispatchEvent(new CustomEvent('change', { detail: { mode: this.mode, page: this.pageIndex } }));
  }

  /** Tiles in display order: ours, the pinned (in pin order), the others by join order. */
  ordered() {
    const rank = (t) => {
      if (!t.remote) return -1;
      const p = this.pinned.indexOf(t.id);
      return p >= 0 ? p : this.pinned.length;
    };
    return this.tiles
      .map((t, i) => ({ t, i }))
      .sort((a, b) => rank(a.t) - rank(b.t) || a.i - b.i)
      .map(({ t }) => t);
  }

  /** Who is shown large in speaker view: pinned, else the dominant speaker, else the first. */
  _pickMain() {
    const remote = new Set(this.tiles.filter((t) => t.remote).map((t) => t.id));
    const pinned = this.pinned.find((id) => remote.has(id));
    if (pinned) return pinned;
    const dominant = this.dominant((id) => remote.has(id));
    if (dominant) return dominant;
    return this.tiles.find((t) => t.remote)?.id ?? this.tiles[0]?.id ?? null;
  }

  /**
   * Places every tile, sizes the gallery to the stage, and returns, per tile id,
   * {shown, quality}: what the tile's video should be subscribed with.
   */
  render() {
    const { stage, grid, main, area } = this.els;
    const out = new Map();
    const speaker = this.mode === 'speaker' && !this.sharing;
    const strip = this.mode === 'speaker' || this.sharing;
    const remotes = this.tiles.filter((t) => t.remote).length;
    this.selfFloating = !strip && this.selfView !== 'grid' && remotes === 1;
    const ordered = this.ordered().filter((t) => !(this.selfFloating && !t.remote));
    this.mainId = speaker ? this._pickMain() : null;

    // The stage's free area decides the page size and the tiles' size.
    const width = area?.clientWidth ?? 0;
    const height = area?.clientHeight ?? 0;
    // A phone, either way up: smaller tiles before a new page, smaller gaps.
    const phone = width > 0 && Math.min(window.innerWidth, window.innerHeight) < 500;
    const gap = phone ? 6 : 12;
    if (this.fixedPageSize == null && width > 0 && height > 0) {
      const size = pageCapacity(width, height, gap, phone ? MIN_TILE_W_PHONE : MIN_TILE_W);
      if (size !== this.pageSize) {
        const first = this.pageIndex * this.pageSize;
        this.pageSize = size;
        this.pageIndex = Math.floor(first / size);
      }
    }
    const pages = this.pageCount;
    this.pageIndex = Math.min(this.pageIndex, pages - 1);
    const first = this.pageIndex * this.pageSize;

    const inGrid = [];
    let onThisPage = 0;
    ordered.forEach((t, i) => {
      t.el.dataset.float = 'false';
      if (t.id === this.mainId) {
        if (t.el.parentElement !== main) main.replaceChildren(t.el);
        t.el.hidden = false;
        t.el.dataset.view = 'main';
        out.set(t.id, { shown: true, quality: 'high' });
        return;
      }
      inGrid.push(t.el);
      const onPage = strip || (i >= first && i < first + this.pageSize);
      if (onPage) onThisPage++;
      t.el.hidden = !onPage;
      t.el.dataset.view = strip ? 'strip' : onPage ? 'grid' : 'offpage';
      out.set(t.id, { shown: onPage, quality: strip ? 'low' : 'high' });
    });
    const self = this.tiles.find((t) => !t.remote);
    if (this.selfFloating && self) {
      inGrid.push(self.el);
      self.el.hidden = false;
      self.el.dataset.float = 'true';
      self.el.dataset.corner = this.corner;
      self.el.dataset.view = 'float';
      out.set(self.id, { shown: true, quality: 'low' });
    }
    if (self) {
      self.el.tabIndex = this.selfFloating ? 0 : -1;
      if (this.selfFloating) {
        self.el.setAttribute('aria-label', 'Your video, floating: arrow keys move it to another corner');
      } else {
        self.el.removeAttribute('aria-label');
      }
    }
    if (!this.mainId) main.replaceChildren();
    placeInOrder(grid, inGrid);

    if (!strip && width > 0 && height > 0) {
      const fit = fitGrid(Math.max(1, onThisPage), width, height, gap);
      grid.style.setProperty('--tile-w', `${fit.w}px`);
      grid.style.setProperty('--tile-h', `${fit.h}px`);
      grid.style.setProperty('--gap', `${gap}px`);
      grid.dataset.cols = String(fit.cols);
      // The area this layout is for: a test can tell a stale layout (a resize not yet seen).
      grid.dataset.area = `${width}x${height}`;
      grid.dataset.rows = String(fit.rows);
    }
    if (width > 0) {
      grid.style.setProperty('--float-w', `${Math.round(Math.min(280, Math.max(120, width * 0.22)))}px`);
    }

    stage.dataset.layout = this.mode;
    stage.classList.toggle('strip', strip);
    main.hidden = !speaker;
    this._renderControls(pages, strip);
    return out;
  }

  _renderControls(pages, strip) {
    const { galleryButton, speakerButton, selfButton, pager, prev, next, pageLabel } = this.els;
    selfButton?.setAttribute('aria-pressed', String(this.selfView === 'grid'));
    galleryButton.setAttribute('aria-pressed', String(this.mode === 'gallery'));
    speakerButton.setAttribute('aria-pressed', String(this.mode === 'speaker'));
    // The pager keeps its place (no jump) and says why it is idle.
    pager.dataset.active = String(!strip && pages > 1);
    prev.disabled = strip || this.pageIndex === 0;
    next.disabled = strip || this.pageIndex >= pages - 1;
    const text = strip ? '' : `Page ${this.pageIndex + 1} of ${pages}`;
    if (pageLabel.textContent !== text) pageLabel.textContent = text;
    pager.hidden = strip;
  }
}

/** Makes `parent`'s children exactly `children`, in order, moving only what is misplaced. */
function placeInOrder(parent, children) {
  let prev = null;
  for (const el of children) {
    const want = prev ? prev.nextElementSibling : parent.firstElementChild;
    if (want !== el) parent.insertBefore(el, want);
    prev = el;
  }
  while (prev?.nextElementSibling) prev.nextElementSibling.remove();
  if (!prev) parent.replaceChildren();
}
