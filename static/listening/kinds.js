// What the test kinds (MUSHRA, SMOS, MOS, CMOS, AB) share: which sounds carry the answer and how
// a score reads.
//
// CMOS and AB trials have two sounds, A and B, and one answer, which is sent on B (the answer is
// about B relative to A: a CCR score, or the preferred sound's id / "none").

export const REF = "ref"; // player key of the reference signal
export const COMPARISONS = new Set(["cmos", "ab"]);
export const NO_PREFERENCE = "none";

/** The sounds that carry the trial's answers: every one, except in CMOS/AB (only B). */
export function answerStimuli(kind, trial) {
  return COMPARISONS.has(kind) ? trial.stimuli.slice(1, 2) : trial.stimuli;
}

/** MUSHRA and the A/B comparisons switch instantly between sounds at the same position, and loop. */
export function switchesInPlace(kind) {
  return kind === "mushra" || COMPARISONS.has(kind);
}

/** CCR scores carry their sign (+2, 0, −1); other scales are plain numbers. */
export function formatScore(kind, value) {
  if (kind !== "cmos") return String(value);
  return value > 0 ? `+${value}` : value < 0 ? `−${-value}` : "0";
}
