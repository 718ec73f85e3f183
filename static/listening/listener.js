// Listener UI entry point (loaded by listening/session.html as a module): the listening session
// in #listener-app.
//
//   app.js          the session: phases, outbox, telemetry
//   calibration.js  level calibration        headphone.js  headphone check
//   trial.js        one trial: player, "play every sound", Continue
//   widgets.js      rating widgets (MUSHRA, SMOS/MOS/CMOS, AB)
//   flags.js        artifact flags           keyboard.js   shortcuts
//   completion.js   the end pages            kinds.js      what the test kinds share
//   savestatus.js   how saving is shown
//   api.js          requests, outbox, telemetry;  player.js, waveform.js  Web Audio and canvas

import { ListenerApp } from "./app.js";

const root = document.getElementById("listener-app");
if (root) new ListenerApp(root).start();
