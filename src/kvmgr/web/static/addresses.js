// The VM page's addresses: rendered by the server, looked at again while the VM runs without
// one (a guest takes its DHCP lease some seconds after it starts, and no event says so) and
// when its state changes (the state badge vm.js keeps).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("vm-addresses");
  const name = document.getElementById("vm")?.dataset.name;
  if (!table || !name) return;
  const base = `/api/v1/vms/${encodeURIComponent(name)}`;
  const body = table.querySelector("tbody");
  const show = (info) => {
    table.dataset.state = info.state;
    const found = info.ips ?? [];
    body.replaceChildren();
    if (!found.length) {
      const tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = 3; td.className = "empty";
      td.textContent = info.state === "running" ? "none seen yet" : "none: the VM is not running";
      tr.appendChild(td); body.appendChild(tr);
      return;
    }
    for (const address of found) {
      const tr = document.createElement("tr");
      for (const text of [address.ip, address.mac, address.source]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  };
  const refresh = async () => {
    const info = await kvmgr.api("GET", base).catch(() => null);
    if (info) show(info);
  };
  setInterval(() => {
    const none = !body.querySelector("td:not(.empty)");
    if (table.dataset.state === "running" && none) refresh();
  }, 5000);
  // vm.js shows each state change in the badge: follow it rather than open another stream.
  const badge = document.getElementById("vm-state");
  if (badge) new MutationObserver(() => setTimeout(refresh, 1000)).observe(badge, { childList: true, characterData: true, subtree: true });
});
