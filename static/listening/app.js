// The listening session as a whole: loads the participant's state and shows the screen of its
// phase (level calibration, headphone check, the trials one at a time, the end; the questionnaire
// pages are served by the server, so those phases reload the page), owns the outbox
// that saves every rating and flag as soon as it is given, and the playback telemetry.

import { h, clear } from "./dom.js";
import { Outbox, Telemetry, getJSON, postJSON, retrying } from "./api.js";
import { showCalibration } from "./calibration.js";
import { showHeadphoneCheck } from "./headphone.js";
import { showCompletion, showScreenedOut } from "./completion.js";
import { TrialView } from "./trial.js";
import { onTrialKey } from "./keyboard.js";

// The questionnaire pages are plain server-rendered forms at the session's own address.
const QUESTIONNAIRE_PHASES = new Set(["pre_questionnaire", "post_questionnaire"]);

function toQuestionnaire() {
  window.location.reload();
}

export class ListenerApp {
  /** @param {HTMLElement} root the #listener-app element; its data-*-url attributes name the endpoints */
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
    this.state = null;
    this.ctx = null;
    this.view = null; // the TrialView on screen, or null on any other screen
    this.notice = null; // shown once, above the next trial
    this.telemetry = new Telemetry(this.urls.telemetry);
    this.outbox = new Outbox({
      storageKey: `evalsite-listener-outbox:${this.urls.state}`,
      onChange: () => this.view && this.view.renderSaveStatus(),
      onSaved: (key, body, response, superseded) => this.onSaved(key, body, response, superseded),
      onRejected: (key, body, err) => this.onRejected(key, body, err),
    });
    document.addEventListener("keydown", (e) => this.view && onTrialKey(this.view, e));
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

  // --- phases ---------------------------------------------------------------

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
    if (QUESTIONNAIRE_PHASES.has(state.phase)) {
      toQuestionnaire();
      return;
    }
    if (state.phase === "done") {
      showCompletion(this, state.completion);
      return;
    }
    if (state.phase === "screened_out") {
      showScreenedOut(this, state.screened_out);
      return;
    }
    if (state.phase === "calibration") {
      showCalibration(this, state.calibration);
      return;
    }
    if (state.phase === "headphone") {
      showHeadphoneCheck(this, state.headphone_check);
      return;
    }
    this.showTrial(state.position);
  }

  /** POST a step before the trials (calibration, headphone check), retrying network errors, then go on. */
  async postThenStart(url, body) {
    let result;
    try {
      result = await retrying(() => postJSON(url, body));
    } catch (err) {
      this.showMessage(err.message, () => this.start());
      return;
    }
    if (result.phase === "screened_out") showScreenedOut(this, result.screened_out);
    else this.start();
  }

  showTrial(index) {
    if (!this.state.trials[index]) {
      this.showMessage("There is nothing left to rate. Please reload the page.", () => this.start());
      return;
    }
    this.closeTrial();
    this.view = new TrialView(this, index);
    this.view.show();
  }

  /** The server accepted a trial as complete: go on to the position it names, or to the end. */
  trialCompleted(trial, result) {
    trial.done = true;
    this.state.phase = result.phase;
    this.state.position = result.position;
    this.state.completion = result.completion ?? null;
    if (QUESTIONNAIRE_PHASES.has(result.phase)) {
      toQuestionnaire();
      return;
    }
    if (result.phase === "done") {
      showCompletion(this, this.state.completion);
      return;
    }
    const next = this.state.trials[result.position];
    if (trial.training && next && !next.training) {
      this.notice = "Training is over. From now on your ratings are used.";
    }
    this.showTrial(result.position);
  }

  takeNotice() {
    const notice = this.notice;
    this.notice = null;
    return notice;
  }

  /** Leave the trial on screen, if any: its playback and timers stop. Every screen calls this first. */
  closeTrial() {
    if (this.view) this.view.close();
    this.view = null;
  }

  showMessage(text, retry) {
    this.closeTrial();
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

  audioContext() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      this.ctx = new Ctx({ latencyHint: "interactive" });
      this.telemetry.sampleRate = this.ctx.sampleRate;
    }
    return this.ctx;
  }

  // --- saved answers ------------------------------------------------------------

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
      if (this.view) this.view.flags.render();
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
}
