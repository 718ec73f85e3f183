// Level calibration, before the headphone check.

import { h, clear } from "./dom.js";
import { decodeAll } from "./player.js";

const PLAY_TEXT = "▶ Play the calibration sound";

/**
 * A noise at the level of the test's sounds: the listener plays it as often as they like and
 * sets their device volume to "loud but comfortable", then confirms. Everything after plays
 * through the same unity-gain path, so its level relative to the noise is what the server's
 * files say (the headphone check's tones share the noise's level).
 */
export function showCalibration(app, calibration) {
  app.closeTrial();
  const root = app.root;
  clear(root);
  root.dataset.ready = "false";
  root.dataset.kind = "calibration";
  let plays = 0;
  let node = null;
  const status = h("p", { class: "ls-loading", role: "status", "data-testid": "cal-status" }, "Loading…");
  const play = h("button", { type: "button", class: "ls-playpause", "data-testid": "cal-play", "aria-pressed": "false", disabled: true }, PLAY_TEXT);
  const reason = h("p", { class: "ls-reason", "data-testid": "cal-reason" }, "Play the sound at least once before continuing.");
  const confirm = h("button", { type: "button", class: "ls-continue", "data-testid": "cal-confirm", disabled: true }, "My volume is set: continue");
  const heading = h("h1", { tabindex: "-1" }, "Set your volume");
  root.append(
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
    play.textContent = PLAY_TEXT;
    play.setAttribute("aria-pressed", "false");
  };
  const ctx = app.audioContext();
  decodeAll(ctx, [{ key: "cal", url: calibration.url }])
    .then((buffers) => {
      status.textContent = "Press Play when your headphones are on.";
      play.disabled = false;
      root.dataset.ready = "true";
      play.onclick = async () => {
        if (node) {
          stop();
          status.textContent = "Stopped. Play again, or continue if the volume is right.";
          return;
        }
        if (ctx.state !== "running") await ctx.resume();
        // Straight to the destination: the unity-gain path every later sound takes too.
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
      status.append(`Could not load the sound (${err.message}). `, h("button", { type: "button", onclick: () => showCalibration(app, calibration) }, "Try again"));
    });
  confirm.onclick = async () => {
    stop();
    confirm.disabled = true;
    app.showMessage("Saving…");
    await app.postThenStart(app.urls.calibration, { plays });
  };
}
