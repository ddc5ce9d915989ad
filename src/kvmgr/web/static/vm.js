// The VM page: power actions, resize, snapshots, clone, delete, and the serial console.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("vm");
  const name = root.dataset.name;
  const base = `/api/v1/vms/${encodeURIComponent(name)}`;
  const stateBadge = document.getElementById("vm-state");

  // Only the power actions that make sense in the VM's state are offered; the server refuses
  // the others anyway, this just spares the click.
  const allowed = {
    "running": ["shutdown", "reboot", "off", "pause"],
    "paused": ["resume", "off"],
    "shut off": ["start"],
    "crashed": ["start", "off"],
  };
  // The reason is shown when it is news: "shut off (crashed)" for a QEMU that died.
  const showState = (state, reason) => {
    stateBadge.textContent = reason ? `${state} (${reason})` : state;
    const ok = allowed[state];
    document.querySelectorAll("[data-action]").forEach((button) => {
      button.disabled = ok !== undefined && !ok.includes(button.dataset.action);
    });
  };
  showState(stateBadge.dataset.state, stateBadge.dataset.reason);

  const refreshState = async () => {
    const info = await kvmgr.api("GET", base).catch(() => null);
    if (info) showState(info.state, info.state_reason);
  };
  kvmgr.events((event) => {
    if (event.type === "vm" && event.name === name) refreshState();
  });

  document.querySelectorAll("[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const query = button.dataset.action === "shutdown" ? "?force=true&timeout=60" : "";
        const result = await kvmgr.api("POST", `${base}/${button.dataset.action}${query}`);
        showState(result.state);
      } catch (err) {
        kvmgr.flash(err.message);
        await refreshState();
      }
    });
  });

  const dialog = document.getElementById("delete-dialog");
  document.getElementById("action-delete")?.addEventListener("click", () => dialog.showModal());
  dialog?.addEventListener("close", async () => {
    if (dialog.returnValue !== "delete") return;
    if (document.getElementById("delete-confirm-name").value !== name) {
      kvmgr.flash("the name did not match; nothing was deleted");
      return;
    }
    try {
      await kvmgr.api("DELETE", `${base}?force=true`);
      location.href = "/";
    } catch (err) { kvmgr.flash(err.message); }
  });

  document.getElementById("resize-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      vcpus: Number(document.getElementById("resize-vcpus").value) || null,
      memory: document.getElementById("resize-memory").value || null,
    };
    try {
      await kvmgr.api("PATCH", `${base}/resources`, body);
      kvmgr.flash("resources changed", false);
    } catch (err) { kvmgr.flash(err.message); }
  });

  // Snapshots (shown when the snapshot service is installed).
  const tree = document.getElementById("snapshot-tree");
  const loadSnapshots = async () => {
    if (!tree) return;
    const snapshots = await kvmgr.api("GET", `${base}/snapshots`).catch(() => []);
    const byParent = new Map();
    for (const snap of snapshots) {
      const key = snap.parent ?? "";
      if (!byParent.has(key)) byParent.set(key, []);
      byParent.get(key).push(snap);
    }
    const render = (parent, list) => {
      for (const snap of byParent.get(parent) ?? []) {
        const li = document.createElement("li");
        li.textContent = `${snap.name}${snap.current ? " (current)" : ""} `;
        li.dataset.snapshot = snap.name;
        if (root.dataset.mayAct === "true") {
          const revert = document.createElement("button");
          revert.textContent = "revert";
          revert.addEventListener("click", () => runTask("POST", `${base}/snapshots/${encodeURIComponent(snap.name)}/revert`));
          li.appendChild(revert);
        }
        const children = document.createElement("ul");
        render(snap.name, children);
        if (children.children.length) li.appendChild(children);
        list.appendChild(li);
      }
    };
    tree.replaceChildren();
    render("", tree);
  };

  const runTask = async (method, path, body, statusEl) => {
    try {
      const answer = await kvmgr.api(method, path, body);
      if (answer && answer.id && answer.state) {
        const task = await kvmgr.waitForTask(answer.id, (t) => {
          if (statusEl) statusEl.textContent = `${t.state}: ${t.message}`;
        });
        if (task.state !== "done") kvmgr.flash(task.error || "the task failed");
        else if (statusEl) statusEl.textContent = "done";
      }
      await loadSnapshots();
      await refreshState();
    } catch (err) { kvmgr.flash(err.message); }
  };

  document.getElementById("snapshot-form")?.addEventListener("submit", (event) => {
    event.preventDefault();
    runTask("POST", `${base}/snapshots`, { name: document.getElementById("snapshot-name").value });
  });
  document.getElementById("clone-form")?.addEventListener("submit", (event) => {
    event.preventDefault();
    runTask("POST", `${base}/clone`, { name: document.getElementById("clone-name").value }, document.getElementById("clone-status"));
  });
  loadSnapshots();

  // Serial console: xterm.js over a websocket the server bridges to libvirt's console stream.
  // A console someone else has open is not taken silently: the server refuses (4409, saying
  // who holds it) and the page offers to take it over, which reconnects with force=1.
  const CLOSE_BUSY = 4409;
  const openConsole = async (force) => {
    const element = document.getElementById("terminal");
    element.replaceChildren();
    document.getElementById("console-takeover").hidden = true;
    const term = new Terminal({ convertEol: true, fontSize: 13, scrollback: 2000 });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(element);
    fit.fit();
    try {
      const grant = await kvmgr.api("POST", `${base}/console-token`, { kind: "serial" });
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const url = `${scheme}://${location.host}${grant.url}${force ? "&force=1" : ""}`;
      const socket = new WebSocket(url);
      socket.binaryType = "arraybuffer";
      socket.onmessage = (message) => term.write(new Uint8Array(message.data));
      socket.onclose = (event) => {
        if (event.code === CLOSE_BUSY) {
          const notice = document.getElementById("console-busy");
          notice.textContent = `The console is ${event.reason || "open elsewhere"}.`;
          document.getElementById("console-takeover").hidden = false;
          return;
        }
        term.write(`\r\n[console closed${event.reason ? ": " + event.reason : ""}]\r\n`);
      };
      term.onData((data) => socket.readyState === WebSocket.OPEN && socket.send(new TextEncoder().encode(data)));
      socket.onopen = () => term.focus();
      window.kvmgrConsole = { term, socket };
    } catch (err) { kvmgr.flash(err.message); }
  };
  document.getElementById("console-open")?.addEventListener("click", () => openConsole(false));
  document.getElementById("console-force")?.addEventListener("click", () => openConsole(true));
});
