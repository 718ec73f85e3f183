// How the saving of a rating or flag is shown: an icon and a word for each outbox slot state
// ("saving", "retrying", "saved", "error"), never colour alone.

export const STATUS_TEXT = {
  saving: { icon: "…", text: "Saving…" },
  retrying: { icon: "⟳", text: "Retrying…" },
  saved: { icon: "✓", text: "Saved" },
  error: { icon: "⚠", text: "Not saved" },
};

/**
 * The trial header's line for an outbox summary (Outbox.summary): its state and text, and
 * whether it counts down to a retry (then it must be redrawn every second).
 */
export function summaryStatus(summary, now = Date.now()) {
  if (summary.error) return { state: "error", text: `⚠ Not saved: ${summary.message}`, ticking: false };
  if (summary.retrying) {
    const wait = summary.retryAt ? Math.max(0, Math.ceil((summary.retryAt - now) / 1000)) : 0;
    const why = summary.limited ? "The server asked to slow down" : "Connection problem";
    return { state: "retrying", text: `⟳ ${why} — retrying${wait ? ` in ${wait} s` : "…"}`, ticking: true };
  }
  if (summary.saving) return { state: "saving", text: "… Saving", ticking: false };
  if (summary.saved) return { state: "saved", text: "✓ All changes saved", ticking: false };
  return { state: "idle", text: "Ratings are saved as you go", ticking: false };
}
