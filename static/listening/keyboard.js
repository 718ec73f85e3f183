// Keyboard shortcuts on a trial page: digits pick a signal (0 is the reference), Space plays or
// pauses, Enter continues, arrows move the active MUSHRA slider, Escape stops marking an artifact;
// on the waveform, arrows seek and Home jumps to the start of the loop.

import { REF, COMPARISONS } from "./kinds.js";

const SEEK_STEP_S = 0.5;

/** The line under a trial that lists its shortcuts. */
export function keyHelp(kind, trial) {
  const parts = [];
  if (trial.reference) parts.push("0 reference");
  if (COMPARISONS.has(kind)) parts.push("1 A · 2 B (switch at the same point)");
  else parts.push(trial.stimuli.length > 1 ? `1–${Math.min(9, trial.stimuli.length)} signals` : "1 sample");
  parts.push("Space play/pause");
  if (kind === "mushra") parts.push("arrows move the active slider");
  parts.push("Enter continue");
  return `Keys: ${parts.join(" · ")}`;
}

/** A key pressed anywhere on the page while `view` (a TrialView) is shown. */
export function onTrialKey(view, e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const target = e.target;
  const tag = target.tagName;
  const typing = tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && !["range", "radio", "checkbox"].includes(target.type)) || target.isContentEditable;
  if (e.key === "Escape" && view.flags.active) {
    view.flags.stopFlagging();
    return;
  }
  const panel = view.panel;
  if (typing || !panel.player) {
    if (!typing && e.key === "Enter" && isPassive(target)) view.continueTrial();
    return;
  }
  if (/^[0-9]$/.test(e.key)) {
    const n = Number(e.key);
    const key = n === 0 ? (view.trial.reference ? REF : null) : view.trial.stimuli[n - 1]?.id;
    if (key) {
      e.preventDefault();
      panel.activate(key, { toggle: false });
    }
  } else if (e.key === " ") {
    // Space on a focused answer (a radio button or checkbox) chooses it, as everywhere else.
    if (isChoice(target)) return;
    e.preventDefault();
    panel.player.toggle();
  } else if (e.key === "Enter") {
    if (isPassive(target)) {
      e.preventDefault();
      view.continueTrial();
    }
  } else if (e.key.startsWith("Arrow") && isPassive(target) && target.tagName !== "INPUT" && view.kind === "mushra") {
    const direction = e.key === "ArrowUp" || e.key === "ArrowRight" ? 1 : -1;
    if (view.widget.nudge(panel.player.selected, direction)) e.preventDefault();
  }
}

/** A key pressed on the waveform canvas of `panel` (a PlayerPanel). */
export function onWaveformKey(panel, e) {
  const player = panel.player;
  if (!player) return;
  const pos = player.currentPosition();
  if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
    e.preventDefault();
    e.stopPropagation();
    panel.seek(pos + (e.key === "ArrowLeft" ? -SEEK_STEP_S : SEEK_STEP_S));
  } else if (e.key === "Home") {
    e.preventDefault();
    panel.seek(player.region ? player.region.start : 0);
  }
}

/** Answers that Space selects by itself. */
function isChoice(el) {
  return el.tagName === "INPUT" && ["radio", "checkbox"].includes(el.type);
}

/** Elements where Enter and arrows have no meaning of their own. */
function isPassive(el) {
  return el === document.body || el === document.documentElement || (el.tagName === "INPUT" && ["range", "radio"].includes(el.type)) || el.tagName === "H1" || el.tagName === "CANVAS";
}
