// One trial on screen: the player (signal buttons, transport, waveform, loop), the rating widget
// of the test's kind, artifact flags, "play every sound", and Continue, which completes the trial
// on the server once its answers are saved.

import { h, clear, formatTime } from "./dom.js";
import { postJSON, retrying } from "./api.js";
import { Player, decodeAll, prefetch, MIN_LOOP } from "./player.js";
import { Waveform } from "./waveform.js";
import { REF, COMPARISONS, answerStimuli, switchesInPlace } from "./kinds.js";
import { summaryStatus } from "./savestatus.js";
import { createRatingWidget } from "./widgets.js";
import { FlagPanel } from "./flags.js";
import { keyHelp, onWaveformKey } from "./keyboard.js";

const HEARD_MIN_S = 1.0; // "play every sound": at least this long, or to the sound's end
const LISTEN_POLL_MS = 100;
const MUSHRA_100_HINT =
  "At least one signal should be rated 100 (the hidden reference): one of the signals is identical to the reference.";

export class TrialView {
  /**
   * @param {ListenerApp} app the page: state, outbox, telemetry, audio context, other screens
   * @param {number} index the trial's position in state.trials
   */
  constructor(app, index) {
    this.app = app;
    this.index = index;
    this.trial = app.state.trials[index];
    this.test = app.state.test;
    this.kind = this.test.kind;
    this.el = {};
    this.player = null;
    this.waveform = null;
    this.widget = null;
    this.flags = null;
    this.busy = false;
    this.closed = false;
    this.frame = 0;
    this.listened = new Map(); // signal key -> seconds played, on the audio clock
    this.lastListen = null;
    this.listenTimer = null;
    this.statusTimer = null;
  }

  // --- loading --------------------------------------------------------------

  /** Draw the trial, then load its audio (and start fetching the next trial's). */
  async show() {
    const trial = this.trial;
    // Sounds heard long enough for "play every sound"; seeded from the server after a reload.
    trial.heardSet ||= new Set(trial.heard || []);
    this.app.telemetry.startTrial(trial.id);
    this.render();
    const items = [];
    if (trial.reference) items.push({ key: REF, url: trial.reference.url });
    for (const s of trial.stimuli) items.push({ key: s.id, url: s.url });
    let buffers;
    try {
      buffers = await decodeAll(this.app.audioContext(), items, (done, total) => {
        if (!this.closed) this.el.loading.textContent = `Loading audio ${done}/${total}…`;
      });
    } catch (err) {
      if (this.closed) return;
      this.el.loading.textContent = "";
      this.el.loading.append(
        `Could not load the audio (${err.message}). `,
        h("button", { type: "button", onclick: () => this.app.showTrial(this.index) }, "Try again"),
      );
      return;
    }
    if (this.closed) return;
    this.attachPlayer(buffers);
    const next = this.app.state.trials[this.index + 1];
    if (next) {
      if (next.reference) prefetch(next.reference.url);
      for (const s of next.stimuli) prefetch(s.url);
    }
  }

  /** Stop playback and every timer; the view is not used again. */
  close() {
    this.closed = true;
    if (this.player) {
      this.player.pause();
      this.player.dispose();
    }
    if (this.waveform) this.waveform.dispose();
    this.player = null;
    this.waveform = null;
    clearInterval(this.listenTimer);
    this.listenTimer = null;
    clearTimeout(this.statusTimer);
    cancelAnimationFrame(this.frame);
  }

  attachPlayer(buffers) {
    const switching = switchesInPlace(this.kind);
    const player = new Player(this.app.audioContext(), buffers, { sharedPosition: switching, loop: switching });
    this.player = player;
    const telemetry = this.app.telemetry;
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

    this.waveform = new Waveform(this.el.canvas, {
      getPosition: () => (this.player ? this.player.currentPosition() : 0),
      onSeek: (pos) => this.seek(pos),
      onRegion: (region) => this.setLoopRegion(region),
      onFlagRegion: (region) => this.flags.setRegion(region),
    });
    player.select(this.trial.reference ? REF : this.trial.stimuli[0].id);
    this.listenTimer = setInterval(() => this.trackListening(), LISTEN_POLL_MS);
    this.el.loading.textContent = "";
    this.app.root.dataset.ready = "true";
    this.renderPlayState();
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

  // --- play every sound ----------------------------------------------------

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
    const trial = this.trial;
    if (key === null || key === undefined || trial.heardSet.has(key)) return;
    trial.heardSet.add(key);
    this.app.telemetry.log("heard", key === REF ? null : key, pos);
    this.renderPlayAll();
  }

  /** Signals not heard yet, by name; empty when the test does not ask for it. */
  unheard() {
    const trial = this.trial;
    if (!this.test.require_play_all) return [];
    const keys = [...(trial.reference ? [REF] : []), ...trial.stimuli.map((s) => s.id)];
    return keys.filter((k) => !trial.heardSet.has(k)).map((k) => this.signalName(k));
  }

  renderPlayAll() {
    if (!this.el.playAll || !this.test.require_play_all) return;
    const missing = this.unheard();
    this.el.playAll.dataset.complete = String(!missing.length);
    this.el.playAll.textContent = missing.length
      ? `Continue is available once you have listened to every sound (at least ${HEARD_MIN_S} s each, or to its end). Not played yet: ${missing.join(", ")}.`
      : "You have listened to every sound.";
    if (!this.busy) this.el.continue.disabled = missing.length > 0;
    for (const button of this.el.signalButtons || []) {
      button.classList.toggle("is-heard", this.trial.heardSet.has(button.dataset.key));
    }
  }

  // --- rendering ------------------------------------------------------------

  render() {
    const test = this.test;
    const trial = this.trial;
    const root = this.app.root;
    root.dataset.ready = "false";
    root.dataset.kind = test.kind;
    clear(root);

    const sameKind = this.app.state.trials.filter((t) => t.training === trial.training);
    const progress = `${trial.training ? "Training" : "Trial"} ${sameKind.indexOf(trial) + 1} of ${sameKind.length}`;
    this.el.saveStatus = h("p", { class: "ls-save", "data-testid": "save-status", role: "status", "aria-live": "polite" });
    const heading = h("h1", { tabindex: "-1" }, test.title);
    root.append(
      h("header", { class: "ls-header" }, h("div", {}, heading, h("p", { class: "ls-progress" }, progress)), this.el.saveStatus),
    );
    if (trial.training) {
      root.append(
        h("p", { class: "ls-banner", "data-testid": "training-banner" }, h("strong", {}, "Training"), " — these ratings are not used."),
      );
    }
    const notice = this.app.takeNotice();
    if (notice) root.append(h("p", { class: "ls-notice", "data-testid": "notice" }, notice));
    const instructions = h("section", { class: "ls-instructions", "aria-label": "Instructions" });
    for (const para of String(test.instructions || "").split(/\n\s*\n/)) {
      if (para.trim()) instructions.append(h("p", {}, para.trim()));
    }
    if (test.kind === "mushra") instructions.append(h("p", { class: "ls-must" }, h("strong", {}, MUSHRA_100_HINT)));
    root.append(instructions);

    this.flags = new FlagPanel({
      trial,
      categories: this.app.state.flag_categories || [],
      outbox: this.app.outbox,
      url: this.app.urls.flag,
      player: () => this.player,
      waveform: () => this.waveform,
      focusWaveform: () => this.el.canvas.focus({ preventScroll: true }),
    });
    root.append(this.renderPlayer());
    this.widget = createRatingWidget({
      test,
      trial,
      signalButton: (...args) => this.signalButton(...args),
      onRate: (stimulus, score) => this.rate(stimulus, score),
      saveState: (stimulusId) => this.app.outbox.state(`rate:${trial.id}:${stimulusId}`),
    });
    root.append(this.widget.element);

    this.el.continueMsg = h("p", { class: "ls-continue-msg", role: "alert", "data-testid": "continue-message" });
    this.el.playAll = test.require_play_all
      ? h("p", { class: "ls-play-all", id: "ls-play-all", role: "status", "aria-live": "polite", "data-testid": "play-all-reason" })
      : null;
    this.el.continue = h(
      "button",
      {
        type: "button",
        class: "ls-continue",
        "data-testid": "continue",
        "aria-describedby": test.require_play_all ? "ls-play-all" : null,
        onclick: () => this.continueTrial(),
      },
      "Continue →",
    );
    root.append(
      h(
        "footer",
        { class: "ls-footer" },
        this.el.continueMsg,
        this.el.playAll,
        this.el.continue,
        h("p", { class: "ls-keys" }, keyHelp(test.kind, trial)),
      ),
    );
    this.renderSaveStatus();
    this.flags.render();
    this.renderPlayAll();
    heading.focus({ preventScroll: true });
  }

  renderPlayer() {
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
    this.el.canvas = h("canvas", {
      class: "ls-wave",
      "data-testid": "waveform",
      tabindex: "0",
      role: "img",
      "aria-label": "Waveform of the selected signal. Click to jump, drag to choose a loop region.",
      onkeydown: (e) => onWaveformKey(this, e),
    });

    // MUSHRA's signal buttons sit in the rating rows (the widget asks for them).
    const signalButtons = [];
    if (kind !== "mushra") {
      if (trial.reference) signalButtons.push(this.signalButton(REF, "Reference", "play-ref", "0"));
      trial.stimuli.forEach((s, i) =>
        signalButtons.push(this.signalButton(s.id, `Sample ${s.label}`, `stim-${s.label}`, i < 9 ? String(i + 1) : null)),
      );
    }

    const signalsClass = COMPARISONS.has(kind) ? "ls-signals ls-signals-pair" : "ls-signals";
    return h(
      "section",
      { class: "ls-player", "aria-label": "Player" },
      signalButtons.length ? h("div", { class: signalsClass }, signalButtons) : null,
      h("div", { class: "ls-transport" }, this.el.playPause, this.el.nowPlaying, this.el.time),
      this.el.loading,
      h("div", { class: "ls-wave-wrap" }, this.el.canvas),
      h(
        "div",
        { class: "ls-loop" },
        h("label", {}, this.el.loopToggle, " Loop"),
        this.el.loopText,
        this.el.loopClear,
        h("span", { class: "ls-hint" }, `Drag on the waveform to loop a part (at least ${MIN_LOOP * 1000} ms); click to jump.`),
      ),
      this.flags.element,
    );
  }

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
    (this.el.signalButtons ||= []).push(button);
    return button;
  }

  renderPlayState() {
    const player = this.player;
    if (!player || !this.el.playPause) return;
    const selected = player.selected;
    const name = this.signalName(selected);
    this.el.playPause.textContent = player.playing ? "❚❚ Pause" : "▶ Play";
    this.el.playPause.setAttribute("aria-label", `${player.playing ? "Pause" : "Play"} ${name}`);
    this.el.nowPlaying.textContent = `${player.playing ? "Playing" : "Paused"}: ${name}`;
    for (const button of this.el.signalButtons || []) {
      const isSel = button.dataset.key === selected;
      button.setAttribute("aria-pressed", String(isSel));
      button.classList.toggle("is-selected", isSel);
      button.classList.toggle("is-playing", isSel && player.playing);
      button.querySelector(".ls-icon").textContent = isSel && player.playing ? "❚❚" : "▶";
    }
    this.widget.setActive(selected);
    const region = player.region;
    this.el.loopText.textContent = region
      ? `Loop ${formatTime(region.start)}–${formatTime(region.end)}`
      : "Loop: whole signal";
    this.el.loopClear.disabled = !region;
    this.el.loopToggle.checked = player.loop;
    this.waveform.setSignal(player.buffers.get(selected), player.duration);
    this.waveform.setRegion(region);
    this.flags.render();
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

  // --- answers and their saving ----------------------------------------------

  rate(stimulus, score) {
    this.trial.ratings[stimulus.id] = score;
    this.app.outbox.rate(this.app.urls.rate, { trial: this.trial.id, stimulus: stimulus.id, score });
    this.el.continueMsg.textContent = "";
    this.widget.renderRating(stimulus.id);
  }

  renderSaveStatus() {
    const el = this.el.saveStatus;
    if (!el) return;
    const { state, text, ticking } = summaryStatus(this.app.outbox.summary(this.trial.id));
    if (ticking) {
      clearTimeout(this.statusTimer);
      this.statusTimer = setTimeout(() => this.renderSaveStatus(), 1000);
    }
    el.dataset.state = state;
    el.textContent = text;
    if (this.widget) this.widget.renderAll();
    if (this.flags) this.flags.renderList();
  }

  // --- continue -------------------------------------------------------------

  async continueTrial() {
    if (this.busy || this.closed) return;
    const trial = this.trial;
    const kind = this.kind;
    const missing = answerStimuli(kind, trial).filter((s) => trial.ratings[s.id] === undefined || trial.ratings[s.id] === null);
    if (missing.length) {
      this.el.continueMsg.textContent =
        kind === "mushra"
          ? `Rate every signal before continuing (not rated yet: ${missing.map((s) => s.label).join(", ")}).`
          : kind === "ab"
            ? "Choose the sound you prefer before continuing."
            : "Choose a rating before continuing.";
      return;
    }
    const unheard = this.unheard();
    if (unheard.length) {
      this.el.continueMsg.textContent = `Listen to every sound before continuing (not played yet: ${unheard.join(", ")}).`;
      return;
    }
    this.busy = true;
    // Not ready for input while this trial is saved and the next one loads.
    this.app.root.dataset.ready = "false";
    this.el.continue.disabled = true;
    this.el.continue.textContent = "Saving…";
    if (this.player) this.player.pause();
    const outbox = this.app.outbox;
    await outbox.settled(trial.id);
    const failed = [...trial.stimuli].some((s) => outbox.state(`rate:${trial.id}:${s.id}`)?.state === "error");
    if (failed) {
      this.el.continueMsg.textContent = "Some ratings were not saved; change them again or reload the page.";
      this.resetContinue();
      return;
    }
    let result;
    try {
      result = await retrying(async () => {
        // The server checks this trial's playback events when completing it: send them first.
        await this.app.telemetry.flushTrial(trial.id);
        return postJSON(this.app.urls.complete, { trial: trial.id });
      }, { onRetry: (wait) => { this.el.continueMsg.textContent = `Could not reach the server — retrying in ${wait} s…`; } });
    } catch (err) {
      this.el.continueMsg.textContent = err.message;
      this.resetContinue();
      return;
    }
    this.busy = false;
    this.app.trialCompleted(trial, result);
  }

  resetContinue() {
    this.busy = false;
    if (this.player) this.app.root.dataset.ready = "true";
    this.el.continue.disabled = false;
    this.el.continue.textContent = "Continue →";
    this.renderPlayAll();
  }
}
