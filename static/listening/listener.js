// Listener UI entry point: loads the participant's state, shows one trial at a
// time (MUSHRA, SMOS, MOS, CMOS or AB), saves every rating and flag as soon as
// it is given, and reports playback telemetry.
//
// CMOS and AB trials have two sounds, A and B, and one answer, which is sent
// on B (the answer is about B relative to A: a CCR score, or the preferred
// sound's id / "none").

import { h, clear, formatTime } from "./dom.js";
import { Outbox, Telemetry, getJSON, postJSON, retrying } from "./api.js";
import { Player, decodeAll, prefetch, MIN_LOOP } from "./player.js";
import { Waveform } from "./waveform.js";

const REF = "ref"; // player key of the reference signal
const COMPARISONS = new Set(["cmos", "ab"]);
const NO_PREFERENCE = "none";
const HEARD_MIN_S = 1.0; // "play every sound": at least this long, or to the sound's end
const REDIRECT_DELAY_S = 5;
const REDIRECT_DELAY_WITH_CODE_S = 15; // time to copy the code before leaving
const MUSHRA_100_HINT =
  "At least one signal should be rated 100 (the hidden reference): one of the signals is identical to the reference.";

const STATUS_TEXT = {
  saving: { icon: "…", text: "Saving…" },
  retrying: { icon: "⟳", text: "Retrying…" },
  saved: { icon: "✓", text: "Saved" },
  error: { icon: "⚠", text: "Not saved" },
};

class ListenerApp {
  constructor(root) {
    this.root = root;
    const d = root.dataset;
    this.urls = {
      state: d.stateUrl,
      rate: d.rateUrl,
      flag: d.flagUrl,
      complete: d.completeUrl,
      telemetry: d.telemetryUrl,
      calibration: d.calibrationUrl,
      headphone: d.headphoneUrl,
    };
    this.ctx = null;
    this.player = null;
    this.waveform = null;
    this.trial = null;
    this.flagging = null; // {region} while the listener marks an artifact
    this.busy = false;
    this.frame = 0;
    this.telemetry = new Telemetry(this.urls.telemetry);
    this.outbox = new Outbox({
      storageKey: `evalsite-listener-outbox:${this.urls.state}`,
      onChange: () => this.renderSaveStatus(),
      onSaved: (key, body, response, superseded) => this.onSaved(key, body, response, superseded),
      onRejected: (key, body, err) => this.onRejected(key, body, err),
    });
    document.addEventListener("keydown", (e) => this.onKey(e));
    window.addEventListener("pagehide", () => this.telemetry.flush({ keepalive: true }));
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.telemetry.flush({ keepalive: true });
    });
    window.addEventListener("beforeunload", (e) => {
      if (this.outbox.busy()) {
        e.preventDefault();
        e.returnValue = "";
      }
    });
  }

  // --- loading --------------------------------------------------------------

  async start() {
    this.showMessage("Loading…");
    let state;
    try {
      state = await getJSON(this.urls.state);
    } catch (err) {
      this.showMessage(`Could not load the test: ${err.message}`, () => this.start());
      return;
    }
    this.state = state;
    this.restoreOutbox();
    this.telemetry.sampleRate = null;
    if (state.phase === "done") {
      this.showCompletion(state.completion);
      return;
    }
    if (state.phase === "screened_out") {
      this.showScreenedOut(state.screened_out);
      return;
    }
    if (state.phase === "calibration") {
      this.showCalibration(state.calibration);
      return;
    }
    if (state.phase === "headphone") {
      this.showHeadphoneCheck(state.headphone_check);
      return;
    }
    this.showTrial(state.position);
  }

  // --- level calibration (before the headphone check) -----------------------

  /**
   * A noise at the level of the test's sounds: the listener plays it as often as they like and
   * sets their device volume to "loud but comfortable", then confirms. Everything after plays
   * through the same unity-gain path, so its level relative to the noise is what the server's
   * files say (the headphone check's tones share the noise's level).
   */
  showCalibration(calibration) {
    this.teardownTrial();
    this.trial = null;
    clear(this.root);
    this.root.dataset.ready = "false";
    this.root.dataset.kind = "calibration";
    let plays = 0;
    let node = null;
    const status = h("p", { class: "ls-loading", role: "status", "data-testid": "cal-status" }, "Loading…");
    const play = h("button", { type: "button", class: "ls-playpause", "data-testid": "cal-play", "aria-pressed": "false", disabled: true }, "▶ Play the calibration sound");
    const reason = h("p", { class: "ls-reason", "data-testid": "cal-reason" }, "Play the sound at least once before continuing.");
    const confirm = h("button", { type: "button", class: "ls-continue", "data-testid": "cal-confirm", disabled: true }, "My volume is set: continue");
    const heading = h("h1", { tabindex: "-1" }, "Set your volume");
    this.root.append(
      h(
        "section",
        { class: "ls-calibration", "aria-label": "Volume setting" },
        heading,
        h(
          "div",
          { class: "ls-instructions" },
          h("p", {}, "Please put on headphones (not loudspeakers) and set your device's volume to about a quarter of its maximum."),
          h("p", {}, "Press Play, then turn your device's volume up or down until the sound is loud but comfortable. You can play it as often as you like."),
          h("p", {}, "The rest of the test plays at this level: please do not change the volume after this step."),
        ),
        h("div", { class: "ls-transport" }, play),
        status,
        reason,
        confirm,
      ),
    );
    heading.focus({ preventScroll: true });
    const stop = () => {
      if (node) {
        node.onended = null;
        try {
          node.stop();
        } catch {
          // already stopped
        }
        node = null;
      }
      play.textContent = "▶ Play the calibration sound";
      play.setAttribute("aria-pressed", "false");
    };
    const ctx = this.audioContext();
    decodeAll(ctx, [{ key: "cal", url: calibration.url }])
      .then((buffers) => {
        status.textContent = "Press Play when your headphones are on.";
        play.disabled = false;
        this.root.dataset.ready = "true";
        play.onclick = async () => {
          if (node) {
            stop();
            status.textContent = "Stopped. Play again, or continue if the volume is right.";
            return;
          }
          if (ctx.state !== "running") await ctx.resume();
          node = ctx.createBufferSource();
          node.buffer = buffers.get("cal");
          node.connect(ctx.destination);
          node.onended = () => {
            stop();
            status.textContent = "Played. Play again, or continue if the volume is right.";
          };
          node.start();
          plays += 1;
          play.textContent = "■ Stop";
          play.setAttribute("aria-pressed", "true");
          status.textContent = "Playing… adjust your device's volume now.";
          confirm.disabled = false;
          reason.textContent = "";
        };
      })
      .catch((err) => {
        status.textContent = "";
        status.append(`Could not load the sound (${err.message}). `, h("button", { type: "button", onclick: () => this.showCalibration(calibration) }, "Try again"));
      });
    confirm.onclick = async () => {
      stop();
      confirm.disabled = true;
      this.showMessage("Saving…");
      await this.postThenStart(this.urls.calibration, { plays });
    };
  }

  // --- headphone check (Woods et al. 2017) ------------------------------------

  /** Six questions, one at a time: play three tones once, then say which was the quietest. */
  showHeadphoneCheck(check) {
    this.teardownTrial();
    this.trial = null;
    const answers = [];
    const source = { node: null };
    const ask = (index) => {
      if (source.node) {
        source.node.onended = null;
        try {
          source.node.stop();
        } catch {
          // already stopped
        }
        source.node = null;
      }
      clear(this.root);
      this.root.dataset.ready = "false";
      this.root.dataset.kind = "headphone";
      const trial = check.trials[index];
      const status = h("p", { class: "ls-loading", role: "status", "data-testid": "hp-status" }, "Loading…");
      const choices = [1, 2, 3].map((n) =>
        h(
          "button",
          { type: "button", class: "ls-prefer", "data-testid": `hp-answer-${n}`, disabled: true, onclick: () => choose(n) },
          `Tone ${n} was the quietest`,
        ),
      );
      const play = h("button", { type: "button", class: "ls-playpause", "data-testid": "hp-play", disabled: true }, "▶ Play the three tones");
      const heading = h("h1", { tabindex: "-1" }, "Headphone check");
      this.root.append(
        h(
          "section",
          { class: "ls-headphone", "aria-label": "Headphone check" },
          heading,
          h("p", { class: "ls-progress", "data-testid": "hp-progress" }, `Question ${index + 1} of ${check.trials.length}`),
          h(
            "div",
            { class: "ls-instructions" },
            h("p", {}, "Keep your headphones on and the volume as you set it."),
            h("p", {}, "You will hear three tones, once. Choose the tone that was the quietest."),
          ),
          play,
          status,
          h("div", { class: "ls-prefer-row", role: "group", "aria-label": "Which tone was the quietest?" }, choices),
        ),
      );
      heading.focus({ preventScroll: true });
      const ctx = this.audioContext();
      decodeAll(ctx, [{ key: "hp", url: trial.url }])
        .then((buffers) => {
          status.textContent = "Press play when you are ready. You can play the tones only once.";
          play.disabled = false;
          this.root.dataset.ready = "true";
          play.onclick = async () => {
            play.disabled = true;
            if (ctx.state !== "running") await ctx.resume();
            const node = ctx.createBufferSource();
            node.buffer = buffers.get("hp");
            node.connect(ctx.destination);
            node.onended = () => {
              status.textContent = "Which tone was the quietest?";
            };
            source.node = node;
            node.start();
            status.textContent = "Playing…";
            for (const c of choices) c.disabled = false;
          };
        })
        .catch((err) => {
          status.textContent = "";
          status.append(`Could not load the sound (${err.message}). `, h("button", { type: "button", onclick: () => ask(index) }, "Try again"));
        });
    };
    const choose = (n) => {
      answers.push(n);
      if (answers.length < check.trials.length) ask(answers.length);
      else submit();
    };
    const submit = async () => {
      if (source.node) source.node.onended = null;
      this.showMessage("Saving…");
      await this.postThenStart(this.urls.headphone, { answers });
    };
    ask(0);
  }

  showScreenedOut(info) {
    this.teardownTrial();
    this.trial = null;
    clear(this.root);
    this.root.dataset.ready = "true";
    const box = h("section", { class: "ls-done", "data-testid": "screened-out" }, h("h1", { tabindex: "-1" }, info.message));
    if (info.redirect) {
      box.append(h("p", {}, h("a", { href: info.redirect, "data-testid": "screened-out-link" }, "Return to the study platform")));
    }
    this.root.append(box);
    box.querySelector("h1").focus({ preventScroll: true });
  }

  /** Put values that an earlier page load could not save back into the state, then resend them. */
  restoreOutbox() {
    const items = this.outbox.restorable();
    const trials = new Map(this.state.trials.map((t) => [t.id, t]));
    for (const item of items) {
      const trial = trials.get(item.body.trial);
      if (!trial) continue;
      if (item.key.startsWith("rate:")) {
        trial.ratings[item.body.stimulus] = item.body.score;
      } else if (item.key.startsWith("flag:")) {
        const { stimulus, start, end, category, note } = item.body;
        trial.flags.push({ id: null, key: item.key, stimulus, start, end, category, note, pending: true });
      }
    }
    this.outbox.resend(items.filter((i) => trials.has(i.body.trial)));
  }

  audioContext() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      this.ctx = new Ctx({ latencyHint: "interactive" });
      this.telemetry.sampleRate = this.ctx.sampleRate;
    }
    return this.ctx;
  }

  async showTrial(index) {
    const trial = this.state.trials[index];
    if (!trial) {
      this.showMessage("There is nothing left to rate. Please reload the page.", () => this.start());
      return;
    }
    this.teardownTrial();
    this.trial = trial;
    this.trialIndex = index;
    this.flagging = null;
    // Sounds heard long enough for "play every sound"; seeded from the server after a reload.
    trial.heardSet ||= new Set(trial.heard || []);
    this.listened = new Map();
    this.lastListen = null;
    this.telemetry.startTrial(trial.id);
    this.render();
    const items = [];
    if (trial.reference) items.push({ key: REF, url: trial.reference.url });
    for (const s of trial.stimuli) items.push({ key: s.id, url: s.url });
    let buffers;
    try {
      buffers = await decodeAll(this.audioContext(), items, (done, total) => {
        if (this.trial === trial) this.el.loading.textContent = `Loading audio ${done}/${total}…`;
      });
    } catch (err) {
      if (this.trial !== trial) return;
      this.el.loading.textContent = "";
      this.el.loading.append(
        `Could not load the audio (${err.message}). `,
        h("button", { type: "button", onclick: () => this.showTrial(index) }, "Try again"),
      );
      return;
    }
    if (this.trial !== trial) return;
    this.attachPlayer(buffers);
    const next = this.state.trials[index + 1];
    if (next) {
      if (next.reference) prefetch(next.reference.url);
      for (const s of next.stimuli) prefetch(s.url);
    }
  }

  teardownTrial() {
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

  attachPlayer(buffers) {
    const kind = this.state.test.kind;
    // MUSHRA and the A/B comparisons switch instantly at the same position.
    const switching = kind === "mushra" || COMPARISONS.has(kind);
    const player = new Player(this.audioContext(), buffers, { sharedPosition: switching, loop: switching });
    this.player = player;
    const idOf = (key) => (key === REF || key === null ? null : key);
    player.addEventListener("play", (e) => this.telemetry.log("play", idOf(player.selected), e.detail.pos));
    player.addEventListener("pause", (e) => this.telemetry.log("pause", idOf(player.selected), e.detail.pos));
    player.addEventListener("ended", (e) => {
      this.telemetry.log("pause", idOf(player.selected), e.detail.pos);
      this.markHeard(player.selected, e.detail.pos);
    });
    player.addEventListener("switch", (e) => {
      if (e.detail.from !== null) this.telemetry.log("switch", idOf(e.detail.to), e.detail.pos);
    });
    player.addEventListener("seek", (e) => this.telemetry.log("seek", idOf(player.selected), e.detail.pos));
    player.addEventListener("loop", (e) => this.telemetry.log("loop", idOf(player.selected), e.detail.pos));
    player.addEventListener("statechange", () => this.renderPlayState());

    this.waveform = new Waveform(this.el.canvas, {
      getPosition: () => (this.player ? this.player.currentPosition() : 0),
      onSeek: (pos) => this.seek(pos),
      onRegion: (region) => this.setLoopRegion(region),
      onFlagRegion: (region) => this.setFlagRegion(region),
    });
    player.select(this.trial.reference ? REF : this.trial.stimuli[0].id);
    this.listenTimer = setInterval(() => this.trackListening(), 100);
    this.el.loading.textContent = "";
    this.root.dataset.ready = "true";
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
    if (!trial || key === null || key === undefined || trial.heardSet.has(key)) return;
    trial.heardSet.add(key);
    this.telemetry.log("heard", key === REF ? null : key, pos);
    this.renderPlayAll();
  }

  /** Signals not heard yet, by name; empty when the test does not ask for it. */
  unheard() {
    const trial = this.trial;
    if (!trial || !this.state.test.require_play_all) return [];
    const keys = [...(trial.reference ? [REF] : []), ...trial.stimuli.map((s) => s.id)];
    return keys.filter((k) => !trial.heardSet.has(k)).map((k) => this.signalName(k));
  }

  renderPlayAll() {
    if (!this.el || !this.el.playAll || !this.state.test.require_play_all) return;
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

  /** POST a step before the trials (calibration, headphone check), retrying network errors, then go on. */
  async postThenStart(url, body) {
    let result;
    try {
      result = await retrying(() => postJSON(url, body));
    } catch (err) {
      this.showMessage(err.message, () => this.start());
      return;
    }
    if (result.phase === "screened_out") this.showScreenedOut(result.screened_out);
    else this.start();
  }

  showMessage(text, retry) {
    this.teardownTrial();
    clear(this.root);
    this.root.append(
      h(
        "div",
        { class: "ls-message", role: "status", "data-testid": "message" },
        h("p", {}, text),
        retry ? h("button", { type: "button", onclick: retry }, "Try again") : null,
      ),
    );
  }

  render() {
    const { test } = this.state;
    const trial = this.trial;
    this.root.dataset.ready = "false";
    this.root.dataset.kind = test.kind;
    this.el = {};
    clear(this.root);

    const sameKind = this.state.trials.filter((t) => t.training === trial.training);
    const progress = `${trial.training ? "Training" : "Trial"} ${sameKind.indexOf(trial) + 1} of ${sameKind.length}`;
    this.el.saveStatus = h("p", { class: "ls-save", "data-testid": "save-status", role: "status", "aria-live": "polite" });
    const heading = h("h1", { tabindex: "-1" }, test.title);
    this.root.append(
      h("header", { class: "ls-header" }, h("div", {}, heading, h("p", { class: "ls-progress" }, progress)), this.el.saveStatus),
    );
    if (trial.training) {
      this.root.append(
        h("p", { class: "ls-banner", "data-testid": "training-banner" }, h("strong", {}, "Training"), " — these ratings are not used."),
      );
    }
    if (this.notice) {
      this.root.append(h("p", { class: "ls-notice", "data-testid": "notice" }, this.notice));
      this.notice = null;
    }
    const instructions = h("section", { class: "ls-instructions", "aria-label": "Instructions" });
    for (const para of String(test.instructions || "").split(/\n\s*\n/)) {
      if (para.trim()) instructions.append(h("p", {}, para.trim()));
    }
    if (test.kind === "mushra") instructions.append(h("p", { class: "ls-must" }, h("strong", {}, MUSHRA_100_HINT)));
    this.root.append(instructions);

    this.root.append(this.renderPlayer());
    this.root.append(
      test.kind === "mushra" ? this.renderMushra() : test.kind === "ab" ? this.renderPreference() : this.renderCategorical(),
    );

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
    this.root.append(
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
    this.renderFlags();
    this.renderPlayAll();
    heading.focus({ preventScroll: true });
  }

  renderPlayer() {
    const trial = this.trial;
    const kind = this.state.test.kind;
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
      checked: kind === "mushra" || COMPARISONS.has(kind),
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
      onkeydown: (e) => this.onWaveKey(e),
    });

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
      this.renderFlagPanel(),
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

  renderMushra() {
    const trial = this.trial;
    const scale = this.state.test.scale;
    const span = scale.max - scale.min;
    const frac = (v) => (v - scale.min) / span;
    const pct = (v) => `${frac(v) * 100}%`;
    const bands = bandsOf(scale);
    const lines = bands.slice(1).map((b) => pct(b.from));
    const gridStyle = `--grid: ${lines.map((p) => `linear-gradient(to right, transparent calc(${p} - 1px), var(--grid-line) calc(${p} - 1px), var(--grid-line) ${p}, transparent ${p})`).join(", ") || "none"}`;
    this.el.rows = new Map();
    const scaleHeader = h(
      "div",
      { class: "ls-row ls-scale-row", "aria-hidden": "true" },
      h("span", { class: "ls-cell-signal" }),
      h(
        "div",
        { class: "ls-scale", style: gridStyle },
        bands.map((b) =>
          h("span", { class: "ls-band", style: { left: `calc(var(--thumb) / 2 + ${frac((b.from + b.to) / 2)} * (100% - var(--thumb)))` } }, b.text),
        ),
        h("span", { class: "ls-scale-end ls-scale-min" }, String(scale.min)),
        h("span", { class: "ls-scale-end ls-scale-max" }, String(scale.max)),
      ),
      h("span", { class: "ls-cell-value" }),
    );
    const rows = [scaleHeader];
    if (trial.reference) {
      rows.push(
        h(
          "div",
          { class: "ls-row ls-ref-row" },
          this.signalButton(REF, "Reference", "play-ref", "0"),
          h("p", { class: "ls-ref-note" }, "Open reference — listen to it as often as you like; it is not rated."),
        ),
      );
    }
    trial.stimuli.forEach((s, i) => {
      const slider = h("input", {
        type: "range",
        min: scale.min,
        max: scale.max,
        step: scale.step || "any",
        value: trial.ratings[s.id] ?? (scale.min + scale.max) / 2,
        disabled: true,
        class: "ls-slider",
        "data-testid": `slider-${s.label}`,
        "aria-label": `Rating for ${s.label}`,
        oninput: () => this.onSliderInput(s, slider),
        onchange: () => this.onSliderChange(s, slider),
      });
      const value = h("output", { class: "ls-value", "data-testid": `value-${s.label}` });
      const hint = h("span", { class: "ls-lock", "data-testid": `lock-${s.label}` });
      const row = h(
        "div",
        { class: "ls-row", "data-stimulus": s.id },
        this.signalButton(s.id, s.label, `stim-${s.label}`, i < 9 ? String(i + 1) : null),
        h("div", { class: "ls-slider-wrap", style: gridStyle }, slider),
        h("div", { class: "ls-cell-value" }, value, hint),
      );
      this.el.rows.set(s.id, { row, slider, value, hint, stimulus: s });
      rows.push(row);
    });
    const group = h("section", { class: "ls-mushra", role: "group", "aria-label": "Ratings" }, rows);
    for (const s of trial.stimuli) this.renderRating(s.id);
    return group;
  }

  /** SMOS / MOS: one labelled 5-point scale; CMOS: the 7-point CCR scale for B relative to A. */
  renderCategorical() {
    const trial = this.trial;
    const kind = this.state.test.kind;
    const scale = this.state.test.scale;
    const stimulus = answerStimuli(kind, trial)[0];
    const ccr = kind === "cmos";
    // CCR reads from "much worse" to "much better", like the question it answers.
    const labels = [...scale.labels].sort((a, b) => (ccr ? a.value - b.value : b.value - a.value));
    this.el.rows = new Map();
    const current = trial.ratings[stimulus.id];
    const options = labels.map((label) =>
      h(
        "label",
        { class: "ls-choice" },
        h("input", {
          type: "radio",
          name: `score-${trial.id}`,
          value: label.value,
          checked: current === label.value,
          "data-testid": `score-${label.value}`,
          onchange: (e) => this.rate(stimulus, Number(e.target.value)),
        }),
        h("span", { class: "ls-choice-num" }, formatScore(kind, label.value)),
        h("span", { class: "ls-choice-text" }, label.text),
      ),
    );
    const value = h("output", { class: "ls-value", "data-testid": `value-${stimulus.label}` });
    this.el.rows.set(stimulus.id, { value, stimulus, radios: options.map((o) => o.querySelector("input")) });
    const fieldset = h(
      "fieldset",
      { class: ccr ? "ls-choices ls-choices-ccr" : "ls-choices" },
      h("legend", {}, ccr ? "Compared with the quality of A, the quality of B is:" : `Your rating of sample ${stimulus.label}`),
      options,
    );
    const section = h("section", { class: "ls-categorical", "aria-label": "Rating" }, fieldset, h("p", { class: "ls-cell-value" }, "Your rating: ", value));
    this.renderRating(stimulus.id);
    return section;
  }

  /** AB: two big "I prefer" buttons (and "No preference" when the test allows it). */
  renderPreference() {
    const trial = this.trial;
    const [a, b] = trial.stimuli;
    const choices = [
      { answer: a.id, testid: `prefer-${a.label}`, text: `I prefer ${a.label}` },
      { answer: b.id, testid: `prefer-${b.label}`, text: `I prefer ${b.label}` },
    ];
    if (this.state.test.scale.no_preference) choices.push({ answer: NO_PREFERENCE, testid: "prefer-none", text: "No preference" });
    this.el.rows = new Map();
    const buttons = choices.map((c) =>
      h(
        "button",
        {
          type: "button",
          class: c.answer === NO_PREFERENCE ? "ls-prefer ls-prefer-none" : "ls-prefer",
          "data-testid": c.testid,
          "data-answer": c.answer,
          "aria-pressed": "false",
          onclick: () => this.rate(b, c.answer),
        },
        h("span", { class: "ls-icon", "aria-hidden": "true" }, ""),
        c.text,
      ),
    );
    const value = h("output", { class: "ls-value", "data-testid": `value-${b.label}` });
    this.el.rows.set(b.id, { value, stimulus: b, choices: buttons });
    const section = h(
      "section",
      { class: "ls-categorical ls-preference", role: "group", "aria-label": "Which do you prefer?" },
      h("p", { class: "ls-question" }, "Which one do you prefer?"),
      h("div", { class: "ls-prefer-row" }, buttons),
      h("p", { class: "ls-cell-value" }, "Your choice: ", value),
    );
    this.renderRating(b.id);
    return section;
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
    if (this.state.test.kind === "mushra") {
      for (const [id, r] of this.el.rows) {
        const active = id === selected;
        r.slider.disabled = !active;
        r.row.classList.toggle("is-active", active);
        clear(r.hint);
        if (!active) {
          r.hint.title = `Select ${r.stimulus.label} to rate it`;
          r.hint.append(h("span", { "aria-hidden": "true" }, "locked"), h("span", { class: "ls-sr" }, `: select ${r.stimulus.label} to rate it`));
        }
      }
    }
    const region = player.region;
    this.el.loopText.textContent = region
      ? `Loop ${formatTime(region.start)}–${formatTime(region.end)}`
      : "Loop: whole signal";
    this.el.loopClear.disabled = !region;
    this.el.loopToggle.checked = player.loop;
    this.waveform.setSignal(player.buffers.get(selected), player.duration);
    this.waveform.setRegion(region);
    this.renderFlags();
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

  choiceText(answer) {
    if (answer === NO_PREFERENCE) return "No preference";
    const s = this.trial.stimuli.find((x) => x.id === answer);
    return s ? `${s.label} preferred` : "";
  }

  signalName(key) {
    if (key === REF) return "Reference";
    const s = this.trial.stimuli.find((x) => x.id === key);
    return s ? (this.state.test.kind === "mushra" ? s.label : `Sample ${s.label}`) : "";
  }

  // --- ratings --------------------------------------------------------------

  onSliderInput(stimulus, slider) {
    this.trial.ratings[stimulus.id] = Number(slider.value);
    this.renderRating(stimulus.id, { typing: true });
  }

  onSliderChange(stimulus, slider) {
    this.rate(stimulus, Number(slider.value));
  }

  rate(stimulus, score) {
    this.trial.ratings[stimulus.id] = score;
    this.outbox.rate(this.urls.rate, { trial: this.trial.id, stimulus: stimulus.id, score });
    this.el.continueMsg.textContent = "";
    this.renderRating(stimulus.id);
  }

  renderRating(stimulusId, { typing = false } = {}) {
    const r = this.el.rows && this.el.rows.get(stimulusId);
    if (!r) return;
    const score = this.trial.ratings[stimulusId];
    const rated = score !== undefined && score !== null;
    const kind = this.state.test.kind;
    const scale = this.state.test.scale;
    const label = !rated ? "" : kind === "ab" ? this.choiceText(score) : bandLabel(scale, score);
    if (r.slider) {
      r.slider.classList.toggle("is-unrated", !rated);
      r.slider.setAttribute("aria-valuetext", rated ? `${score}, ${label}` : "not rated");
      if (rated && Number(r.slider.value) !== score) r.slider.value = score;
    }
    if (r.radios) for (const radio of r.radios) radio.checked = rated && Number(radio.value) === score;
    if (r.choices) {
      for (const button of r.choices) {
        const chosen = rated && button.dataset.answer === score;
        button.setAttribute("aria-pressed", String(chosen));
        button.classList.toggle("is-selected", chosen);
        button.querySelector(".ls-icon").textContent = chosen ? "✓" : "";
      }
    }
    const status = typing ? null : this.outbox.state(`rate:${this.trial.id}:${stimulusId}`);
    const st = status && STATUS_TEXT[status.state];
    clear(r.value);
    if (!rated) {
      r.value.append(h("span", { class: "ls-unrated" }, "not rated"));
    } else if (kind === "ab") {
      r.value.append(h("span", { class: "ls-score" }, label));
    } else {
      r.value.append(h("span", { class: "ls-score" }, formatScore(kind, score)), h("span", { class: "ls-score-label" }, label));
    }
    if (st) {
      r.value.append(
        h(
          "span",
          { class: `ls-state ls-state-${status.state}`, title: status.message || st.text },
          h("span", { "aria-hidden": "true" }, st.icon),
          h("span", { class: "ls-sr" }, st.text),
        ),
      );
    }
  }

  renderSaveStatus() {
    const el = this.el && this.el.saveStatus;
    if (!el || !this.trial) return;
    const s = this.outbox.summary(this.trial.id);
    let state = "idle";
    let text = "Ratings are saved as you go";
    if (s.error) {
      state = "error";
      text = `⚠ Not saved: ${s.message}`;
    } else if (s.retrying) {
      state = "retrying";
      const wait = s.retryAt ? Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000)) : 0;
      const why = s.limited ? "The server asked to slow down" : "Connection problem";
      text = `⟳ ${why} — retrying${wait ? ` in ${wait} s` : "…"}`;
      clearTimeout(this.statusTimer);
      this.statusTimer = setTimeout(() => this.renderSaveStatus(), 1000);
    } else if (s.saving) {
      state = "saving";
      text = "… Saving";
    } else if (s.saved) {
      state = "saved";
      text = "✓ All changes saved";
    }
    el.dataset.state = state;
    el.textContent = text;
    if (this.el.rows) for (const id of this.el.rows.keys()) this.renderRating(id);
    this.renderFlagList();
  }

  onSaved(key, body, response, superseded) {
    if (key.startsWith("rate:")) {
      const trial = this.state.trials.find((t) => t.id === body.trial);
      const answered = typeof response.score === "number" || typeof response.score === "string";
      if (trial && !superseded && answered) trial.ratings[body.stimulus] = response.score;
      return;
    }
    const flag = this.findFlag(body.trial, key);
    if (flag) {
      flag.id = response.id ?? flag.id;
      flag.pending = false;
      this.renderFlags();
    }
  }

  onRejected(key, body, err) {
    if (key.startsWith("flag:")) {
      const flag = this.findFlag(body.trial, key);
      if (flag) flag.error = err.message;
    }
  }

  findFlag(trialId, key) {
    const trial = this.state.trials.find((t) => t.id === trialId);
    return trial && trial.flags.find((f) => f.key === key);
  }

  // --- artifact flags -------------------------------------------------------

  renderFlagPanel() {
    const categories = this.state.flag_categories || [];
    this.el.flagStart = h(
      "button",
      { type: "button", "data-testid": "flag-start", "aria-pressed": "false", onclick: () => this.toggleFlagging() },
      "⚑ Mark an artifact",
    );
    this.el.flagCategory = h(
      "select",
      { "data-testid": "flag-category", onchange: () => this.renderFlags() },
      h("option", { value: "" }, "Choose a category…"),
      categories.map((c) => h("option", { value: c.value }, c.label)),
    );
    this.el.flagNote = h("input", { type: "text", "data-testid": "flag-note", maxlength: "500", placeholder: "Optional note" });
    this.el.flagSubmit = h("button", { type: "button", "data-testid": "flag-submit", onclick: () => this.submitFlag() }, "Add flag");
    this.el.flagCancel = h("button", { type: "button", "data-testid": "flag-cancel", onclick: () => this.stopFlagging() }, "Cancel");
    this.el.flagRegionText = h("p", { class: "ls-flag-region", "data-testid": "flag-region" });
    this.el.flagForm = h(
      "div",
      { class: "ls-flag-form", hidden: true },
      this.el.flagRegionText,
      h(
        "div",
        { class: "ls-flag-fields" },
        h("label", {}, "Category ", this.el.flagCategory),
        h("label", {}, "Note ", this.el.flagNote),
        this.el.flagSubmit,
        this.el.flagCancel,
      ),
    );
    this.el.flagList = h("ul", { class: "ls-flag-list", "data-testid": "flag-list" });
    return h("div", { class: "ls-flags" }, this.el.flagStart, this.el.flagForm, this.el.flagList);
  }

  toggleFlagging() {
    if (this.flagging) this.stopFlagging();
    else this.startFlagging();
  }

  startFlagging() {
    if (!this.player) return;
    const region = this.player.region;
    this.flagging = { region: region ? { ...region } : null };
    this.waveform.setMode("flag");
    this.renderFlags();
    this.el.canvas.focus({ preventScroll: true });
  }

  stopFlagging() {
    this.flagging = null;
    if (this.waveform) this.waveform.setMode("loop");
    this.renderFlags();
  }

  setFlagRegion(region) {
    if (!this.flagging) return;
    let { start, end } = region;
    if (end - start < 0.02) {
      start = Math.max(0, start - 0.05);
      end = Math.min(this.player.duration, end + 0.05);
    }
    this.flagging.region = { start, end };
    this.renderFlags();
  }

  flagTarget() {
    const key = this.player && this.player.selected;
    return this.trial.stimuli.find((s) => s.id === key) || null;
  }

  submitFlag() {
    const target = this.flagTarget();
    const region = this.flagging && this.flagging.region;
    const category = this.el.flagCategory.value;
    if (!target || !region || !category) {
      this.renderFlags();
      return;
    }
    const round = (x) => Math.round(x * 1000) / 1000;
    const body = {
      trial: this.trial.id,
      stimulus: target.id,
      start: round(region.start),
      end: round(region.end),
      category,
      note: this.el.flagNote.value.trim(),
    };
    const key = this.outbox.flag(this.urls.flag, body);
    this.trial.flags.push({ id: null, key, ...body, pending: true });
    this.el.flagNote.value = "";
    this.el.flagCategory.value = "";
    this.stopFlagging();
  }

  renderFlags() {
    if (!this.el || !this.el.flagStart) return;
    const target = this.player ? this.flagTarget() : null;
    const flagging = Boolean(this.flagging);
    this.el.flagStart.setAttribute("aria-pressed", String(flagging));
    this.el.flagStart.textContent = flagging ? "⚑ Marking… (click to stop)" : "⚑ Mark an artifact";
    this.el.flagStart.disabled = !this.player;
    this.el.flagForm.hidden = !flagging;
    if (flagging) {
      const region = this.flagging.region;
      let text;
      if (!target) text = "Select a signal (not the reference) to mark an artifact in it.";
      else if (!region) text = `Drag across the waveform of ${target.label} where you hear the problem.`;
      else text = `${target.label}: ${formatTime(region.start)}–${formatTime(region.end)} (drag again to change)`;
      this.el.flagRegionText.textContent = text;
      this.el.flagSubmit.disabled = !target || !region || !this.el.flagCategory.value;
    }
    if (this.waveform) {
      const selected = this.player && this.player.selected;
      this.waveform.setFlags(this.trial.flags.filter((f) => f.stimulus === selected));
      this.waveform.setDraft(flagging ? this.flagging.region : null);
    }
    this.renderFlagList();
  }

  renderFlagList() {
    if (!this.el || !this.el.flagList) return;
    const categories = new Map((this.state.flag_categories || []).map((c) => [c.value, c.label]));
    const selected = this.player && this.player.selected;
    const visible = this.trial.flags.filter((f) => f.stimulus === selected);
    clear(this.el.flagList);
    this.trial.flags.forEach((flag) => {
      const stim = this.trial.stimuli.find((s) => s.id === flag.stimulus);
      const state = flag.error ? "error" : flag.pending ? (this.outbox.state(flag.key)?.state ?? "saving") : "saved";
      const st = STATUS_TEXT[state] || STATUS_TEXT.saving;
      const n = visible.indexOf(flag);
      this.el.flagList.append(
        h(
          "li",
          { class: `ls-state-${state}` },
          h("span", { class: "ls-flag-mark", "aria-hidden": "true" }, n >= 0 ? `⚑${n + 1}` : "⚑"),
          ` ${stim ? stim.label : "?"} · ${formatTime(flag.start)}–${formatTime(flag.end)} · ${categories.get(flag.category) || flag.category}`,
          flag.note ? ` — ${flag.note}` : "",
          h("span", { class: "ls-flag-state", title: flag.error || "" }, ` ${st.icon} ${flag.error ? `Not saved: ${flag.error}` : st.text}`),
        ),
      );
    });
  }

  // --- continue / completion ------------------------------------------------

  async continueTrial() {
    if (this.busy || !this.trial) return;
    const trial = this.trial;
    const kind = this.state.test.kind;
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
    this.root.dataset.ready = "false";
    this.el.continue.disabled = true;
    this.el.continue.textContent = "Saving…";
    if (this.player) this.player.pause();
    await this.outbox.settled(trial.id);
    const failed = [...trial.stimuli].some((s) => this.outbox.state(`rate:${trial.id}:${s.id}`)?.state === "error");
    if (failed) {
      this.el.continueMsg.textContent = "Some ratings were not saved; change them again or reload the page.";
      this.resetContinue();
      return;
    }
    let result;
    try {
      result = await retrying(async () => {
        // The server checks this trial's playback events when completing it: send them first.
        await this.telemetry.flushTrial(trial.id);
        return postJSON(this.urls.complete, { trial: trial.id });
      }, { onRetry: (wait) => { this.el.continueMsg.textContent = `Could not reach the server — retrying in ${wait} s…`; } });
    } catch (err) {
      this.el.continueMsg.textContent = err.message;
      this.resetContinue();
      return;
    }
    this.busy = false;
    trial.done = true;
    const wasTraining = trial.training;
    this.state.phase = result.phase;
    this.state.position = result.position;
    this.state.completion = result.completion ?? null;
    if (result.phase === "done") {
      this.showCompletion(this.state.completion);
      return;
    }
    const next = this.state.trials[result.position];
    if (wasTraining && next && !next.training) {
      this.notice = "Training is over. From now on your ratings are used.";
    }
    this.showTrial(result.position);
  }

  resetContinue() {
    this.busy = false;
    if (this.player) this.root.dataset.ready = "true";
    this.el.continue.disabled = false;
    this.el.continue.textContent = "Continue →";
    this.renderPlayAll();
  }

  showCompletion(completion) {
    this.teardownTrial();
    this.trial = null;
    clear(this.root);
    this.root.dataset.ready = "true";
    const code = completion && completion.code;
    const redirect = completion && completion.redirect;
    const box = h(
      "section",
      { class: "ls-done", "data-testid": "completion" },
      h("h1", { tabindex: "-1" }, "Thank you — you have finished the test."),
    );
    if (code) {
      const copy = h("button", { type: "button", onclick: () => copyText(code, copy) }, "Copy code");
      box.append(
        h("p", {}, "Your completion code:"),
        h("p", { class: "ls-code" }, h("code", { "data-testid": "completion-code" }, code), " ", copy),
      );
    }
    if (redirect) {
      const delay = code ? REDIRECT_DELAY_WITH_CODE_S : REDIRECT_DELAY_S;
      const countdown = h("span", {}, String(delay));
      const stay = h("button", { type: "button", onclick: () => cancel() }, "Stay on this page");
      const note = h("p", { "data-testid": "redirect-note" }, "You will be sent back automatically in ", countdown, " s. ", stay);
      box.append(h("p", {}, h("a", { href: redirect, "data-testid": "completion-link" }, "Return to the study platform")), note);
      let left = delay;
      const timer = setInterval(() => {
        left -= 1;
        countdown.textContent = String(left);
        if (left <= 0) {
          clearInterval(timer);
          window.location.assign(redirect);
        }
      }, 1000);
      const cancel = () => {
        clearInterval(timer);
        note.textContent = "Automatic redirect cancelled; use the link above.";
      };
    }
    this.root.append(box);
    box.querySelector("h1").focus({ preventScroll: true });
  }

  // --- keyboard -------------------------------------------------------------

  onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || !this.trial) return;
    const target = e.target;
    const tag = target.tagName;
    const typing = tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && !["range", "radio", "checkbox"].includes(target.type)) || target.isContentEditable;
    if (e.key === "Escape" && this.flagging) {
      this.stopFlagging();
      return;
    }
    if (typing || !this.player) {
      if (!typing && e.key === "Enter" && isPassive(target)) this.continueTrial();
      return;
    }
    if (/^[0-9]$/.test(e.key)) {
      const n = Number(e.key);
      const key = n === 0 ? (this.trial.reference ? REF : null) : this.trial.stimuli[n - 1]?.id;
      if (key) {
        e.preventDefault();
        this.activate(key, { toggle: false });
      }
    } else if (e.key === " ") {
      e.preventDefault();
      this.player.toggle();
    } else if (e.key === "Enter") {
      if (isPassive(target)) {
        e.preventDefault();
        this.continueTrial();
      }
    } else if (e.key.startsWith("Arrow") && isPassive(target) && target.tagName !== "INPUT" && this.state.test.kind === "mushra") {
      const r = this.el.rows.get(this.player.selected);
      if (r && !r.slider.disabled) {
        e.preventDefault();
        r.slider.focus();
        const step = Number(this.state.test.scale.step) || 1;
        const delta = e.key === "ArrowUp" || e.key === "ArrowRight" ? step : -step;
        r.slider.value = String(Number(r.slider.value) + delta);
        this.onSliderInput(r.stimulus, r.slider);
        this.onSliderChange(r.stimulus, r.slider);
      }
    }
  }

  onWaveKey(e) {
    if (!this.player) return;
    const pos = this.player.currentPosition();
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      e.preventDefault();
      e.stopPropagation();
      this.seek(pos + (e.key === "ArrowLeft" ? -0.5 : 0.5));
    } else if (e.key === "Home") {
      e.preventDefault();
      this.seek(this.player.region ? this.player.region.start : 0);
    }
  }
}

/** Elements where Enter and arrows have no meaning of their own. */
function isPassive(el) {
  return el === document.body || el === document.documentElement || (el.tagName === "INPUT" && ["range", "radio"].includes(el.type)) || el.tagName === "H1" || el.tagName === "CANVAS";
}

/** Bands of a labelled scale: each label owns the interval around its value. */
function bandsOf(scale) {
  const labels = [...(scale.labels || [])].sort((a, b) => a.value - b.value);
  return labels.map((l, i) => ({
    text: l.text,
    from: i === 0 ? scale.min : (labels[i - 1].value + l.value) / 2,
    to: i === labels.length - 1 ? scale.max : (l.value + labels[i + 1].value) / 2,
  }));
}

function bandLabel(scale, value) {
  const band = bandsOf(scale).find((b, i, all) => value >= b.from && (value < b.to || i === all.length - 1));
  return band ? band.text : "";
}

/** The sounds that carry the trial's answers: every one, except in CMOS/AB (only B). */
function answerStimuli(kind, trial) {
  return COMPARISONS.has(kind) ? trial.stimuli.slice(1, 2) : trial.stimuli;
}

/** CCR scores carry their sign (+2, 0, −1); other scales are plain numbers. */
function formatScore(kind, value) {
  if (kind !== "cmos") return String(value);
  return value > 0 ? `+${value}` : value < 0 ? `−${-value}` : "0";
}

function keyHelp(kind, trial) {
  const parts = [];
  if (trial.reference) parts.push("0 reference");
  if (COMPARISONS.has(kind)) parts.push("1 A · 2 B (switch at the same point)");
  else parts.push(trial.stimuli.length > 1 ? `1–${Math.min(9, trial.stimuli.length)} signals` : "1 sample");
  parts.push("Space play/pause");
  if (kind === "mushra") parts.push("arrows move the active slider");
  parts.push("Enter continue");
  return `Keys: ${parts.join(" · ")}`;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied ✓";
  } catch {
    button.textContent = "Select the code and copy it";
  }
}

const root = document.getElementById("listener-app");
if (root) new ListenerApp(root).start();
