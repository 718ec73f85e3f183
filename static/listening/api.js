// Talking to the server: CSRF-protected JSON POSTs, a persistent outbox that
// never drops a rating or flag, and batched playback telemetry.

import { uuid4 } from "./dom.js";

const RETRY_BASE_MS = 1000;
const RETRY_MAX_MS = 30000;
const RETRY_AFTER_MAX_S = 3600; // a Retry-After beyond this is treated as this
const TELEMETRY_CHUNK = 250; // events per POST; keepalive bodies are capped at 64 KiB

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** Error for a response the server refused (4xx): retrying would not help. */
export class RejectedError extends Error {
  constructor(status, message, extra) {
    super(message);
    this.status = status;
    this.extra = extra || {};
  }
}

/**
 * Error for a failure worth retrying: network down, 5xx, 408, 429. `retryAfter` is the wait in
 * seconds the server asked for (its Retry-After header, e.g. on a 429), or null.
 */
export class TransientError extends Error {
  constructor(message, retryAfter = null) {
    super(message);
    this.retryAfter = retryAfter;
  }
}

/** Seconds to wait from a Retry-After header (seconds or an HTTP date), or null without one. */
export function retryAfterSeconds(header, now = Date.now()) {
  if (!header) return null;
  const seconds = /^\s*\d+\s*$/.test(header) ? Number(header) : (Date.parse(header) - now) / 1000;
  if (!Number.isFinite(seconds)) return null;
  return Math.min(RETRY_AFTER_MAX_S, Math.max(0, Math.ceil(seconds)));
}

export async function getJSON(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  } catch (err) {
    throw new TransientError(`network error: ${err.message}`);
  }
  return handle(response);
}

export async function postJSON(url, body, { keepalive = false } = {}) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      keepalive,
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": csrfToken(),
      },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new TransientError(`network error: ${err.message}`);
  }
  return handle(response);
}

/**
 * Run `attempt` until it succeeds, waiting 1, 2, 4 … 30 s after each failure, or as long as the
 * server's Retry-After asks if that is longer; a RejectedError (the server refused the request:
 * retrying cannot help) is thrown at once. `onRetry(seconds)` is told each wait, e.g. to show it.
 */
export async function retrying(attempt, { onRetry = () => {} } = {}) {
  for (let n = 0; ; n += 1) {
    try {
      return await attempt();
    } catch (err) {
      if (err instanceof RejectedError) throw err;
      const wait = Math.max(Math.min(30, 2 ** n), err.retryAfter ?? 0);
      onRetry(wait);
      await new Promise((r) => setTimeout(r, wait * 1000));
    }
  }
}

async function handle(response) {
  let payload = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = null;
    }
  }
  if (response.ok) return payload;
  const message = (payload && payload.message) || `${response.status} ${response.statusText}`.trim();
  if (response.status >= 500 || response.status === 408 || response.status === 429) {
    throw new TransientError(message, retryAfterSeconds(response.headers.get("Retry-After")));
  }
  throw new RejectedError(response.status, message, payload && payload.extra);
}

/**
 * Outbox for writes that must reach the server.
 *
 * Each slot (one rating of one signal, or one flag) is sent in order; a new
 * value gets a new request_id, a retry of the same value reuses its id. Unsent
 * values are mirrored to localStorage so a reload resends them with the same id.
 *
 * Slot states: "saving", "retrying", "saved", "error" (refused by the server).
 */
export class Outbox {
  constructor({ storageKey, onChange, onSaved, onRejected }) {
    this.storageKey = storageKey;
    this.onChange = onChange || (() => {});
    this.onSaved = onSaved || (() => {});
    this.onRejected = onRejected || (() => {});
    this.slots = new Map();
    this.waiters = [];
    // Until when the server asked us to wait (Retry-After of a 429): its limit is the participant's,
    // so every slot waits, new answers included.
    this.pausedUntil = 0;
    window.addEventListener("online", () => this.retryNow());
  }

  /** Queue a rating; a value equal to the last one queued is not resent. */
  rate(url, { trial, stimulus, score }) {
    const key = `rate:${trial}:${stimulus}`;
    const slot = this.slots.get(key);
    const latest = slot && (slot.queued || slot.current);
    if (latest && latest.body.score === score && slot.state !== "error") return;
    this.submit(key, { url, body: { trial, stimulus, score, request_id: uuid4() } });
  }

  /** Queue a flag; returns the slot key so the caller can follow its state. */
  flag(url, { trial, stimulus, start, end, category, note }) {
    const requestId = uuid4();
    const key = `flag:${trial}:${requestId}`;
    this.submit(key, { url, body: { trial, stimulus, start, end, category, note, request_id: requestId } });
    return key;
  }

  submit(key, item) {
    let slot = this.slots.get(key);
    if (!slot) {
      slot = { key, trial: item.body.trial, current: null, queued: null, inflight: false, state: "saving", attempt: 0, timer: null, message: "" };
      this.slots.set(key, slot);
    }
    if (slot.inflight) {
      slot.queued = item;
    } else {
      clearTimeout(slot.timer);
      slot.timer = null;
      slot.current = item;
      slot.attempt = 0;
      this.sendWhenAllowed(slot);
    }
    this.persist();
    this.changed();
  }

  /** Send now, or once the server's Retry-After has passed. */
  sendWhenAllowed(slot) {
    const wait = this.pausedUntil - Date.now();
    if (wait <= 0) {
      this.send(slot);
      return;
    }
    slot.state = "retrying";
    slot.retryAt = this.pausedUntil;
    slot.timer = setTimeout(() => this.send(slot), wait);
  }

  async send(slot) {
    slot.inflight = true;
    slot.timer = null;
    slot.state = slot.attempt ? "retrying" : "saving";
    slot.retryAt = null;
    this.changed();
    const item = slot.current;
    try {
      const response = await postJSON(item.url, item.body);
      slot.state = "saved";
      slot.message = "";
      slot.inflight = false;
      this.onSaved(slot.key, item.body, response || {}, Boolean(slot.queued));
    } catch (err) {
      slot.inflight = false;
      if (err.retryAfter) {
        // Never sooner than the server's Retry-After (a rate limit): earlier would be refused again.
        this.pausedUntil = Math.max(this.pausedUntil, Date.now() + err.retryAfter * 1000 * (1 + Math.random() * 0.1));
      }
      if (err instanceof RejectedError) {
        slot.state = "error";
        slot.message = err.message;
        this.onRejected(slot.key, item.body, err);
      } else if (!slot.queued) {
        slot.attempt += 1;
        const backoff = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** (slot.attempt - 1)) * (0.85 + Math.random() * 0.3);
        const delay = Math.max(backoff, this.pausedUntil - Date.now());
        slot.state = "retrying";
        slot.message = err.message;
        slot.retryAt = Date.now() + delay;
        slot.timer = setTimeout(() => this.send(slot), delay);
      }
    }
    if (!slot.inflight && !slot.timer && slot.queued) {
      slot.current = slot.queued;
      slot.queued = null;
      slot.attempt = 0;
      this.sendWhenAllowed(slot);
      if (slot.inflight) return; // send() reports when it is done
    }
    this.persist();
    this.changed();
  }

  retryNow() {
    for (const slot of this.slots.values()) {
      if (slot.timer) {
        clearTimeout(slot.timer);
        this.send(slot);
      }
    }
  }

  state(key) {
    const slot = this.slots.get(key);
    return slot ? { state: slot.state, message: slot.message, retryAt: slot.retryAt } : null;
  }

  /** Aggregate over the slots of one trial (or all slots when `trial` is null). */
  summary(trial = null) {
    const out = { saving: 0, retrying: 0, error: 0, saved: 0, message: "", retryAt: null,
                  limited: this.pausedUntil > Date.now() };
    for (const slot of this.slots.values()) {
      if (trial !== null && slot.trial !== trial) continue;
      const state = slot.inflight && slot.state !== "retrying" ? "saving" : slot.state;
      out[state] += 1;
      if (state === "error" || (state === "retrying" && !out.message)) out.message = slot.message;
      if (slot.retryAt && (!out.retryAt || slot.retryAt < out.retryAt)) out.retryAt = slot.retryAt;
    }
    return out;
  }

  /** Unsaved work (in flight, queued or waiting to retry) exists. */
  busy(trial = null) {
    const s = this.summary(trial);
    return s.saving + s.retrying > 0;
  }

  /** Resolves once no slot of `trial` (or of any trial) is saving or retrying. */
  settled(trial = null) {
    if (!this.busy(trial)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ trial, resolve }));
  }

  changed() {
    this.waiters = this.waiters.filter((w) => {
      if (this.busy(w.trial)) return true;
      w.resolve();
      return false;
    });
    this.onChange();
  }

  persist() {
    const pending = [];
    for (const slot of this.slots.values()) {
      if (slot.queued) pending.push({ key: slot.key, ...slot.queued });
      else if (slot.state !== "saved" && slot.state !== "error" && slot.current) pending.push({ key: slot.key, ...slot.current });
    }
    try {
      if (pending.length) localStorage.setItem(this.storageKey, JSON.stringify(pending));
      else localStorage.removeItem(this.storageKey);
    } catch {
      // Storage can be full or disabled (private mode); the in-memory queue still retries.
    }
  }

  /** Unsent items from an earlier page load, to merge into state before resending. */
  restorable() {
    try {
      const items = JSON.parse(localStorage.getItem(this.storageKey) || "[]");
      return Array.isArray(items) ? items.filter((i) => i && i.key && i.url && i.body) : [];
    } catch {
      return [];
    }
  }

  /** Resend items from restorable() with their original request_id. */
  resend(items) {
    for (const item of items) this.submit(item.key, { url: item.url, body: item.body });
  }
}

/** Playback events per trial, sent in batches; never blocks the listener. */
export class Telemetry {
  constructor(url) {
    this.url = url;
    this.trial = null;
    this.shownAt = 0;
    this.events = new Map();
    this.sampleRate = null;
  }

  startTrial(trialId) {
    this.trial = trialId;
    this.shownAt = performance.now();
    if (!this.events.has(trialId)) this.events.set(trialId, []);
  }

  log(type, stimulus, pos) {
    if (!this.url || this.trial === null) return;
    const list = this.events.get(this.trial);
    list.push({
      t: Math.round(performance.now() - this.shownAt),
      type,
      stimulus: stimulus ?? null,
      pos: Math.round((pos || 0) * 1000) / 1000,
    });
    if (list.length >= TELEMETRY_CHUNK * 4) this.flush();
  }

  /** Send everything buffered; keepalive lets the request outlive the page. */
  flush({ keepalive = false } = {}) {
    if (!this.url) return;
    for (const [trial, list] of this.events) {
      while (list.length) {
        const events = list.splice(0, TELEMETRY_CHUNK);
        postJSON(this.url, { trial, events, device_sample_rate: this.sampleRate }, { keepalive }).catch(() => {});
      }
    }
  }

  /**
   * Send one trial's buffered events and wait until the server has them (the server checks them
   * when the trial is completed). On failure the unsent events are put back and the error thrown.
   */
  async flushTrial(trial) {
    if (!this.url) return;
    const list = this.events.get(trial);
    while (list && list.length) {
      const events = list.splice(0, TELEMETRY_CHUNK);
      try {
        await postJSON(this.url, { trial, events, device_sample_rate: this.sampleRate });
      } catch (err) {
        list.unshift(...events);
        throw err;
      }
    }
  }
}
