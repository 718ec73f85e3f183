// Web Audio player for one trial: a set of decoded signals on one shared time
// line, instant switching and looping with 5 ms raised-cosine fades.
//
// Playback is a chain of "voices" (AudioBufferSourceNode -> GainNode). A voice
// plays one signal from an offset to the end of the current segment (the loop
// region, or the whole time line). Every voice fades in over FADE seconds and
// fades out over the FADE seconds before its end; the next voice starts exactly
// where the previous one ended. Fades therefore never overlap: a switch or a
// loop wrap is fade-out of the old followed by fade-in of the new, with no
// cross-fade, as ITU-R BS.1534-3 §5.3 asks. Voices are scheduled on the audio
// clock a little ahead, so timing does not depend on the main thread.

export const FADE = 0.005;
export const MIN_LOOP = 0.5;
const LOOKAHEAD = 0.012; // seconds between a user action and its audible effect
const SCHEDULE_AHEAD = 1.5; // how far ahead loop iterations are queued
const MIN_VOICE = 4 * FADE;
const CURVE_POINTS = 64;

function raisedCosine(rising) {
  const curve = new Float32Array(CURVE_POINTS);
  for (let i = 0; i < CURVE_POINTS; i += 1) {
    const x = 0.5 - 0.5 * Math.cos((Math.PI * i) / (CURVE_POINTS - 1));
    curve[rising ? i : CURVE_POINTS - 1 - i] = x;
  }
  return curve;
}
const FADE_IN = raisedCosine(true);
const FADE_OUT = raisedCosine(false);

const byteCache = new Map();

/** Start downloading a signal early (e.g. the next trial's); decoding waits for use. */
export function prefetch(url) {
  if (!byteCache.has(url)) {
    const promise = fetch(url, { credentials: "same-origin" }).then((r) => {
      if (!r.ok) throw new Error(`audio ${r.status}`);
      return r.arrayBuffer();
    });
    promise.catch(() => byteCache.delete(url));
    byteCache.set(url, promise);
  }
  return byteCache.get(url);
}

/** Fetch and decode signals; `items` is [{key, url}], resolves to Map key -> AudioBuffer. */
export async function decodeAll(ctx, items, onProgress = () => {}) {
  let done = 0;
  const decoded = await Promise.all(
    items.map(async ({ key, url }) => {
      const bytes = await prefetch(url);
      byteCache.delete(url); // decodeAudioData detaches the buffer: it cannot be reused
      const buffer = await ctx.decodeAudioData(bytes);
      done += 1;
      onProgress(done, items.length);
      return [key, buffer];
    }),
  );
  return new Map(decoded);
}

export class Player extends EventTarget {
  /**
   * @param {AudioContext} ctx
   * @param {Map<string, AudioBuffer>} buffers signal key -> decoded audio
   * @param {{sharedPosition?: boolean, loop?: boolean}} options sharedPosition:
   *   switching keeps the play position (MUSHRA); otherwise a switch starts the
   *   new signal from the beginning of the segment (SMOS/MOS).
   */
  constructor(ctx, buffers, { sharedPosition = true, loop = true } = {}) {
    super();
    this.ctx = ctx;
    this.buffers = buffers;
    this.sharedPosition = sharedPosition;
    this.loop = loop;
    this.region = null;
    this.selected = null;
    this.playing = false;
    this.position = 0;
    this.voices = [];
    this.timer = null;
    this.longest = Math.max(0, ...[...buffers.values()].map((b) => b.duration));
  }

  /** Length of the time line: the longest signal, or (unshared) the selected one. */
  get duration() {
    if (this.sharedPosition) return this.longest;
    const buffer = this.buffers.get(this.selected);
    return buffer ? buffer.duration : this.longest;
  }

  bounds() {
    return this.region ? [this.region.start, this.region.end] : [0, this.duration];
  }

  emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  currentPosition() {
    if (!this.playing) return this.position;
    return this.positionAt(this.ctx.currentTime);
  }

  positionAt(t) {
    if (!this.voices.length) return this.position;
    const first = this.voices[0];
    if (t < first.start) return first.offset;
    for (const v of this.voices) {
      if (t >= v.start && t < v.end) return v.offset + (t - v.start);
    }
    const last = this.voices[this.voices.length - 1];
    return last.offset + (last.end - last.start);
  }

  /** Select a signal; while playing, switch to it at the same position. */
  select(key) {
    if (key === this.selected) return;
    const previous = this.selected;
    if (!this.playing) {
      this.selected = key;
      if (!this.sharedPosition) {
        this.region = null;
        this.position = 0;
      }
    } else {
      const { ts, pos } = this.cut(this.ctx.currentTime + LOOKAHEAD);
      this.selected = key;
      if (!this.sharedPosition) this.region = null;
      this.chain(ts, this.sharedPosition ? pos : 0);
    }
    this.emit("switch", { from: previous, to: key, pos: this.currentPosition() });
    this.emit("statechange");
  }

  async play() {
    if (this.playing || this.selected === null) return;
    if (this.ctx.state !== "running") await this.ctx.resume();
    if (this.playing) return;
    const [lo, hi] = this.bounds();
    if (this.position < lo || this.position > hi - MIN_VOICE) this.position = lo;
    this.playing = true;
    this.chain(this.ctx.currentTime + LOOKAHEAD, this.position);
    this.timer = setInterval(() => this.tick(), 100);
    this.emit("play", { pos: this.position });
    this.emit("statechange");
  }

  pause() {
    if (!this.playing) return;
    const { pos } = this.cut(this.ctx.currentTime + LOOKAHEAD);
    this.stopScheduler();
    this.position = pos;
    this.emit("pause", { pos });
    this.emit("statechange");
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  seek(pos) {
    const target = Math.min(Math.max(0, pos), this.duration);
    if (this.playing) {
      const { ts } = this.cut(this.ctx.currentTime + LOOKAHEAD);
      this.chain(ts, target);
    } else {
      this.position = target;
    }
    this.emit("seek", { pos: target });
    this.emit("statechange");
  }

  /**
   * Set the loop region (null = whole signal). Regions shorter than MIN_LOOP
   * are widened around their centre. Returns the region actually used.
   */
  setRegion(region) {
    let next = null;
    if (region && this.duration > 0) {
      let { start, end } = region;
      if (end < start) [start, end] = [end, start];
      start = Math.max(0, start);
      end = Math.min(this.duration, end);
      if (end - start < MIN_LOOP) {
        const centre = (start + end) / 2;
        start = Math.max(0, Math.min(centre - MIN_LOOP / 2, this.duration - MIN_LOOP));
        end = Math.min(this.duration, start + MIN_LOOP);
      }
      next = start <= 0 && end >= this.duration ? null : { start, end };
    }
    this.region = next;
    const [lo, hi] = this.bounds();
    if (this.playing) {
      const { ts, pos } = this.cut(this.ctx.currentTime + LOOKAHEAD);
      this.chain(ts, pos >= lo && pos < hi - MIN_VOICE ? pos : lo);
    } else if (this.position < lo || this.position >= hi) {
      this.position = lo;
    }
    this.emit("loop", { region: next, pos: lo });
    this.emit("statechange");
    return next;
  }

  setLoop(enabled) {
    this.loop = Boolean(enabled);
    if (this.playing) {
      this.dropFutureVoices(this.ctx.currentTime + LOOKAHEAD);
      this.extend();
    }
    this.emit("statechange");
  }

  dispose() {
    this.stopScheduler();
    for (const v of this.voices) this.kill(v);
    this.voices = [];
  }

  // --- scheduling -----------------------------------------------------------

  stopScheduler() {
    this.playing = false;
    clearInterval(this.timer);
    this.timer = null;
  }

  makeVoice(key, when, offset, duration, wraps) {
    const buffer = this.buffers.get(key);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    const gain = this.ctx.createGain();
    source.connect(gain).connect(this.ctx.destination);
    gain.gain.value = 0;
    gain.gain.setValueCurveAtTime(FADE_IN, when, FADE);
    gain.gain.setValueCurveAtTime(FADE_OUT, when + duration - FADE, FADE);
    // A signal shorter than the time line just plays silence past its end.
    source.start(when, Math.min(offset, buffer.duration), duration);
    source.stop(when + duration);
    const voice = { key, source, gain, start: when, offset, end: when + duration, wraps };
    this.voices.push(voice);
    return voice;
  }

  /** Start a chain of voices for the selected signal at audio time `when`. */
  chain(when, pos) {
    const [lo, hi] = this.bounds();
    let offset = pos;
    if (offset < lo || offset > hi - MIN_VOICE) {
      if (!this.loop && offset >= hi - MIN_VOICE && offset <= hi) {
        this.finish();
        return;
      }
      offset = lo;
    }
    this.makeVoice(this.selected, when, offset, hi - offset, true);
    this.extend();
  }

  /** Queue loop iterations up to SCHEDULE_AHEAD seconds ahead. */
  extend() {
    if (!this.playing || !this.loop) return;
    const [lo, hi] = this.bounds();
    let last = this.voices[this.voices.length - 1];
    while (last && last.end < this.ctx.currentTime + SCHEDULE_AHEAD) {
      last = this.makeVoice(this.selected, last.end, lo, hi - lo, true);
    }
  }

  tick() {
    const now = this.ctx.currentTime;
    const last = this.voices[this.voices.length - 1];
    let wrapped = false;
    this.voices = this.voices.filter((v) => {
      if (v.end >= now - 0.05) return true;
      if (v.wraps && this.loop && v !== last) wrapped = true;
      this.kill(v);
      return false;
    });
    if (!this.loop && (!last || now >= last.end)) {
      this.finish();
      return;
    }
    this.extend();
    if (wrapped) this.emit("wrap", { pos: this.bounds()[0] });
  }

  finish() {
    const [lo] = this.bounds();
    this.stopScheduler();
    for (const v of this.voices) this.kill(v);
    this.voices = [];
    this.position = lo;
    this.emit("ended", { pos: lo });
    this.emit("statechange");
  }

  kill(voice) {
    try {
      voice.source.stop();
    } catch {
      // never started or already stopped
    }
    voice.source.disconnect();
    voice.gain.disconnect();
  }

  dropFutureVoices(t) {
    this.voices = this.voices.filter((v) => {
      if (v.start < t) return true;
      this.kill(v);
      return false;
    });
  }

  /**
   * Fade out whatever sounds at audio time `t` and drop later voices.
   * Returns ts, the time from which the line is silent (a new voice may start
   * there), and pos, the time-line position that belongs to ts.
   */
  cut(t) {
    const first = this.voices[0];
    if (!first || t < first.start) {
      const pos = first ? first.offset : this.position;
      this.dropFutureVoices(-Infinity);
      return { ts: t, pos };
    }
    const active = this.voices.find((v) => t >= v.start && t < v.end);
    this.dropFutureVoices(t);
    if (!active) {
      const last = this.voices[this.voices.length - 1];
      return { ts: t, pos: this.afterVoice(last) };
    }
    let at = t;
    if (at < active.start + FADE) at = active.start + FADE + 1e-4; // let the fade-in finish
    if (at >= active.end - FADE) {
      // Already fading out towards its end: the switch happens at that boundary.
      return { ts: active.end, pos: this.afterVoice(active) };
    }
    const param = active.gain.gain;
    param.cancelScheduledValues(at);
    param.setValueCurveAtTime(FADE_OUT, at, FADE);
    active.source.stop(at + FADE);
    active.end = at + FADE;
    active.wraps = false;
    return { ts: at + FADE, pos: active.offset + (at + FADE - active.start) };
  }

  afterVoice(voice) {
    const [lo, hi] = this.bounds();
    const pos = voice.offset + (voice.end - voice.start);
    if (voice.wraps && pos >= hi - 1e-6) return this.loop ? lo : hi;
    return pos;
  }
}
