// Waveform canvas: shows the selected signal, the loop region, artifact flags
// and the play head; pointer drags choose a loop region or a flag region.

const EDGE_GRAB_PX = 10;
const DRAG_THRESHOLD_PX = 4;

const COLORS = {
  background: "#f6f7f9",
  wave: "#4a5568",
  waveDim: "#a0aec0",
  region: "rgba(30, 90, 200, 0.14)",
  regionEdge: "#1e5ac8",
  flag: "rgba(190, 60, 20, 0.18)",
  flagEdge: "#b83c14",
  draft: "#7a2e9e",
  playhead: "#111",
  axis: "#718096",
};

export class Waveform {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} handlers onSeek(pos), onRegion({start,end}|null), onFlagRegion({start,end}),
   *   getPosition() -> seconds
   */
  constructor(canvas, handlers) {
    this.canvas = canvas;
    this.handlers = handlers;
    this.buffer = null;
    this.duration = 0;
    this.region = null;
    this.flags = [];
    this.draft = null;
    this.mode = "loop";
    this.drag = null;
    this.peaks = null;
    this.peaksKey = "";
    canvas.style.touchAction = "pan-y";
    canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    canvas.addEventListener("pointermove", (e) => this.onMove(e));
    canvas.addEventListener("pointerup", (e) => this.onUp(e));
    canvas.addEventListener("pointercancel", () => {
      this.drag = null;
      this.draw();
    });
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(canvas);
  }

  setSignal(buffer, duration) {
    if (buffer === this.buffer && duration === this.duration) {
      this.draw();
      return;
    }
    this.buffer = buffer;
    this.duration = duration;
    this.peaks = null;
    this.draw();
  }

  setRegion(region) {
    this.region = region;
    this.draw();
  }

  setFlags(flags) {
    this.flags = flags;
    this.draw();
  }

  setDraft(region) {
    this.draft = region;
    this.draw();
  }

  setMode(mode) {
    this.mode = mode;
    this.canvas.classList.toggle("is-flagging", mode === "flag");
    this.draw();
  }

  dispose() {
    this.resizeObserver.disconnect();
  }

  // --- geometry -------------------------------------------------------------

  timeAt(clientX) {
    const rect = this.canvas.getBoundingClientRect();
    const x = Math.min(Math.max(0, clientX - rect.left), rect.width);
    return rect.width ? (x / rect.width) * this.duration : 0;
  }

  xOf(seconds, width) {
    return this.duration ? (seconds / this.duration) * width : 0;
  }

  // --- pointer --------------------------------------------------------------

  onDown(e) {
    if (!this.duration || (e.pointerType === "mouse" && e.button !== 0)) return;
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left;
    const t = this.timeAt(e.clientX);
    let anchor = t;
    let grabbed = false;
    if (this.mode === "loop" && this.region) {
      const xs = this.xOf(this.region.start, rect.width);
      const xe = this.xOf(this.region.end, rect.width);
      if (Math.abs(x - xs) <= EDGE_GRAB_PX) {
        anchor = this.region.end;
        grabbed = true;
      } else if (Math.abs(x - xe) <= EDGE_GRAB_PX) {
        anchor = this.region.start;
        grabbed = true;
      }
    }
    this.drag = { x0: e.clientX, anchor, t, moved: grabbed };
    this.canvas.setPointerCapture(e.pointerId);
  }

  onMove(e) {
    if (!this.drag) {
      this.updateCursor(e);
      return;
    }
    if (!this.drag.moved && Math.abs(e.clientX - this.drag.x0) < DRAG_THRESHOLD_PX) return;
    this.drag.moved = true;
    this.drag.t = this.timeAt(e.clientX);
    e.preventDefault();
    this.draw();
  }

  onUp(e) {
    const drag = this.drag;
    this.drag = null;
    if (!drag) return;
    if (!drag.moved) {
      this.handlers.onSeek(this.timeAt(e.clientX));
      this.draw();
      return;
    }
    drag.t = this.timeAt(e.clientX);
    const region = { start: Math.min(drag.anchor, drag.t), end: Math.max(drag.anchor, drag.t) };
    if (this.mode === "flag") this.handlers.onFlagRegion(region);
    else this.handlers.onRegion(region);
    this.draw();
  }

  updateCursor(e) {
    if (this.mode !== "loop" || !this.region) {
      this.canvas.style.cursor = this.mode === "flag" ? "crosshair" : "pointer";
      return;
    }
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left;
    const nearEdge = [this.region.start, this.region.end].some(
      (s) => Math.abs(x - this.xOf(s, rect.width)) <= EDGE_GRAB_PX,
    );
    this.canvas.style.cursor = nearEdge ? "ew-resize" : "pointer";
  }

  // --- drawing --------------------------------------------------------------

  computePeaks(columns) {
    const key = `${columns}`;
    if (this.peaks && this.peaksKey === key) return this.peaks;
    const peaks = new Float32Array(columns * 2);
    const buffer = this.buffer;
    if (buffer) {
      const channels = [];
      for (let c = 0; c < buffer.numberOfChannels; c += 1) channels.push(buffer.getChannelData(c));
      const totalSamples = Math.round((this.duration || buffer.duration) * buffer.sampleRate);
      const per = totalSamples / columns;
      for (let col = 0; col < columns; col += 1) {
        const from = Math.floor(col * per);
        const to = Math.min(buffer.length, Math.max(from + 1, Math.floor((col + 1) * per)));
        let lo = 0;
        let hi = 0;
        const step = Math.max(1, Math.floor((to - from) / 256));
        for (let i = from; i < to; i += step) {
          let v = 0;
          for (const data of channels) v += data[i];
          v /= channels.length;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        peaks[col * 2] = lo;
        peaks[col * 2 + 1] = hi;
      }
    }
    this.peaks = peaks;
    this.peaksKey = key;
    return peaks;
  }

  draw() {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth;
    const cssHeight = canvas.clientHeight;
    if (!cssWidth || !cssHeight) return;
    const width = Math.round(cssWidth * dpr);
    const height = Math.round(cssHeight * dpr);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = cssWidth;
    const H = cssHeight;
    const axisH = 14;
    const waveH = H - axisH;
    g.fillStyle = COLORS.background;
    g.fillRect(0, 0, W, H);

    for (const [i, flag] of this.flags.entries()) {
      const x0 = this.xOf(flag.start, W);
      const x1 = Math.max(x0 + 2, this.xOf(flag.end, W));
      g.fillStyle = COLORS.flag;
      g.fillRect(x0, 0, x1 - x0, waveH);
      g.strokeStyle = COLORS.flagEdge;
      g.setLineDash(flag.pending ? [3, 3] : []);
      g.strokeRect(x0 + 0.5, 0.5, x1 - x0 - 1, waveH - 1);
      g.setLineDash([]);
      g.fillStyle = COLORS.flagEdge;
      g.font = "bold 11px system-ui, sans-serif";
      g.fillText(`⚑${i + 1}`, x0 + 3, 12);
    }

    const live = this.liveRegion();
    const region = live && this.mode === "loop" ? live : this.region;
    const peaks = this.computePeaks(Math.max(1, Math.round(W)));
    const mid = waveH / 2;
    for (let col = 0; col < peaks.length / 2; col += 1) {
      const t = ((col + 0.5) / (peaks.length / 2)) * this.duration;
      const inside = !region || (t >= region.start && t <= region.end);
      g.fillStyle = inside ? COLORS.wave : COLORS.waveDim;
      const y0 = mid - peaks[col * 2 + 1] * mid * 0.95;
      const y1 = mid - peaks[col * 2] * mid * 0.95;
      g.fillRect(col, y0, 1, Math.max(1, y1 - y0));
    }

    if (region) {
      const x0 = this.xOf(region.start, W);
      const x1 = this.xOf(region.end, W);
      g.fillStyle = COLORS.region;
      g.fillRect(x0, 0, x1 - x0, waveH);
      g.fillStyle = COLORS.regionEdge;
      for (const x of [x0, x1]) {
        g.fillRect(x - 1, 0, 2, waveH);
        g.fillRect(x - 4, mid - 10, 8, 20); // grab handle
      }
    }

    const draft = this.mode === "flag" ? live || this.draft : this.draft;
    if (draft) {
      const x0 = this.xOf(draft.start, W);
      const x1 = Math.max(x0 + 2, this.xOf(draft.end, W));
      g.strokeStyle = COLORS.draft;
      g.lineWidth = 2;
      g.setLineDash([6, 4]);
      g.strokeRect(x0 + 1, 1, x1 - x0 - 2, waveH - 2);
      g.setLineDash([]);
      g.lineWidth = 1;
    }

    g.fillStyle = COLORS.axis;
    g.font = "10px system-ui, sans-serif";
    const step = niceStep(this.duration, W);
    for (let s = 0; step && s <= this.duration + 1e-9; s += step) {
      const x = this.xOf(s, W);
      g.fillRect(x, waveH, 1, 4);
      if (x < W - 20) g.fillText(`${+s.toFixed(2)}s`, x + 2, H - 2);
    }

    const pos = this.handlers.getPosition();
    const px = this.xOf(pos, W);
    g.fillStyle = COLORS.playhead;
    g.fillRect(px - 1, 0, 2, waveH);
    g.beginPath();
    g.moveTo(px - 5, 0);
    g.lineTo(px + 5, 0);
    g.lineTo(px, 6);
    g.fill();
  }

  liveRegion() {
    if (!this.drag || !this.drag.moved) return null;
    return { start: Math.min(this.drag.anchor, this.drag.t), end: Math.max(this.drag.anchor, this.drag.t) };
  }
}

function niceStep(duration, width) {
  if (!duration || !width) return 0;
  const target = duration / Math.max(1, Math.floor(width / 70));
  for (const s of [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120]) if (s >= target) return s;
  return 300;
}
