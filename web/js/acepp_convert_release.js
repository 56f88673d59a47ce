// ACE++ (this pack): convert a workflow built on the released ACE++ nodes, in place.
//
// Opening a graph with the released nodes (ACEPlusLoraProcessor, ACEPlusLoraConditioning,
// ACEPlusFFTProcessor, ACEPlusConditioning, ACEPlusLoader) shows a bar offering
// "Convert to ACE++ (this pack)"; the same action is a command (Workflow menu, command palette)
// for the open graph. The conversion itself runs on the server (POST /acepp/convert_release),
// in the same Python code as `python -m aceplus_host convert-release`, and the converted graph
// replaces the open one in its tab.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const RELEASED_TYPES = ["ACEPlusLoraProcessor", "ACEPlusLoraConditioning", "ACEPlusFFTProcessor",
  "ACEPlusConditioning", "ACEPlusLoader"];
const LABEL = "Convert to ACE++ (this pack)";
const COMMAND_ID = "ACEPP.ConvertReleasedWorkflow";
const BAR_ID = "acepp-convert-release-bar";

function hasReleasedNodes(graphData) {
  return (graphData?.nodes ?? []).some((n) => RELEASED_TYPES.includes(n.type));
}

function removeBar() {
  document.getElementById(BAR_ID)?.remove();
}

function closeMissingNodesDialog() {
  // The front end's "missing nodes" dialog (1.32.9; 1.49.6 opens none) lists the released types the
  // conversion just replaced: once the graph is converted it speaks of a graph that is gone.
  for (const dialog of document.querySelectorAll(".p-dialog")) {
    if (RELEASED_TYPES.some((t) => dialog.innerText.includes(t))) {
      dialog.querySelector(".p-dialog-close-button")?.click();
    }
  }
}

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity, summary, detail, life: severity === "error" ? 15000 : 8000 });
  } else if (severity === "error") {
    console.warn(`${summary}: ${detail}`);
  }
}

// Convert the open graph (or `graphData`) and load the result in place of it.
export async function convertReleasedWorkflow(graphData = null) {
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
  const open = app.extensionManager?.workflow?.activeWorkflow ?? null;
  await app.loadGraphData(body.workflow, true, true, open);
  closeMissingNodesDialog();  // again: the released graph's dialog may have opened while the server converted
  notify("success", "Converted to ACE++ (this pack)",
    `${body.changes.length} changes; release_parity is on. The Note in the graph says what changed.`);
  return { ok: true, changes: body.changes };
}

function showBar() {
  removeBar();
  const bar = document.createElement("div");
  bar.id = BAR_ID;
  bar.style.cssText = "position:fixed;top:56px;left:50%;transform:translateX(-50%);z-index:100000;" +
    "background:#2b3a55;color:#fff;padding:8px 12px;border-radius:6px;font:14px sans-serif;" +
    "box-shadow:0 2px 10px rgba(0,0,0,.4);display:flex;gap:10px;align-items:center";
  const text = document.createElement("span");
  text.textContent = "This graph uses the released ACE++ nodes.";
  const convert = document.createElement("button");
  convert.textContent = LABEL;
  convert.style.cssText = "background:#4a7dd8;color:#fff;border:0;border-radius:4px;padding:4px 10px;cursor:pointer";
  convert.onclick = () => convertReleasedWorkflow();
  const dismiss = document.createElement("button");
  dismiss.textContent = "\u00d7";
  dismiss.title = "Dismiss";
  dismiss.style.cssText = "background:none;color:#fff;border:0;font-size:18px;cursor:pointer";
  dismiss.onclick = removeBar;
  bar.append(text, convert, dismiss);
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
