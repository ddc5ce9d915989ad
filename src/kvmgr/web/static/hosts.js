// The hosts page: every registered host from /api/v1/hosts (queried by the server in parallel,
// each within its time bound), and for admins add, maintenance on/off, evacuate and remove.
"use strict";

pages.hosts = async () => {
  const admin = document.getElementById("hosts").dataset.admin === "true";
  const tableError = document.getElementById("host-error");
  const base = (name) => `/api/v1/hosts/${encodeURIComponent(name)}`;
  const labels = (h) => Object.entries(h.labels).map(([k, v]) => `${k}=${v}`).join(",");
  const actions = (h) => kvmgr.group(
    kvmgr.button(h.maintenance ? "end maintenance" : "maintenance", () => kvmgr.attempt(tableError,
      () => kvmgr.api("PATCH", base(h.name), { maintenance: !h.maintenance }), refresh)),
    // The plan first (a dry run), then the task's progress: see migrate.js.
    kvmgr.button("evacuate…", () => kvmgrMoves.evacuate(h.name, refresh).catch((err) => kvmgr.showError(tableError, err))),
    kvmgr.button("remove…", async () => {
      if (!await kvmgr.confirmByName(`Forget host ${h.name}? Its VMs keep running.`, h.name)) return;
      await kvmgr.attempt(tableError, () => kvmgr.api("DELETE", base(h.name)), refresh);
    }, "danger"),
  );
  const up = (h, value) => (h.reachable ? value : "–");
  const columns = [
    (h) => kvmgr.link(`/?host=${encodeURIComponent(h.name)}`, h.name + (h.default ? " *" : "")),
    (h) => (h.reachable ? h.state : `down: ${h.error}`),
    (h) => h.uri,
    (h) => up(h, h.libvirt),
    (h) => up(h, h.hypervisor_version),
    (h) => up(h, h.domain_type),
    (h) => up(h, h.cpus),
    (h) => up(h, kvmgr.bytes(h.memory_total)),
    (h) => up(h, kvmgr.bytes(h.memory_free)),
    (h) => up(h, `${h.vms_running} running / ${h.vms_defined}`),
    labels,
  ];
  if (admin) columns.push(actions);
  const refresh = async () => kvmgr.fillTable("host-table", await kvmgr.api("GET", "/api/v1/hosts"), columns);
  await refresh();
  document.getElementById("host-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = document.getElementById("host-labels").value.trim();
    const pairs = text ? text.split(",").map((item) => item.split("=")) : [];
    const made = await kvmgr.attempt(document.getElementById("host-form-error"), () =>
      kvmgr.api("POST", "/api/v1/hosts", {
        name: document.getElementById("host-name").value,
        uri: document.getElementById("host-uri").value,
        labels: Object.fromEntries(pairs.map(([k, v]) => [k.trim(), (v ?? "").trim()])),
      }), refresh);
    if (made) event.target.reset();
  });
};
