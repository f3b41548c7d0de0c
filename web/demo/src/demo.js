// The gateway's demo page: one conversation through Pipecat's JS SDK, what the bot remembers about this
// browser's user, and a "forget me" button. Served at /demo/ in demo mode (gateway/web/demo.py).
import { PipecatClient } from "@pipecat-ai/client-js";
import { WavMediaManager, WebSocketTransport } from "@pipecat-ai/websocket-transport";

// Waits before each attempt to get a dropped connection back (the same {wsUrl, token}).
const RECONNECT_DELAYS_MS = [300, 1000, 2000];
const CONNECT_TIMEOUT_MS = 15000;
// Close codes the gateway sends on purpose (docs/architecture.md): connecting again would not help.
// A dropped network shows as 1006 (no close frame), which is worth another try.
const DELIBERATE_CLOSES = new Set([1000, 1001, 1007, 1008, 1009, 1011, 4001, 4003, 4008, 4029]);

const $ = (id) => document.getElementById(id);

let session = null; // {wsUrl, token}: the only thing a reconnect has
let leaving = false; // the user pressed Disconnect
let reconnecting = false;
let lastCloseCode = null;
let botLine = null;
let attemptFailed = null; // ends the connect() in flight when its socket closes before bot-ready

// The default DailyMediaManager loads a script from a CDN and hangs offline; WavMediaManager needs none.
const client = new PipecatClient({
  transport: new WebSocketTransport({ mediaManager: new WavMediaManager() }),
  enableMic: false,
  enableCam: false,
  callbacks: {
    onBotReady: () => setStatus("ready", "connected"),
    onBotLlmStarted: () => {
      botLine = addLine("bot", "");
    },
    onBotLlmText: (data) => {
      botLine ??= addLine("bot", "");
      botLine.textContent += data.text;
      scrollDown();
    },
    onBotLlmStopped: () => {
      if (botLine) {
        botLine.dataset.complete = "true";
      }
      botLine = null;
      refreshMemories();
    },
    onError: (message) => {
      const text = String(message?.data?.message ?? message?.data?.error ?? "");
      const code = /Code: (\d+)/.exec(text);
      if (code) {
        lastCloseCode = Number(code[1]);
      } else if (text) {
        showError(text);
      }
    },
    onDisconnected: () => {
      if (attemptFailed) {
        attemptFailed();
      } else {
        dropped();
      }
    },
  },
});

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
  const live = state === "ready";
  $("connect").disabled = state !== "disconnected";
  $("disconnect").disabled = state === "disconnected";
  $("message").disabled = !live;
  $("send").disabled = !live;
  $("message").placeholder = live ? "Type a message…" : "Connect, then type a message…";
}

function showError(text) {
  const error = $("error");
  error.textContent = text;
  error.hidden = !text;
}

function addLine(who, text) {
  const line = document.createElement("li");
  line.className = who;
  line.textContent = text;
  $("transcript").append(line);
  scrollDown();
  return line;
}

function scrollDown() {
  const transcript = $("transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// client.connect() resolves on bot-ready; if the socket closes first (a refused token, say), it does
// not settle by itself. This settles on bot-ready, on that close, or after CONNECT_TIMEOUT_MS.
function join() {
  let timer;
  return new Promise((resolve, reject) => {
    attemptFailed = () => reject(new Error(`closed (${lastCloseCode ?? "no code"})`));
    timer = setTimeout(() => reject(new Error("timed out")), CONNECT_TIMEOUT_MS);
    client.connect(session).then(resolve, reject);
  }).finally(() => {
    attemptFailed = null;
    clearTimeout(timer);
  });
}

async function errorOf(response) {
  try {
    return (await response.json()).error ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function connect() {
  leaving = false;
  lastCloseCode = null;
  showError("");
  setStatus("connecting", "connecting…");
  let response;
  try {
    // The gateway holds the demo tenant's key and names this browser's user by its cookie.
    response = await fetch("/demo/start", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ transport: "websocket" }),
    });
  } catch {
    showError("The gateway cannot be reached.");
    setStatus("disconnected", "disconnected");
    return;
  }
  if (!response.ok) {
    showError(await errorOf(response));
    setStatus("disconnected", "disconnected");
    return;
  }
  const { wsUrl, token } = await response.json();
  session = { wsUrl, token };
  try {
    await join();
  } catch (error) {
    session = null;
    showError(`Could not connect: ${error.message}.`);
    setStatus("disconnected", "disconnected");
    await client.disconnect();
  }
}

// The socket went away. Unless the user or the gateway meant it, connect again with the same
// {wsUrl, token}: the gateway resumes the session if it is still there (its context, no second greeting).
async function dropped() {
  if (reconnecting) {
    return;
  }
  botLine = null;
  const code = lastCloseCode;
  lastCloseCode = null;
  if (leaving || session === null || DELIBERATE_CLOSES.has(code)) {
    session = null;
    setStatus("disconnected", "disconnected");
    return;
  }
  reconnecting = true;
  try {
    for (const delay of RECONNECT_DELAYS_MS) {
      setStatus("reconnecting", "connection lost, reconnecting…");
      await sleep(delay);
      if (leaving) {
        break;
      }
      try {
        await join();
        return;
      } catch {
        if (DELIBERATE_CLOSES.has(lastCloseCode)) {
          break;
        }
      }
    }
    session = null;
    await client.disconnect();
    showError("The connection was lost. Connect again to start a new conversation.");
    setStatus("disconnected", "disconnected");
  } finally {
    reconnecting = false;
  }
}

async function disconnect() {
  leaving = true;
  session = null;
  await client.disconnect();
  setStatus("disconnected", "disconnected");
}

async function send(event) {
  event.preventDefault();
  const input = $("message");
  const text = input.value.trim();
  if (!text || client.state !== "ready") {
    return;
  }
  input.value = "";
  addLine("user", text);
  await client.sendText(text, { run_immediately: true, audio_response: false });
}

async function refreshMemories() {
  let response;
  try {
    response = await fetch("/demo/memories", { cache: "no-store" });
  } catch {
    return;
  }
  if (!response.ok) {
    $("forget-result").textContent = await errorOf(response);
    return;
  }
  const { results } = await response.json();
  const list = $("memories");
  list.replaceChildren(
    ...results.map((memory) => {
      const item = document.createElement("li");
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = memory.role === "assistant" ? "the bot said: " : "you said: ";
      item.append(role, memory.memory ?? "");
      return item;
    }),
  );
  $("memories-empty").hidden = results.length > 0;
}

async function forget() {
  const response = await fetch("/demo/memories", { method: "DELETE" });
  if (!response.ok) {
    $("forget-result").textContent = await errorOf(response);
    return;
  }
  const { deleted } = await response.json();
  $("forget-result").textContent = `Forgotten: ${deleted} ${deleted === 1 ? "memory" : "memories"}.`;
  await refreshMemories();
}

$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", disconnect);
$("composer").addEventListener("submit", send);
$("refresh").addEventListener("click", refreshMemories);
$("forget").addEventListener("click", forget);
setStatus("disconnected", "disconnected");
refreshMemories();
