// The player section of a trial page: signal buttons, play/pause, the waveform with its loop
// region, and how long each signal has been heard (for "play every sound"). Playback events go to
// the telemetry as they happen.

import { h, formatTime } from "./dom.js";
import { Player, MIN_LOOP } from "./player.js";
import { Waveform } from "./waveform.js";
import { REF, COMPARISONS, switchesInPlace } from "./kinds.js";

export const HEARD_MIN_S = 1.0; // "play every sound": at least this long, or to the sound's end
const LISTEN_POLL_MS = 100;

export class PlayerPanel {
  /**
   * @param {object} options
   * @param {object} options.trial the trial; its `heardSet` collects the signals heard long enough
   * @param {string} options.kind the test's kind
   * @param {Telemetry} options.telemetry where playback events are logged
   * @param {Function} options.onStateChange () after any change of selection, play state or region
   * @param {Function} options.onHeard () once a signal has been heard long enough
   * @param {Function} options.onFlagRegion ({start, end}) a region drawn while marking an artifact
   * @param {Function} options.onWaveformKey (event) a key pressed on the waveform
   */
  constructor({ trial, kind, telemetry, onStateChange, onHeard, onFlagRegion, onWaveformKey }) {
    this.trial = trial;
    this.kind = kind;
    this.telemetry = telemetry;
    this.onStateChange = onStateChange;
    this.onHeard = onHeard;
    this.onFlagRegion = onFlagRegion;
    this.onWaveformKey = onWaveformKey;
    this.player = null;
    this.waveform = null;
    this.el = {};
    this.signalButtons = [];
    this.frame = 0;
    this.listened = new Map(); // signal key -> seconds played, on the audio clock
    this.lastListen = null;
    this.listenTimer = null;
  }

  /** The section's elements; `extra` (the flag panel) goes at its end. */
  render(extra) {
    const trial = this.trial;
    const kind = this.kind;
    this.el.playPause = h(
      "button",
      { type: "button", class: "ls-playpause", "data-testid": "play-pause", onclick: () => this.player && this.player.toggle() },
      "▶ Play",
    );
    this.el.nowPlaying = h("span", { class: "ls-now", "data-testid": "now-playing" });
    this.el.time = h("span", { class: "ls-time" });
    this.el.loopToggle = h("input", {
      type: "checkbox",
      "data-testid": "loop-toggle",
      checked: switchesInPlace(kind),
      onchange: (e) => this.player && this.player.setLoop(e.target.checked),
    });
    this.el.loopClear = h(
      "button",
      { type: "button", "data-testid": "loop-clear", onclick: () => this.setLoopRegion(null) },
      "Clear loop",
    );
    this.el.loopText = h("span", { class: "ls-loop-text", "data-testid": "loop-region" });
    this.el.loading = h("p", { class: "ls-loading", role: "status" }, "Loading audio…");
    this.canvas = h("canvas", {
      class: "ls-wave",
      "data-testid": "waveform",
      tabindex: "0",
      role: "img",
      "aria-label": "Waveform of the selected signal. Click to jump, drag to choose a loop region.",
      onkeydown: (e) => this.onWaveformKey(e),
    });

    // MUSHRA's signal buttons sit in the rating rows (its widget asks for them).
    const buttons = [];
    if (kind !== "mushra") {
      if (trial.reference) buttons.push(this.signalButton(REF, "Reference", "play-ref", "0"));
      trial.stimuli.forEach((s, i) =>
        buttons.push(this.signalButton(s.id, `Sample ${s.label}`, `stim-${s.label}`, i < 9 ? String(i + 1) : null)),
      );
    }

    const signalsClass = COMPARISONS.has(kind) ? "ls-signals ls-signals-pair" : "ls-signals";
    return h(
      "section",
      { class: "ls-player", "aria-label": "Player" },
      buttons.length ? h("div", { class: signalsClass }, buttons) : null,
      h("div", { class: "ls-transport" }, this.el.playPause, this.el.nowPlaying, this.el.time),
      this.el.loading,
      h("div", { class: "ls-wave-wrap" }, this.canvas),
      h(
        "div",
        { class: "ls-loop" },
        h("label", {}, this.el.loopToggle, " Loop"),
        this.el.loopText,
        this.el.loopClear,
        h("span", { class: "ls-hint" }, `Drag on the waveform to loop a part (at least ${MIN_LOOP * 1000} ms); click to jump.`),
      ),
      extra,
    );
  }

  /** A button that selects and plays one signal. */
  signalButton(key, text, testid, shortcut) {
    const button = h(
      "button",
      {
        type: "button",
        class: "ls-signal",
        "data-testid": testid,
        "data-key": key,
        "aria-pressed": "false",
        onclick: () => this.activate(key),
      },
      h("span", { class: "ls-icon", "aria-hidden": "true" }, "▶"),
      h("span", { class: "ls-signal-name" }, text),
      shortcut ? h("kbd", { "aria-hidden": "true" }, shortcut) : null,
    );
    this.signalButtons.push(button);
    return button;
  }

  showLoading(done, total) {
    this.el.loading.textContent = `Loading audio ${done}/${total}…`;
  }

  showLoadError(message, retry) {
    this.el.loading.textContent = "";
    this.el.loading.append(`Could not load the audio (${message}). `, h("button", { type: "button", onclick: retry }, "Try again"));
  }

  /** The trial's audio is decoded: make the player and the waveform and select the first signal. */
  attach(ctx, buffers) {
    const switching = switchesInPlace(this.kind);
    const player = new Player(ctx, buffers, { sharedPosition: switching, loop: switching });
    this.player = player;
    const telemetry = this.telemetry;
    const idOf = (key) => (key === REF || key === null ? null : key);
    player.addEventListener("play", (e) => telemetry.log("play", idOf(player.selected), e.detail.pos));
    player.addEventListener("pause", (e) => telemetry.log("pause", idOf(player.selected), e.detail.pos));
    player.addEventListener("ended", (e) => {
      telemetry.log("pause", idOf(player.selected), e.detail.pos);
      this.markHeard(player.selected, e.detail.pos);
    });
    player.addEventListener("switch", (e) => {
      if (e.detail.from !== null) telemetry.log("switch", idOf(e.detail.to), e.detail.pos);
    });
    player.addEventListener("seek", (e) => telemetry.log("seek", idOf(player.selected), e.detail.pos));
    player.addEventListener("loop", (e) => telemetry.log("loop", idOf(player.selected), e.detail.pos));
    player.addEventListener("statechange", () => this.renderPlayState());

    this.waveform = new Waveform(this.canvas, {
      getPosition: () => (this.player ? this.player.currentPosition() : 0),
      onSeek: (pos) => this.seek(pos),
      onRegion: (region) => this.setLoopRegion(region),
      onFlagRegion: (region) => this.onFlagRegion(region),
    });
    player.select(this.trial.reference ? REF : this.trial.stimuli[0].id);
    this.listenTimer = setInterval(() => this.trackListening(), LISTEN_POLL_MS);
    this.el.loading.textContent = "";
  }

  /** Stop playback and every timer. */
  close() {
    if (this.player) {
      this.player.pause();
      this.player.dispose();
    }
    if (this.waveform) this.waveform.dispose();
    this.player = null;
    this.waveform = null;
    clearInterval(this.listenTimer);
    this.listenTimer = null;
    cancelAnimationFrame(this.frame);
  }

  // --- playback actions -----------------------------------------------------

  /** Select a signal and make sure it plays; pressing the playing signal again pauses. */
  activate(key, { toggle = true } = {}) {
    const player = this.player;
    if (!player) return;
    if (player.selected === key && player.playing) {
      if (toggle) player.pause();
      return;
    }
    player.select(key);
    player.play();
  }

  seek(pos) {
    const player = this.player;
    if (!player) return;
    if (player.region && (pos < player.region.start || pos > player.region.end)) player.setRegion(null);
    player.seek(pos);
  }

  setLoopRegion(region) {
    if (!this.player) return;
    this.player.setRegion(region);
  }

  // --- heard long enough ----------------------------------------------------

  /** Add up how long each signal has actually been playing (on the audio clock). */
  trackListening() {
    const player = this.player;
    if (!player) return;
    const now = player.ctx.currentTime;
    const last = this.lastListen;
    if (player.playing && last && last.key === player.selected) {
      const total = (this.listened.get(last.key) || 0) + Math.max(0, now - last.t);
      this.listened.set(last.key, total);
      const buffer = player.buffers.get(last.key);
      const needed = Math.min(HEARD_MIN_S, buffer ? 0.9 * buffer.duration : HEARD_MIN_S);
      if (total >= needed) this.markHeard(last.key, player.currentPosition());
    }
    this.lastListen = player.playing ? { key: player.selected, t: now } : null;
  }

  markHeard(key, pos) {
    const heard = this.trial.heardSet;
    if (key === null || key === undefined || heard.has(key)) return;
    heard.add(key);
    this.telemetry.log("heard", key === REF ? null : key, pos);
    this.onHeard();
  }

  /** Signals not heard long enough yet, by name. */
  unheard() {
    const trial = this.trial;
    const keys = [...(trial.reference ? [REF] : []), ...trial.stimuli.map((s) => s.id)];
    return keys.filter((k) => !trial.heardSet.has(k)).map((k) => this.signalName(k));
  }

  showHeard() {
    for (const button of this.signalButtons) {
      button.classList.toggle("is-heard", this.trial.heardSet.has(button.dataset.key));
    }
  }

  // --- rendering ------------------------------------------------------------

  renderPlayState() {
    const player = this.player;
    if (!player) return;
    const selected = player.selected;
    const name = this.signalName(selected);
    this.el.playPause.textContent = player.playing ? "❚❚ Pause" : "▶ Play";
    this.el.playPause.setAttribute("aria-label", `${player.playing ? "Pause" : "Play"} ${name}`);
    this.el.nowPlaying.textContent = `${player.playing ? "Playing" : "Paused"}: ${name}`;
    for (const button of this.signalButtons) {
      const isSel = button.dataset.key === selected;
      button.setAttribute("aria-pressed", String(isSel));
      button.classList.toggle("is-selected", isSel);
      button.classList.toggle("is-playing", isSel && player.playing);
      button.querySelector(".ls-icon").textContent = isSel && player.playing ? "❚❚" : "▶";
    }
    const region = player.region;
    this.el.loopText.textContent = region
      ? `Loop ${formatTime(region.start)}–${formatTime(region.end)}`
      : "Loop: whole signal";
    this.el.loopClear.disabled = !region;
    this.el.loopToggle.checked = player.loop;
    this.waveform.setSignal(player.buffers.get(selected), player.duration);
    this.waveform.setRegion(region);
    this.onStateChange();
    this.el.time.textContent = `${formatTime(player.currentPosition())} / ${formatTime(player.duration)}`;
    cancelAnimationFrame(this.frame);
    if (player.playing) this.animate();
  }

  animate() {
    this.frame = requestAnimationFrame(() => {
      if (!this.player || !this.player.playing) return;
      this.waveform.draw();
      this.el.time.textContent = `${formatTime(this.player.currentPosition())} / ${formatTime(this.player.duration)}`;
      this.animate();
    });
  }

  signalName(key) {
    if (key === REF) return "Reference";
    const s = this.trial.stimuli.find((x) => x.id === key);
    return s ? (this.kind === "mushra" ? s.label : `Sample ${s.label}`) : "";
  }
}
