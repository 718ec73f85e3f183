// One trial on screen: the player section, the rating widget of the test's kind, artifact flags,
// "play every sound", and Continue, which completes the trial on the server once its answers are
// saved.

import { h, clear } from "./dom.js";
import { postJSON, retrying } from "./api.js";
import { decodeAll, prefetch } from "./player.js";
import { REF, answerStimuli } from "./kinds.js";
import { summaryStatus } from "./savestatus.js";
import { PlayerPanel, HEARD_MIN_S } from "./transport.js";
import { createRatingWidget } from "./widgets.js";
import { FlagPanel } from "./flags.js";
import { keyHelp, onWaveformKey } from "./keyboard.js";

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
    this.panel = null;
    this.widget = null;
    this.flags = null;
    this.busy = false;
    this.closed = false;
    this.statusTimer = null;
  }

  /** The trial's Player once its audio is decoded, else null. */
  get player() {
    return this.panel ? this.panel.player : null;
  }

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
    const ctx = this.app.audioContext();
    let buffers;
    try {
      buffers = await decodeAll(ctx, items, (done, total) => {
        if (!this.closed) this.panel.showLoading(done, total);
      });
    } catch (err) {
      if (!this.closed) this.panel.showLoadError(err.message, () => this.app.showTrial(this.index));
      return;
    }
    if (this.closed) return;
    this.panel.attach(ctx, buffers);
    this.app.root.dataset.ready = "true";
    this.panel.renderPlayState();
    const next = this.app.state.trials[this.index + 1];
    if (next) {
      if (next.reference) prefetch(next.reference.url);
      for (const s of next.stimuli) prefetch(s.url);
    }
  }

  /** Stop playback and every timer; the view is not used again. */
  close() {
    this.closed = true;
    this.panel.close();
    clearTimeout(this.statusTimer);
  }

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

    this.panel = new PlayerPanel({
      trial,
      kind: this.kind,
      telemetry: this.app.telemetry,
      onStateChange: () => {
        this.widget.setActive(this.panel.player.selected);
        this.flags.render();
      },
      onHeard: () => this.renderPlayAll(),
      onFlagRegion: (region) => this.flags.setRegion(region),
      onWaveformKey: (e) => onWaveformKey(this.panel, e),
    });
    this.flags = new FlagPanel({
      trial,
      categories: this.app.state.flag_categories || [],
      outbox: this.app.outbox,
      url: this.app.urls.flag,
      player: () => this.panel.player,
      waveform: () => this.panel.waveform,
      focusWaveform: () => this.panel.canvas.focus({ preventScroll: true }),
    });
    root.append(this.panel.render(this.flags.element));
    this.widget = createRatingWidget({
      test,
      trial,
      signalButton: (...args) => this.panel.signalButton(...args),
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

  // --- play every sound ----------------------------------------------------

  /** Signals not heard yet, by name; empty when the test does not ask for it. */
  unheard() {
    return this.test.require_play_all ? this.panel.unheard() : [];
  }

  renderPlayAll() {
    if (!this.el.playAll || !this.test.require_play_all) return;
    const missing = this.unheard();
    this.el.playAll.dataset.complete = String(!missing.length);
    this.el.playAll.textContent = missing.length
      ? `Continue is available once you have listened to every sound (at least ${HEARD_MIN_S} s each, or to its end). Not played yet: ${missing.join(", ")}.`
      : "You have listened to every sound.";
    if (!this.busy) this.el.continue.disabled = missing.length > 0;
    this.panel.showHeard();
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
      // The countdown to the next retry is redrawn every second.
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
