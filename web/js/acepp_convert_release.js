// ACE++ (this pack): convert a workflow built on the released ACE++ nodes, in place.
//
// Opening a graph with the released nodes (ACEPlusLoraProcessor, ACEPlusLoraConditioning,
// ACEPlusFFTProcessor, ACEPlusConditioning, ACEPlusLoader) shows a bar offering
// "Convert to ACE++ (this pack)"; the same action is a command (Workflow menu, command palette)
// for the open graph. The conversion itself runs on the server (POST /acepp/convert_release),
// in the same Python code as `python -m aceplus_host convert-release`, and the converted graph
// replaces the open one in its tab.
//
// Only the front end's extension API is used (app, api, registerExtension hooks, commands and
// app.extensionManager's toast and workflow), and nothing is logged to the console. A front end
// without that API gets a bar that says which front end the action needs and how to convert on
// the command line instead. Tested on comfyui-frontend-package 1.32.9, 1.49.6 and 1.58.1, with the
// classic canvas and the Vue node renderer.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const RELEASED_TYPES = ["ACEPlusLoraProcessor", "ACEPlusLoraConditioning", "ACEPlusFFTProcessor",
  "ACEPlusConditioning", "ACEPlusLoader"];
const LABEL = "Convert to ACE++ (this pack)";
const COMMAND_ID = "ACEPP.ConvertReleasedWorkflow";
const BAR_ID = "acepp-convert-release-bar";
const OLDEST_TESTED_FRONTEND = "1.32.9";
const CLI = "python -m aceplus_host convert-release IN.json OUT.json";
// Front ends before 1.49 open a "missing nodes" dialog for the released types; the extension API offers
// no way to close it, so there (and only there: their DOM no longer changes) the dialog's own close
// button is pressed once the graph it speaks of is gone. Later front ends open no such dialog.
const MISSING_DIALOG_BEFORE = [1, 49, 0];

function frontendVersion() {
  return window.__COMFYUI_FRONTEND_VERSION__ ?? "unknown";
}

function olderThan(version, limit) {
  const parts = String(version).split(".").map((p) => parseInt(p, 10));
  for (let i = 0; i < limit.length; i++) {
    if ((parts[i] || 0) !== limit[i]) return (parts[i] || 0) < limit[i];
  }
  return false;
}

// The extension API the in-place conversion needs; the names of what this front end lacks.
export function missingApi() {
  const manager = app.extensionManager;
  const needed = {
    "app.loadGraphData": typeof app.loadGraphData === "function",
    "app.extensionManager.toast": typeof manager?.toast?.add === "function",
    "app.extensionManager.workflow": !!manager?.workflow && "activeWorkflow" in manager.workflow,
  };
  return Object.keys(needed).filter((name) => !needed[name]);
}

function hasReleasedNodes(graphData) {
  return (graphData?.nodes ?? []).some((n) => RELEASED_TYPES.includes(n.type));
}

function removeBar() {
  document.getElementById(BAR_ID)?.remove();
}

function closeMissingNodesDialog() {
  if (!olderThan(frontendVersion(), MISSING_DIALOG_BEFORE)) return;
  for (const dialog of document.querySelectorAll(".p-dialog")) {
    if (RELEASED_TYPES.some((t) => dialog.innerText.includes(t))) {
      dialog.querySelector(".p-dialog-close-button")?.click();
    }
  }
}

function notify(severity, summary, detail) {
  app.extensionManager.toast.add({ severity, summary, detail, life: severity === "error" ? 15000 : 8000 });
}

// Convert the open graph (or `graphData`) and load the result in place of it.
export async function convertReleasedWorkflow(graphData = null) {
  const missing = missingApi();
  if (missing.length) {
    showBar(missing);
    return { ok: false, error: `this front end lacks ${missing.join(", ")}` };
  }
  const workflow = graphData ?? app.graph.serialize();
  const res = await api.fetchApi("/acepp/convert_release", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ workflow }),
  });
  const body = await res.json();
  if (!res.ok) {
    notify(res.status === 400 ? "warn" : "error", LABEL, body.error ?? res.statusText);
    return { ok: false, error: body.error ?? res.statusText };
  }
  removeBar();
  closeMissingNodesDialog();
  const open = app.extensionManager.workflow.activeWorkflow ?? null;
  await app.loadGraphData(body.workflow, true, true, open);
  closeMissingNodesDialog();  // again: the released graph's dialog may have opened while the server converted
  notify("success", "Converted to ACE++ (this pack)",
    `${body.changes.length} changes; release_parity is on. The Note in the graph says what changed.`);
  return { ok: true, changes: body.changes };
}

export function showBar(missing = missingApi()) {
  removeBar();
  const bar = document.createElement("div");
  bar.id = BAR_ID;
  bar.setAttribute("role", "status");
  bar.style.cssText = "position:fixed;top:56px;left:50%;transform:translateX(-50%);z-index:100000;" +
    "background:#2b3a55;color:#fff;padding:8px 12px;border-radius:6px;font:14px sans-serif;" +
    "box-shadow:0 2px 10px rgba(0,0,0,.4);display:flex;gap:10px;align-items:center;max-width:90vw";
  const text = document.createElement("span");
  text.textContent = "This graph uses the released ACE++ nodes.";
  bar.append(text);
  if (missing.length) {
    // Degrade visibly: say what is needed instead of offering a button that cannot work here.
    const need = document.createElement("span");
    need.textContent = `${LABEL} needs ComfyUI front end ${OLDEST_TESTED_FRONTEND} or later (this one is ` +
      `${frontendVersion()}; it lacks ${missing.join(", ")}). Convert the file instead: ${CLI}`;
    bar.append(need);
  } else {
    const convert = document.createElement("button");
    convert.textContent = LABEL;
    convert.style.cssText = "background:#4a7dd8;color:#fff;border:0;border-radius:4px;padding:4px 10px;cursor:pointer";
    convert.onclick = () => convertReleasedWorkflow();
    bar.append(convert);
  }
  const dismiss = document.createElement("button");
  dismiss.textContent = "\u00d7";
  dismiss.title = "Dismiss";
  dismiss.style.cssText = "background:none;color:#fff;border:0;font-size:18px;cursor:pointer";
  dismiss.onclick = removeBar;
  bar.append(dismiss);
  document.body.append(bar);
}

app.registerExtension({
  name: "ACEPP.ConvertReleasedWorkflow",
  commands: [{ id: COMMAND_ID, label: LABEL, icon: "pi pi-sync", function: () => convertReleasedWorkflow() }],
  menuCommands: [{ path: ["Workflow"], commands: [COMMAND_ID] }],
  async afterConfigureGraph() {
    if (hasReleasedNodes(app.graph.serialize())) {
      showBar();
    } else {
      removeBar();
    }
  },
});
