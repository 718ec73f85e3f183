// The pages after the trials: the thank-you page (completion code, redirect back to the study
// platform) and the page for a listener the screening turned away.

import { h, clear } from "./dom.js";

const REDIRECT_DELAY_S = 5;
const REDIRECT_DELAY_WITH_CODE_S = 15; // time to copy the code before leaving

export function showCompletion(app, completion) {
  app.closeTrial();
  const root = app.root;
  clear(root);
  root.dataset.ready = "true";
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
  if (redirect && root.dataset.preview === "true") {
    // A researcher's preview: the link is shown, but nobody is sent to the study platform.
    box.append(h("p", {}, h("a", { href: redirect, "data-testid": "completion-link" }, "Return to the study platform")));
  } else if (redirect) {
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
  root.append(box);
  box.querySelector("h1").focus({ preventScroll: true });
}

export function showScreenedOut(app, info) {
  app.closeTrial();
  const root = app.root;
  clear(root);
  root.dataset.ready = "true";
  const box = h("section", { class: "ls-done", "data-testid": "screened-out" }, h("h1", { tabindex: "-1" }, info.message));
  if (info.redirect) {
    box.append(h("p", {}, h("a", { href: info.redirect, "data-testid": "screened-out-link" }, "Return to the study platform")));
  }
  root.append(box);
  box.querySelector("h1").focus({ preventScroll: true });
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied ✓";
  } catch {
    button.textContent = "Select the code and copy it";
  }
}
