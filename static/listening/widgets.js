// Rating widgets, one per test kind: MUSHRA sliders, the SMOS/MOS and CMOS (CCR) labelled scales,
// and AB's "I prefer" buttons. A widget draws its answers and the save state of each; the trial
// view saves them (onRate).

import { h, clear } from "./dom.js";
import { REF, NO_PREFERENCE, answerStimuli, formatScore } from "./kinds.js";
import { STATUS_TEXT } from "./savestatus.js";

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

class RatingWidget {
  constructor({ test, trial, signalButton, onRate, saveState }) {
    this.kind = test.kind;
    this.scale = test.scale;
    this.trial = trial;
    this.signalButton = signalButton;
    this.onRate = onRate;
    this.saveState = saveState;
    this.rows = new Map(); // stimulus id -> the elements that show its answer
    this.element = null;
  }

  /** MUSHRA rates only the signal being played; the other widgets have nothing to lock. */
  setActive() {}

  /** Move the active answer by `direction` steps from the keyboard; true when there was one to move. */
  nudge() {
    return false;
  }

  renderAll() {
    for (const id of this.rows.keys()) this.renderRating(id);
  }

  labelOf(score) {
    return bandLabel(this.scale, score);
  }

  /** Show one answer and its save state (left out while a slider is still moving: `typing`). */
  renderRating(stimulusId, { typing = false } = {}) {
    const r = this.rows.get(stimulusId);
    if (!r) return;
    const score = this.trial.ratings[stimulusId];
    const rated = score !== undefined && score !== null;
    const label = rated ? this.labelOf(score) : "";
    this.showAnswer(r, score, rated, label);
    const status = typing ? null : this.saveState(stimulusId);
    const st = status && STATUS_TEXT[status.state];
    clear(r.value);
    if (!rated) {
      r.value.append(h("span", { class: "ls-unrated" }, "not rated"));
    } else if (this.kind === "ab") {
      r.value.append(h("span", { class: "ls-score" }, label));
    } else {
      r.value.append(h("span", { class: "ls-score" }, formatScore(this.kind, score)), h("span", { class: "ls-score-label" }, label));
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

  /** Show the answer in the widget's own controls (slider, radio buttons, preference buttons). */
  showAnswer() {}
}

/** MUSHRA: one slider per signal on the labelled 0–100 scale, unlocked while its signal plays. */
class MushraWidget extends RatingWidget {
  constructor(options) {
    super(options);
    const trial = this.trial;
    const scale = this.scale;
    const span = scale.max - scale.min;
    const frac = (v) => (v - scale.min) / span;
    const pct = (v) => `${frac(v) * 100}%`;
    const bands = bandsOf(scale);
    const lines = bands.slice(1).map((b) => pct(b.from));
    const gridStyle = `--grid: ${lines.map((p) => `linear-gradient(to right, transparent calc(${p} - 1px), var(--grid-line) calc(${p} - 1px), var(--grid-line) ${p}, transparent ${p})`).join(", ") || "none"}`;
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
        oninput: () => this.slide(s, slider),
        onchange: () => this.onRate(s, Number(slider.value)),
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
      this.rows.set(s.id, { row, slider, value, hint, stimulus: s });
      rows.push(row);
    });
    this.element = h("section", { class: "ls-mushra", role: "group", "aria-label": "Ratings" }, rows);
    this.renderAll();
  }

  /** While the slider moves the value is shown, not saved: it is saved when the slider is let go. */
  slide(stimulus, slider) {
    this.trial.ratings[stimulus.id] = Number(slider.value);
    this.renderRating(stimulus.id, { typing: true });
  }

  setActive(selected) {
    for (const [id, r] of this.rows) {
      const active = id === selected;
      r.slider.disabled = !active;
      r.row.classList.toggle("is-active", active);
      this.renderHint(r, active);
    }
  }

  /** Beside a slider that is not being played: "rated" once it has an answer, else how to rate it. */
  renderHint(r, active) {
    clear(r.hint);
    r.hint.removeAttribute("title");
    r.hint.classList.toggle("is-rated", false);
    if (active) return;
    const rated = this.trial.ratings[r.stimulus.id] !== undefined && this.trial.ratings[r.stimulus.id] !== null;
    if (rated) {
      r.hint.title = `Select ${r.stimulus.label} to change its rating`;
      r.hint.classList.add("is-rated");
      r.hint.append(h("span", { "aria-hidden": "true" }, "✓ rated"), h("span", { class: "ls-sr" }, `: select ${r.stimulus.label} to change it`));
    } else {
      r.hint.title = `Select ${r.stimulus.label} to rate it`;
      r.hint.append(h("span", { "aria-hidden": "true" }, "play to rate"), h("span", { class: "ls-sr" }, `: select ${r.stimulus.label} to rate it`));
    }
  }

  nudge(selected, direction) {
    const r = this.rows.get(selected);
    if (!r || r.slider.disabled) return false;
    r.slider.focus();
    const step = Number(this.scale.step) || 1;
    r.slider.value = String(Number(r.slider.value) + direction * step);
    this.slide(r.stimulus, r.slider);
    this.onRate(r.stimulus, Number(r.slider.value));
    return true;
  }

  showAnswer(r, score, rated, label) {
    r.slider.classList.toggle("is-unrated", !rated);
    r.slider.setAttribute("aria-valuetext", rated ? `${score}, ${label}` : "not rated");
    if (rated && Number(r.slider.value) !== score) r.slider.value = score;
  }
}

/** SMOS / MOS: one labelled 5-point scale; CMOS: the 7-point CCR scale for B relative to A. */
class CategoricalWidget extends RatingWidget {
  constructor(options) {
    super(options);
    const trial = this.trial;
    const kind = this.kind;
    const stimulus = answerStimuli(kind, trial)[0];
    const ccr = kind === "cmos";
    // CCR reads from "much worse" to "much better", like the question it answers.
    const labels = [...this.scale.labels].sort((a, b) => (ccr ? a.value - b.value : b.value - a.value));
    const current = trial.ratings[stimulus.id];
    const choiceLabels = labels.map((label) =>
      h(
        "label",
        { class: "ls-choice" },
        h("input", {
          type: "radio",
          name: `score-${trial.id}`,
          value: label.value,
          checked: current === label.value,
          "data-testid": `score-${label.value}`,
          onchange: (e) => this.onRate(stimulus, Number(e.target.value)),
        }),
        h("span", { class: "ls-choice-num" }, formatScore(kind, label.value)),
        h("span", { class: "ls-choice-text" }, label.text),
      ),
    );
    const value = h("output", { class: "ls-value", "data-testid": `value-${stimulus.label}` });
    this.rows.set(stimulus.id, { value, stimulus, radios: choiceLabels.map((o) => o.querySelector("input")) });
    const fieldset = h(
      "fieldset",
      { class: ccr ? "ls-choices ls-choices-ccr" : "ls-choices", onkeydown: (e) => this.stepKey(e, stimulus) },
      h("legend", {}, ccr ? "Compared with the quality of A, the quality of B is:" : `Your rating of sample ${stimulus.label}`),
      choiceLabels,
    );
    this.element = h("section", { class: "ls-categorical", "aria-label": "Rating" }, fieldset, h("p", { class: "ls-cell-value" }, "Your rating: ", value));
    this.renderRating(stimulus.id);
  }

  /**
   * Arrows on the scale move by value, not by place: Right and Up give the next higher score,
   * Left and Down the next lower. The browser's own radio arrows follow the order on the page,
   * which runs from the highest score down on the SMOS/MOS scale.
   */
  stepKey(e, stimulus) {
    const direction = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[e.key];
    if (!direction || e.target.type !== "radio" || e.ctrlKey || e.metaKey || e.altKey) return;
    e.preventDefault();
    e.stopPropagation();
    const radios = [...this.rows.get(stimulus.id).radios].sort((a, b) => Number(a.value) - Number(b.value));
    const here = radios.indexOf(e.target);
    const next = radios[Math.min(radios.length - 1, Math.max(0, here + direction))];
    if (next === e.target && e.target.checked) return;
    next.checked = true;
    next.focus();
    this.onRate(stimulus, Number(next.value));
  }

  showAnswer(r, score, rated) {
    for (const radio of r.radios) radio.checked = rated && Number(radio.value) === score;
  }
}

/** AB: two big "I prefer" buttons (and "No preference" when the test allows it), answered on B. */
class PreferenceWidget extends RatingWidget {
  constructor(options) {
    super(options);
    const [a, b] = this.trial.stimuli;
    const choices = [
      { answer: a.id, testid: `prefer-${a.label}`, text: `I prefer ${a.label}` },
      { answer: b.id, testid: `prefer-${b.label}`, text: `I prefer ${b.label}` },
    ];
    if (this.scale.no_preference) choices.push({ answer: NO_PREFERENCE, testid: "prefer-none", text: "No preference" });
    const buttons = choices.map((c) =>
      h(
        "button",
        {
          type: "button",
          class: c.answer === NO_PREFERENCE ? "ls-prefer ls-prefer-none" : "ls-prefer",
          "data-testid": c.testid,
          "data-answer": c.answer,
          "aria-pressed": "false",
          onclick: () => this.onRate(b, c.answer),
        },
        h("span", { class: "ls-icon", "aria-hidden": "true" }, ""),
        c.text,
      ),
    );
    const value = h("output", { class: "ls-value", "data-testid": `value-${b.label}` });
    this.rows.set(b.id, { value, stimulus: b, choices: buttons });
    this.element = h(
      "section",
      { class: "ls-categorical ls-preference", role: "group", "aria-label": "Which do you prefer?" },
      h("p", { class: "ls-question" }, "Which one do you prefer?"),
      h("div", { class: "ls-prefer-row" }, buttons),
      h("p", { class: "ls-cell-value" }, "Your choice: ", value),
    );
    this.renderRating(b.id);
  }

  labelOf(answer) {
    if (answer === NO_PREFERENCE) return "No preference";
    const s = this.trial.stimuli.find((x) => x.id === answer);
    return s ? `${s.label} preferred` : "";
  }

  showAnswer(r, score, rated) {
    for (const button of r.choices) {
      const chosen = rated && button.dataset.answer === score;
      button.setAttribute("aria-pressed", String(chosen));
      button.classList.toggle("is-selected", chosen);
      button.querySelector(".ls-icon").textContent = chosen ? "✓" : "";
    }
  }
}

/**
 * The rating widget for the test's kind.
 *
 * @param {object} options
 * @param {object} options.test the test's kind and scale (state.test)
 * @param {object} options.trial the trial; its `ratings` are read and, while a slider moves, written
 * @param {Function} options.signalButton (key, text, testid, shortcut) -> button that plays a signal
 * @param {Function} options.onRate (stimulus, score): the listener gave an answer to save
 * @param {Function} options.saveState (stimulusId) -> the outbox state of that answer, or null
 */
export function createRatingWidget(options) {
  const { kind } = options.test;
  if (kind === "mushra") return new MushraWidget(options);
  if (kind === "ab") return new PreferenceWidget(options);
  return new CategoricalWidget(options);
}
