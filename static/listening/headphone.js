// Headphone check (Woods et al. 2017), after the level calibration.

import { h, clear } from "./dom.js";
import { decodeAll } from "./player.js";

/** Six questions, one at a time: play three tones once, then say which was the quietest. */
export function showHeadphoneCheck(app, check) {
  app.closeTrial();
  const root = app.root;
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
    clear(root);
    root.dataset.ready = "false";
    root.dataset.kind = "headphone";
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
    root.append(
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
    const ctx = app.audioContext();
    decodeAll(ctx, [{ key: "hp", url: trial.url }])
      .then((buffers) => {
        status.textContent = "Press play when you are ready. You can play the tones only once.";
        play.disabled = false;
        root.dataset.ready = "true";
        play.onclick = async () => {
          play.disabled = true;
          if (ctx.state !== "running") await ctx.resume();
          const node = ctx.createBufferSource();
          node.buffer = buffers.get("hp");
          node.connect(ctx.destination);
          // The answers wait until the last tone has ended: an answer given mid-play is a guess.
          node.onended = () => {
            status.textContent = "Which tone was the quietest?";
            for (const c of choices) c.disabled = false;
          };
          source.node = node;
          node.start();
          status.textContent = "Playing…";
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
    app.showMessage("Saving…");
    await app.postThenStart(app.urls.headphone, { answers });
  };
  ask(0);
}
