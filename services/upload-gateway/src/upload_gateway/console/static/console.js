// The RawDrive upload console: sign in with a token, drop files or folders into a workspace's
// library (Uppy Dashboard, tus), and watch the workspace's assets arrive on the live feed.
const { Uppy, Dashboard, Tus } = window.RawDriveUppy;

const TOKEN_KEY = "rawdrive.console.token"; // sessionStorage: gone when the tab closes
const LISTED = 100; // the newest assets listed when a workspace opens; the feed adds the rest
const FEED_RETRY_MAX_MS = 30000;
const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  workspace: null,
  cards: new Map(), // asset_id -> card
  uploads: new Map(), // Uppy file id -> the session the gateway opened for it
  uppy: null,
  feed: null, // AbortController of the running feed
};

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// -- the API --------------------------------------------------------------------------------------

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data?.detail || `${response.status} ${response.statusText}`);
  return { status: response.status, data };
}

const wsPath = (suffix = "") => `/v1/workspaces/${encodeURIComponent(state.workspace)}${suffix}`;

// How a dropped file becomes an asset: open a session (its upload_url is a tus upload from the
// start), let Uppy's tus send the bytes there, then commit. A one-request tus creation would change
// only openUpload (and give Tus an `endpoint` instead of each file's `uploadUrl`).
async function openUpload(file, library) {
  const { data } = await api(wsPath("/uploads"), {
    method: "POST",
    body: {
      file_name: file.name,
      // Browsers know no type for camera RAW files; the gateway accepts octet-stream for those.
      mime_type: file.type || "application/octet-stream",
      size_bytes: file.size,
      library_id: library,
      resumable_protocol: "tus",
    },
  });
  return { uploadId: data.upload_id, assetId: data.asset_id, uploadUrl: data.upload_url, headers: data.headers };
}

async function commitUpload(session) {
  const { data } = await api(wsPath(`/uploads/${session.uploadId}/commit`), { method: "POST", body: {} });
  return data; // {asset_id, status}: "processing" once verified, else still verifying (202)
}

// -- the grid -------------------------------------------------------------------------------------

function cardFromAsset(asset) {
  return {
    asset_id: asset.asset_id,
    file_name: asset.file_name,
    kind: asset.kind,
    thumb_url: asset.variants?.thumb?.url ?? null,
    // A deleted asset's listing keeps no failure: it was available if it was processed.
    status: asset.status !== "deleted" ? asset.status : asset.kind ? "available" : "processing",
    failure: asset.failure ?? null,
    deleted: asset.status === "deleted",
  };
}

function applyFeedItem(item) {
  const card = state.cards.get(item.asset_id) ?? { asset_id: item.asset_id, file_name: null, deleted: false };
  switch (item.change) {
    case "created":
      Object.assign(card, { file_name: item.file_name, kind: item.kind, thumb_url: item.thumb_url ?? null, status: "available", failure: null });
      break;
    case "failed":
      Object.assign(card, { status: "failed", failure: { reason: item.reason, detail: item.detail } });
      break;
    case "deleted":
      card.deleted = true;
      break;
    case "restored":
      card.deleted = false;
      break;
    case "purged":
      state.cards.delete(item.asset_id);
      $("assets").querySelector(`[data-asset-id="${CSS.escape(item.asset_id)}"]`)?.remove();
      updateCount();
      return;
  }
  putCard(card);
}

function putCard(card) {
  const existing = state.cards.get(card.asset_id);
  state.cards.set(card.asset_id, { ...existing, ...card });
  renderCard(state.cards.get(card.asset_id));
  updateCount();
}

function renderCard(card) {
  const grid = $("assets");
  let li = grid.querySelector(`[data-asset-id="${CSS.escape(card.asset_id)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.className = "card";
    li.dataset.assetId = card.asset_id;
    grid.prepend(li); // newest first, as the listing
  }
  li.dataset.status = card.status;
  li.classList.toggle("deleted", card.deleted);
  li.replaceChildren();

  const picture = document.createElement("div");
  picture.className = "thumb";
  if (card.thumb_url) {
    const img = document.createElement("img");
    img.src = card.thumb_url;
    img.alt = card.file_name ?? card.asset_id;
    picture.append(img);
  } else {
    picture.textContent = card.status === "failed" ? "!" : card.status === "available" ? card.kind ?? "" : "…";
  }
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = card.file_name ?? card.asset_id;
  name.title = name.textContent;
  const status = document.createElement("div");
  status.className = "status";
  if (card.deleted) status.textContent = "deleted: restore it to keep it";
  else if (card.status === "failed") {
    status.textContent = `failed: ${card.failure?.reason ?? "error"}${card.failure?.detail ? ` — ${card.failure.detail}` : ""}`;
  } else if (card.status === "available") status.textContent = card.kind ?? "available";
  else status.textContent = card.status === "verifying" ? "verifying…" : "processing…";

  const button = document.createElement("button");
  button.type = "button";
  button.className = card.deleted ? "restore" : "delete";
  button.textContent = card.deleted ? "Restore" : "Delete";
  button.disabled = card.status === "verifying";
  button.addEventListener("click", () => (card.deleted ? restoreAsset : deleteAsset)(card.asset_id, button));
  li.append(picture, name, status, button);
}

function updateCount() {
  const cards = [...state.cards.values()];
  const deleted = cards.filter((c) => c.deleted).length;
  $("asset-count").textContent = `${cards.length - deleted} shown` + (deleted ? `, ${deleted} deleted` : "");
}

async function deleteAsset(assetId, button) {
  button.disabled = true;
  try {
    await api(wsPath(`/assets/${assetId}`), { method: "DELETE" });
    putCard({ asset_id: assetId, deleted: true }); // the feed brings asset.deleted as well
    $("grid-error").textContent = "";
  } catch (error) {
    $("grid-error").textContent = `Delete failed: ${error.message}`;
    button.disabled = false;
  }
}

async function restoreAsset(assetId, button) {
  button.disabled = true;
  try {
    const { data } = await api(wsPath(`/assets/${assetId}/restore`), { method: "POST" });
    putCard(cardFromAsset(data));
    $("grid-error").textContent = "";
  } catch (error) {
    $("grid-error").textContent = `Restore failed: ${error.message}`;
    button.disabled = false;
  }
}

async function loadListing() {
  const listed = [];
  for (const status of ["", "deleted"]) {
    const query = new URLSearchParams({ limit: String(LISTED), ...(status ? { status } : {}) });
    const { data } = await api(wsPath(`/assets?${query}`));
    listed.push(...data.items);
  }
  listed.sort((a, b) => (a.created_at < b.created_at ? -1 : 1)); // oldest first: each is prepended
  for (const asset of listed) {
    // The feed was open before the listing was asked for: what it said is newer.
    if (!state.cards.has(asset.asset_id)) putCard(cardFromAsset(asset));
  }
}

// -- the live feed (server-sent events read with fetch, so the token goes in a header) --------------

async function* sseMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") {
        if (message.data.length) yield { id: message.id, event: message.event, data: message.data.join("\n") };
        message = { id: null, event: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(text);
        else if (field === "id") message.id = text;
        else if (field === "event") message.event = text;
      }
    }
  }
}

function setFeedState(feedState, text) {
  const badge = $("feed-state");
  badge.dataset.state = feedState;
  badge.textContent = text;
}

async function follow(workspace, signal) {
  let lastId = null;
  let delay = 1000;
  while (!signal.aborted) {
    const attempt = new AbortController(); // ends this connection whatever happens to it
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId; // resume right after the last event seen
      const url = `/console/workspaces/${encodeURIComponent(workspace)}/events`;
      const response = await fetch(url, { headers, signal: AbortSignal.any([signal, attempt.signal]), cache: "no-store" });
      if (!response.ok) {
        const problem = await response.json().catch(() => null);
        throw new ApiError(response.status, problem?.detail || response.statusText);
      }
      setFeedState("live", "live");
      delay = 1000;
      const messages = sseMessages(response.body);
      if (lastId === null) {
        const first = messages.next(); // the feed is open: nothing published from now on is missed
        await loadListing();
        const opened = await first;
        if (!opened.done) handleMessage(opened.value, (id) => (lastId = id));
      }
      for await (const message of messages) handleMessage(message, (id) => (lastId = id));
    } catch (error) {
      if (signal.aborted) return;
      if ([401, 403, 404].includes(error.status)) {
        setFeedState("error", "feed refused");
        $("grid-error").textContent = `Live feed refused: ${error.message}`;
        return;
      }
    } finally {
      attempt.abort();
    }
    if (signal.aborted) return;
    setFeedState("retrying", "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, FEED_RETRY_MAX_MS);
  }
}

function handleMessage(message, remember) {
  if (message.id) remember(message.id);
  if (message.event === "asset") applyFeedItem(JSON.parse(message.data));
}

// -- the uploader ---------------------------------------------------------------------------------

function createUploader() {
  const uppy = new Uppy({ autoProceed: true, id: "rawdrive-console" });
  uppy.use(Dashboard, {
    inline: true,
    target: "#uploader",
    width: "100%",
    height: 340,
    showProgressDetails: true,
    fileManagerSelectionType: "both", // files, or whole folders
    proudlyDisplayPoweredByUppy: false,
    note: "Photos, videos and PDFs; drop files or folders. Pause and resume each file.",
  });
  uppy.use(Tus, {
    chunkSize: 5 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000],
    limit: 4,
    // Each file's upload URL comes from its own session, never from an earlier page's storage.
    storeFingerprintForResuming: false,
  });
  uppy.addPreProcessor(async (fileIDs) => {
    const library = $("library-id").value.trim();
    await Promise.all(fileIDs.map((id) => openFor(uppy, id, library)));
  });
  uppy.on("upload-success", (file) => commitFor(file));
  uppy.on("file-removed", (file) => state.uploads.delete(file.id));
  return uppy;
}

async function openFor(uppy, fileId, library) {
  const file = uppy.getFile(fileId);
  if (!file || state.uploads.has(fileId)) return; // a retry: its session (and offset) are kept
  uppy.emit("preprocess-progress", file, { mode: "indeterminate", message: "Opening the upload…" });
  try {
    const session = await openUpload(file, library);
    state.uploads.set(fileId, session);
    uppy.setFileState(fileId, { tus: { ...file.tus, uploadUrl: session.uploadUrl, headers: session.headers } });
  } catch (error) {
    // Refused (type, size, token): this file fails with the gateway's reason, the others go on.
    uppy.emit("upload-error", uppy.getFile(fileId), new Error(error.message));
  } finally {
    uppy.emit("preprocess-complete", uppy.getFile(fileId));
  }
}

async function commitFor(file) {
  const session = state.uploads.get(file.id);
  if (!session) return;
  putCard({ asset_id: session.assetId, file_name: file.name, status: "verifying", deleted: false, thumb_url: null });
  try {
    const outcome = await commitUpload(session);
    const current = state.cards.get(session.assetId);
    if (current.status === "verifying") putCard({ asset_id: session.assetId, status: outcome.status === "processing" ? "processing" : "verifying" });
  } catch (error) {
    putCard({ asset_id: session.assetId, status: "failed", failure: { reason: "rejected", detail: error.message } });
  }
}

// -- signing in -----------------------------------------------------------------------------------

function workspacesOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
    return Object.keys(claims.workspaces ?? {});
  } catch {
    return [];
  }
}

async function signIn(token) {
  const workspaces = workspacesOf(token);
  if (!workspaces.length) throw new Error("this is not a user token naming a workspace (its `workspaces` claim)");
  state.token = token;
  state.workspace = workspaces[0];
  await api(wsPath("/assets?limit=1")); // the gateway checks the token: 401 says what to do
  sessionStorage.setItem(TOKEN_KEY, token);
  const select = $("workspace-id");
  select.replaceChildren(...workspaces.map((ws) => new Option(ws, ws)));
  $("sign-in").hidden = true;
  $("workspace").hidden = false;
  $("sign-out").hidden = false;
  state.uppy = createUploader();
  openWorkspace(workspaces[0]);
}

function openWorkspace(workspace) {
  state.feed?.abort();
  state.workspace = workspace;
  state.cards.clear();
  $("assets").replaceChildren();
  $("grid-error").textContent = "";
  updateCount();
  state.feed = new AbortController();
  follow(workspace, state.feed.signal);
}

function signOut() {
  state.feed?.abort();
  state.uppy?.destroy();
  state.uppy = null;
  state.token = null;
  state.uploads.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  setFeedState("off", "feed off");
  $("workspace").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
}

async function prefill() {
  const stored = sessionStorage.getItem(TOKEN_KEY);
  if (stored) {
    $("token").value = stored;
    return;
  }
  // Only the dev stack serves a token (RAWDRIVE_CONSOLE_DEV_TOKEN) and says where in this meta tag.
  const devToken = document.querySelector('meta[name="rawdrive-dev-token"]')?.content;
  if (!devToken) return;
  const response = await fetch(devToken, { cache: "no-store" }).catch(() => null);
  if (response?.ok) {
    const { token, workspace_id } = await response.json();
    $("token").value = token;
    $("token-note").textContent = `Development token from the dev stack (workspace ${workspace_id}, admin).`;
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    await signIn($("token").value.trim());
  } catch (error) {
    state.token = null;
    $("sign-in-error").textContent = error.message;
  }
});
$("sign-out").addEventListener("click", signOut);
$("workspace-id").addEventListener("change", (event) => openWorkspace(event.target.value));
prefill();
