// Artifact flags: the listener marks a time region of the selected signal, picks a category and
// an optional note; the flag is saved at once through the outbox and listed with its save state.

import { h, clear, formatTime } from "./dom.js";
import { STATUS_TEXT } from "./savestatus.js";

const MIN_REGION_S = 0.02; // a click rather than a drag: widened to a region around it
const WIDEN_S = 0.05;

export class FlagPanel {
  /**
   * @param {object} options
   * @param {object} options.trial the trial; its `flags` list is shown and added to
   * @param {Array<{value: string, label: string}>} options.categories the test's flag categories
   * @param {Outbox} options.outbox where a new flag is queued for saving
   * @param {string} options.url the flag endpoint
   * @param {Function} options.player () -> the trial's Player, or null while its audio loads
   * @param {Function} options.waveform () -> the trial's Waveform, or null while its audio loads
   * @param {Function} options.focusWaveform () moves the focus to the waveform, where regions are drawn
   */
  constructor({ trial, categories, outbox, url, player, waveform, focusWaveform }) {
    this.trial = trial;
    this.categories = categories;
    this.outbox = outbox;
    this.url = url;
    this.player = player;
    this.waveform = waveform;
    this.focusWaveform = focusWaveform;
    this.flagging = null; // {region} while the listener marks an artifact
    this.startButton = h(
      "button",
      { type: "button", "data-testid": "flag-start", "aria-pressed": "false", onclick: () => this.toggle() },
      "⚑ Mark an artifact",
    );
    this.category = h(
      "select",
      { "data-testid": "flag-category", onchange: () => this.render() },
      h("option", { value: "" }, "Choose a category…"),
      categories.map((c) => h("option", { value: c.value }, c.label)),
    );
    this.note = h("input", { type: "text", "data-testid": "flag-note", maxlength: "500", placeholder: "Optional note" });
    this.submitButton = h("button", { type: "button", "data-testid": "flag-submit", onclick: () => this.submit() }, "Add flag");
    const cancel = h("button", { type: "button", "data-testid": "flag-cancel", onclick: () => this.stopFlagging() }, "Cancel");
    this.regionText = h("p", { class: "ls-flag-region", "data-testid": "flag-region" });
    this.form = h(
      "div",
      { class: "ls-flag-form", hidden: true },
      this.regionText,
      h(
        "div",
        { class: "ls-flag-fields" },
        h("label", {}, "Category ", this.category),
        h("label", {}, "Note ", this.note),
        this.submitButton,
        cancel,
      ),
    );
    this.list = h("ul", { class: "ls-flag-list", "data-testid": "flag-list" });
    this.element = h("div", { class: "ls-flags" }, this.startButton, this.form, this.list);
  }

  get active() {
    return Boolean(this.flagging);
  }

  toggle() {
    if (this.flagging) this.stopFlagging();
    else this.startFlagging();
  }

  startFlagging() {
    const player = this.player();
    if (!player) return;
    const region = player.region;
    this.flagging = { region: region ? { ...region } : null };
    this.waveform().setMode("flag");
    this.render();
    this.focusWaveform();
  }

  stopFlagging() {
    this.flagging = null;
    const waveform = this.waveform();
    if (waveform) waveform.setMode("loop");
    this.render();
  }

  /** The region the listener drew on the waveform while marking. */
  setRegion(region) {
    if (!this.flagging) return;
    let { start, end } = region;
    if (end - start < MIN_REGION_S) {
      start = Math.max(0, start - WIDEN_S);
      end = Math.min(this.player().duration, end + WIDEN_S);
    }
    this.flagging.region = { start, end };
    this.render();
  }

  /** The stimulus a flag would be on: the selected signal, unless that is the reference. */
  target() {
    const player = this.player();
    const key = player && player.selected;
    return this.trial.stimuli.find((s) => s.id === key) || null;
  }

  submit() {
    const target = this.target();
    const region = this.flagging && this.flagging.region;
    const category = this.category.value;
    if (!target || !region || !category) {
      this.render();
      return;
    }
    const round = (x) => Math.round(x * 1000) / 1000;
    const body = {
      trial: this.trial.id,
      stimulus: target.id,
      start: round(region.start),
      end: round(region.end),
      category,
      note: this.note.value.trim(),
    };
    const key = this.outbox.flag(this.url, body);
    this.trial.flags.push({ id: null, key, ...body, pending: true });
    this.note.value = "";
    this.category.value = "";
    this.stopFlagging();
  }

  render() {
    const player = this.player();
    const target = player ? this.target() : null;
    const flagging = Boolean(this.flagging);
    this.startButton.setAttribute("aria-pressed", String(flagging));
    this.startButton.textContent = flagging ? "⚑ Marking… (click to stop)" : "⚑ Mark an artifact";
    this.startButton.disabled = !player;
    this.form.hidden = !flagging;
    if (flagging) {
      const region = this.flagging.region;
      let text;
      if (!target) text = "Select a signal (not the reference) to mark an artifact in it.";
      else if (!region) text = `Drag across the waveform of ${target.label} where you hear the problem.`;
      else text = `${target.label}: ${formatTime(region.start)}–${formatTime(region.end)} (drag again to change)`;
      this.regionText.textContent = text;
      this.submitButton.disabled = !target || !region || !this.category.value;
    }
    const waveform = this.waveform();
    if (waveform) {
      const selected = player && player.selected;
      waveform.setFlags(this.trial.flags.filter((f) => f.stimulus === selected));
      waveform.setDraft(flagging ? this.flagging.region : null);
    }
    this.renderList();
  }

  /** Every flag of the trial with its save state; those on the selected signal are numbered as drawn. */
  renderList() {
    const names = new Map(this.categories.map((c) => [c.value, c.label]));
    const player = this.player();
    const selected = player && player.selected;
    const visible = this.trial.flags.filter((f) => f.stimulus === selected);
    clear(this.list);
    this.trial.flags.forEach((flag) => {
      const stim = this.trial.stimuli.find((s) => s.id === flag.stimulus);
      const state = flag.error ? "error" : flag.pending ? (this.outbox.state(flag.key)?.state ?? "saving") : "saved";
      const st = STATUS_TEXT[state] || STATUS_TEXT.saving;
      const n = visible.indexOf(flag);
      this.list.append(
        h(
          "li",
          { class: `ls-state-${state}` },
          h("span", { class: "ls-flag-mark", "aria-hidden": "true" }, n >= 0 ? `⚑${n + 1}` : "⚑"),
          ` ${stim ? stim.label : "?"} · ${formatTime(flag.start)}–${formatTime(flag.end)} · ${names.get(flag.category) || flag.category}`,
          flag.note ? ` — ${flag.note}` : "",
          h("span", { class: "ls-flag-state", title: flag.error || "" }, ` ${st.icon} ${flag.error ? `Not saved: ${flag.error}` : st.text}`),
        ),
      );
    });
  }
}
