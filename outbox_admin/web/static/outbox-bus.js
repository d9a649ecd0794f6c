/**
 * outbox-bus.js: the browser side of outbox_admin's message bus (the original's `useMessageBus`).
 * A plain ES module, no dependencies, no build step; `message_bus_app` serves it at `<mount>/outbox-bus.js`.
 *
 *   import { subscribe, configureMessageBus } from "/bus/outbox-bus.js";
 *   configureMessageBus({ onResync: () => reloadData() });
 *   const stop = subscribe("PROJECT.*", (payload, event) => console.log(event.type, payload));
 *
 * Decisions:
 * - fetch() and a parser of its own, not EventSource: EventSource hands a named event only to listeners
 *   of that exact name (wildcards would need one per type), and fetch lets the bus decide when to
 *   reconnect (backoff with jitter after a drop, a network error or a 5xx/408/429; never after another
 *   4xx such as 400 or 401: that goes to `onError`, and the bus waits for `configure()`) and what to
 *   resume from. No byte for `idleTimeoutMs` (3 missed heartbeats): the stream is taken for dead.
 * - One connection per bus, asking for the union of the subscribed patterns (`?types=`, or every type
 *   beyond the server's 32); the client filters too. A change of the subscriptions reconnects once per
 *   microtask, resuming from the last event id (`?lastEventId=`: a query parameter needs no CORS
 *   preflight). So the patterns already there miss nothing; a pattern added later may also get its
 *   types' events fed since that id (at most the server's replay window).
 * - The server delivers at least once; the bus drops ids it has seen (the last 1000), so an event
 *   replayed after a reconnect reaches each callback once, in stream order.
 * - `outbox-resync` (the server cannot resume: events may be lost) goes to `onResync`, never to a
 *   subscriber. The last id is kept after it: a later reconnect that cannot resume either asks for a
 *   resync again rather than missing events silently.
 * - Patterns mean what `fnmatch.fnmatchcase` means in Python: `*`, `?`, `[AB]`, `[!AB]`, whole type.
 * - The SSE `retry:` field is parsed but not obeyed: the backoff is the client's.
 */

const RESYNC_EVENT = "outbox-resync";
const MAX_TYPES = 32; // the server's MAX_TYPES
const SEEN_IDS = 1000;
const STABLE_MS = 10000; // a stream open this long (or one that delivered) resets the backoff

/** The anchored RegExp of a glob, with `fnmatch.fnmatchcase`'s meaning. @param {string} pattern */
export function globToRegExp(pattern) {
  let out = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c !== "[") out += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
    else {
      let j = i + 1;
      if (pattern[j] === "!") j++;
      if (pattern[j] === "]") j++;
      const end = pattern.indexOf("]", j);
      if (end < 0) out += "\\[";
      else {
        out += setToRegExp(pattern.slice(i + 1, end));
        i = end;
      }
    }
  }
  return new RegExp(`^(?:${out})$`, "s");
}

/** A set's body (between `[` and `]`) as fnmatch.translate writes it, for JavaScript. */
function setToRegExp(body) {
  const esc = (s) => s.replace(/[\\\]-]/g, "\\$&");
  let stuff;
  if (!body.includes("-")) stuff = body.replace(/[\\\]]/g, "\\$&");
  else {
    const chunks = [];
    let i = 0;
    let k = body[0] === "!" ? 2 : 1;
    for (;;) {
      k = body.indexOf("-", k);
      if (k < 0) break;
      chunks.push(body.slice(i, k));
      i = k + 1;
      k += 3;
    }
    const last = body.slice(i);
    if (last) chunks.push(last);
    else chunks[chunks.length - 1] += "-";
    for (let n = chunks.length - 1; n > 0; n--) {
      if (chunks[n - 1].at(-1) > chunks[n][0]) {
        chunks[n - 1] = chunks[n - 1].slice(0, -1) + chunks[n].slice(1);
        chunks.splice(n, 1);
      }
    }
    stuff = chunks.map(esc).join("-");
  }
  if (!stuff) return "(?!)";
  if (stuff === "!") return ".";
  if (stuff[0] === "!") return `[^${stuff.slice(1)}]`;
  return stuff[0] === "^" || stuff[0] === "[" ? `[\\${stuff}]` : `[${stuff}]`;
}

/**
 * A Server-Sent Events parser (the WHATWG rules): fed text in chunks cut anywhere, it calls
 * `onEvent({ id, hasId, type, data })` per event; comments (`:`, heartbeats) go to `onComment`.
 */
export class SseParser {
  /** @param {(event: {id: string, hasId: boolean, type: string, data: string}) => void} onEvent */
  constructor(onEvent, { lastEventId = "", onComment = () => {} } = {}) {
    Object.assign(this, { onEvent, onComment, lastEventId, retry: null });
    this._rest = "";
    this._afterCR = false;
    this._first = true;
    this._reset();
  }

  /** Parse one more chunk of the stream. @param {string} chunk */
  push(chunk) {
    if (this._first && chunk) {
      this._first = false;
      if (chunk[0] === "\uFEFF") chunk = chunk.slice(1);
    }
    if (this._afterCR && chunk) {
      if (chunk[0] === "\n") chunk = chunk.slice(1); // a CRLF cut between two chunks
      this._afterCR = false;
    }
    const text = this._rest + chunk;
    const breaks = /\r\n|\r|\n/g;
    let start = 0;
    for (let m = breaks.exec(text); m; m = breaks.exec(text)) {
      if (m[0] === "\r" && m.index === text.length - 1) this._afterCR = true;
      this._line(text.slice(start, m.index));
      start = breaks.lastIndex;
    }
    this._rest = text.slice(start);
  }

  _reset() {
    this._data = [];
    this._type = "";
    this._hasId = false;
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line[0] === ":") return this.onComment(line.slice(1));
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this._data.push(value);
    else if (field === "event") this._type = value;
    else if (field === "id" && !value.includes("\0")) {
      this.lastEventId = value;
      this._hasId = true;
    } else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  _dispatch() {
    const { _data: data, _type: type, _hasId: hasId } = this;
    this._reset();
    if (data.length === 0) return; // no data: not an event (its id, if any, is still kept)
    this.onEvent({ id: this.lastEventId, hasId, type: type || "message", data: data.join("\n") });
  }
}

/**
 * One bus: its subscribers and its one connection. `createMessageBus(options)` for a bus of
 * your own; the module's functions use a default bus made on first use.
 */
class MessageBus {
  constructor(options = {}) {
    this._options = { withCredentials: false, params: {}, headers: {}, idleTimeoutMs: 45000 };
    this._options.retry = { initialMs: 500, maxMs: 30000 };
    Object.assign(this, { _subs: [], _seen: new Set(), _queued: false, _gen: 0, _attempt: 0, _key: null });
    /** "idle" (no subscriber), "connecting" (or waiting to retry), "connected", "stopped" (refused). */
    this.state = "idle";
    /** The id of the last event received: where a new stream resumes. */
    this.lastEventId = null;
    /** How many streams this bus has requested, for tests and diagnostics. */
    this.connects = 0;
    this.configure(options);
  }

  /**
   * Change options: `baseUrl` (where message_bus_app is mounted; default: this script's
   * directory), `withCredentials` (send cookies cross-origin), `params` / `headers` (extra
   * query parameters / request headers of the stream, e.g. a token), `onResync(info)`,
   * `onError(error, info)`, `React`, `retry: { initialMs, maxMs }`, `idleTimeoutMs` (no byte
   * for this long, heartbeats included: reconnect; 0 never). A refused ("stopped") bus tries again
   * (call `configure({})` once the user signed in again).
   */
  configure(options = {}) {
    const { retry, ...rest } = options;
    Object.assign(this._options, rest);
    if (retry) this._options.retry = { ...this._options.retry, ...retry };
    if (this.state !== "idle") {
      if (this.state === "stopped") {
        this.state = "connecting";
        this._attempt = 0;
      }
      this._key = null;
      this._schedule();
    }
    return this;
  }

  /** Call `callback(payload, event)` for each event whose type matches `pattern`; returns the unsubscribe. */
  subscribe(pattern, callback) {
    if (typeof pattern !== "string" || !pattern.trim()) throw new TypeError("subscribe: pattern must be non-empty text");
    if (typeof callback !== "function") throw new TypeError("subscribe: callback must be a function");
    const entry = { pattern: pattern.trim(), regex: globToRegExp(pattern.trim()), callback };
    this._subs = [...this._subs, entry];
    this._schedule();
    return () => {
      const before = this._subs.length;
      this._subs = this._subs.filter((s) => s !== entry);
      if (this._subs.length !== before) this._schedule();
    };
  }

  /** Deliver `payload` to this page's matching subscribers, without the network; how many were called. */
  emit(type, payload, event = { type, data: payload, local: true }) {
    let called = 0;
    for (const { pattern, regex, callback } of this._subs) {
      if (!regex.test(type)) continue;
      called++;
      try {
        callback(payload, event);
      } catch (error) {
        this._report(error, { kind: "callback", type, pattern });
      }
    }
    return called;
  }

  /** React hook: subscribe for the component's lifetime, always calling its latest `callback`. */
  useMessageBus(pattern, callback) {
    const React = this._options.React || globalThis.React;
    if (!React || typeof React.useEffect !== "function") {
      throw new Error("useMessageBus needs React: call configureMessageBus({ React }) or load React as a global");
    }
    const latest = React.useRef(callback);
    React.useEffect(() => void (latest.current = callback));
    React.useEffect(() => this.subscribe(pattern, (payload, event) => latest.current(payload, event)), [pattern]);
  }

  /** Close the stream and forget every subscriber. */
  close() {
    this._subs = [];
    this._stop("idle");
  }

  /** Reconnect once per microtask, however many subscriptions changed in it. */
  _schedule() {
    if (this._queued) return;
    this._queued = true;
    queueMicrotask(() => {
      this._queued = false;
      this._sync();
    });
  }

  _sync() {
    if (this.state === "stopped") return;
    if (this._subs.length === 0) return this._stop("idle");
    const key = this._types();
    if (key === this._key && this.state !== "idle") return;
    this._key = key;
    this._open();
  }

  /** The `types` the stream asks for: the subscribed patterns, or `*` for all of them. */
  _types() {
    const patterns = [...new Set(this._subs.map((s) => s.pattern))].sort();
    if (patterns.length > MAX_TYPES || patterns.some((p) => /^\*+$/.test(p))) return "*";
    return patterns.join(",");
  }

  _stop(state) {
    this._gen++;
    this._controller?.abort();
    this._controller = null;
    clearTimeout(this._timer);
    this.state = state;
    if (state === "idle") this._key = null;
  }

  _open() {
    this._stop("connecting");
    const gen = this._gen;
    const controller = new AbortController();
    this._controller = controller;
    this._read(controller).then(
      (outcome) => this._after(gen, outcome),
      (error) => this._after(gen, { retry: true, error }),
    );
  }

  _url() {
    const { baseUrl, params } = this._options;
    const url = new URL("stream", new URL(baseUrl ?? new URL(".", import.meta.url), location.href));
    for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
    if (this._key !== "*") url.searchParams.set("types", this._key);
    if (this.lastEventId) url.searchParams.set("lastEventId", this.lastEventId);
    return url;
  }

  /** One stream, until it ends; what to do next: `{ retry, delivered }` or `{ fatal }`. */
  async _read(controller) {
    const { withCredentials, headers, idleTimeoutMs } = this._options;
    this.connects++;
    const response = await fetch(this._url(), {
      headers: { Accept: "text/event-stream", ...headers },
      credentials: withCredentials ? "include" : "same-origin",
      cache: "no-store",
      signal: controller.signal,
    });
    const status = response.status;
    if (!response.ok || !response.body) {
      const text = (await response.text().catch(() => "")).trim();
      const error = Object.assign(new Error(`outbox-bus: the stream answered ${status}: ${text}`), { status });
      const fatal = status >= 400 && status < 500 && status !== 408 && status !== 429;
      return fatal ? { fatal: error } : { retry: true, error };
    }
    if (controller.signal.aborted) return { aborted: true };
    this.state = "connected";
    const opened = Date.now();
    let delivered = false;
    const parser = new SseParser((event) => {
      delivered = this._receive(event) || delivered;
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let idle = false;
    let watchdog;
    const wake = () => {
      clearTimeout(watchdog);
      if (idleTimeoutMs > 0) watchdog = setTimeout(() => ((idle = true), controller.abort()), idleTimeoutMs);
    };
    try {
      for (;;) {
        wake();
        const { done, value } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch (error) {
      if (!idle) throw error;
    } finally {
      clearTimeout(watchdog);
    }
    return { retry: true, delivered: delivered || Date.now() - opened >= STABLE_MS };
  }

  _after(gen, outcome) {
    if (gen !== this._gen || outcome.aborted) return; // closed, or replaced by a newer stream
    if (outcome.fatal) {
      this._stop("stopped");
      return this._report(outcome.fatal, { kind: "refused", status: outcome.fatal.status, fatal: true });
    }
    if (outcome.delivered) this._attempt = 0;
    const { initialMs, maxMs } = this._options.retry;
    const ceiling = Math.min(maxMs, initialMs * 2 ** this._attempt++);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.state = "connecting";
    this._timer = setTimeout(() => gen === this._gen && this._open(), delay);
  }

  /** One parsed SSE event; true if it was a new event of the bus. */
  _receive({ id, hasId, type, data }) {
    if (type === RESYNC_EVENT) {
      let info = {};
      try {
        info = JSON.parse(data);
      } catch {}
      const { onResync } = this._options;
      if (!onResync) console.warn("outbox-bus: cannot resume, events may have been missed; reload your data", info);
      try {
        onResync?.(info);
      } catch (error) {
        this._report(error, { kind: "resync" });
      }
      return false;
    }
    if (hasId) {
      this.lastEventId = id || null;
      if (id && this._seen.has(id)) return false;
      if (id) this._seen.add(id);
      if (this._seen.size > SEEN_IDS) this._seen.delete(this._seen.values().next().value);
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch (error) {
      this._report(error, { kind: "data", type, id });
      return false;
    }
    this.emit(type === "message" ? String(event?.type) : type, event?.data, event);
    return true;
  }

  _report(error, info) {
    const { onError } = this._options;
    if (!onError) return console.error("outbox-bus:", error, info);
    try {
      onError(error, info);
    } catch (again) {
      console.error("outbox-bus: onError failed:", again, "while reporting", error);
    }
  }
}

let defaultBus = null;

/** The page's default bus (made on first use): its `state`, `lastEventId`, `connects`. */
export const getMessageBus = () => (defaultBus ??= new MessageBus());
/** A separate bus with its own connection (another app, another mount). */
export const createMessageBus = (options = {}) => new MessageBus(options);
/** Configure the default bus (see MessageBus.configure). */
export const configureMessageBus = (options) => getMessageBus().configure(options);
/** `callback(payload, event)` for each event of the default bus whose type matches `pattern`; returns the unsubscribe. */
export const subscribe = (pattern, callback) => getMessageBus().subscribe(pattern, callback);
/** React hook on the default bus: `useMessageBus("PROJECT.*", (payload, event) => ...)`. */
export const useMessageBus = (pattern, callback) => getMessageBus().useMessageBus(pattern, callback);
/** Deliver an event to this page's subscribers without the network (tests, optimistic UI), as in the original. */
export const emitMessageBusEvent = (type, payload) => getMessageBus().emit(type, payload);
