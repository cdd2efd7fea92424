// Which tile goes where on the stage: a paged gallery or a speaker view, and how each
// remote video is wanted from the server (shown or not, low or high quality).
//
//   const layout = new StageLayout(elements, { pageSize: 9, dominant: () => id });
//   layout.setTiles([{id, el, remote}])   every tile in join order, ours first
//   layout.setMode('gallery' | 'speaker');  layout.setSharing(bool);  layout.setPinned([ids])
//   layout.page(+1 | -1);  layout.render()  -> Map id -> {shown, quality}
//   layout.addEventListener('change', ...)  the user changed the mode or the page
//
// Gallery: a grid of at most `pageSize` tiles (3 x 3) per page, ours first, then the pinned,
// then everyone else by join order; tiles on other pages are hidden (and unsubscribed).
// Speaker: the pinned participant, else the dominant speaker, large; everyone else in a strip
// that asks for the lowest layer. A screen share takes the large place in either mode, the
// tiles then all go to the strip.
//
// Tiles keep their size whatever the number of people: the grid's column width is fixed by
// the stage, not by the count, the pager is always there (disabled when one page is
// enough), and the speaking ring is drawn over the tile. So nothing jumps when people come
// and go.

export const PAGE_SIZE = 9;

export class StageLayout extends EventTarget {
  /**
   * @param {{stage, grid, main, galleryButton, speakerButton, pager, prev, next, pageLabel}} els
   * @param {{pageSize?: number, dominant?: (accept: (id) => boolean) => string|null}} options
   */
  constructor(els, { pageSize = PAGE_SIZE, dominant = () => null } = {}) {
    super();
    this.els = els;
    this.pageSize = pageSize;
    this.dominant = dominant;
    this.mode = 'gallery';
    this.sharing = false;
    this.pageIndex = 0;
    this.pinned = [];
    /** [{id, el, remote}] in join order, ours first. */
    this.tiles = [];
    /** The id shown large in speaker view, or null. */
    this.mainId = null;
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

  /** Tiles per gallery page (the page shown keeps its first tile in view). */
  setPageSize(n) {
    const size = Math.max(1, Math.floor(n));
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

  setSharing(sharing) {
    this.sharing = !!sharing;
  }

  setPinned(ids) {
    this.pinned = [...ids];
  }

  get pageCount() {
    return Math.max(1, Math.ceil(this.tiles.length / this.pageSize));
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
   * Places every tile and returns, per tile id, {shown, quality}: what the tile's video
   * should be subscribed with.
   */
  render() {
    const { stage, grid, main } = this.els;
    const out = new Map();
    const ordered = this.ordered();
    const speaker = this.mode === 'speaker' && !this.sharing;
    const strip = this.mode === 'speaker' || this.sharing;
    this.mainId = speaker ? this._pickMain() : null;
    const pages = this.pageCount;
    this.pageIndex = Math.min(this.pageIndex, pages - 1);
    const first = this.pageIndex * this.pageSize;

    const inGrid = [];
    ordered.forEach((t, i) => {
      if (t.id === this.mainId) {
        if (t.el.parentElement !== main) main.replaceChildren(t.el);
        t.el.hidden = false;
        t.el.dataset.view = 'main';
        out.set(t.id, { shown: true, quality: 'high' });
        return;
      }
      inGrid.push(t.el);
      const onPage = strip || (i >= first && i < first + this.pageSize);
      t.el.hidden = !onPage;
      t.el.dataset.view = strip ? 'strip' : onPage ? 'grid' : 'offpage';
      out.set(t.id, { shown: onPage, quality: strip ? 'low' : 'high' });
    });
    if (!this.mainId) main.replaceChildren();
    placeInOrder(grid, inGrid);

    stage.dataset.layout = this.mode;
    stage.classList.toggle('strip', strip);
    main.hidden = !speaker;
    this._renderControls(pages, strip);
    return out;
  }

  _renderControls(pages, strip) {
    const { galleryButton, speakerButton, pager, prev, next, pageLabel } = this.els;
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
