// The networks page: create, start/stop, autostart, delete (typed-name confirmation), and per
// network its DHCP reservations (add/remove) and leases.  Controls exist only for admins; the
// API refuses everyone else anyway.
"use strict";

pages.networks = async () => {
  const admin = document.getElementById("networks").dataset.admin === "true";
  const tableError = document.getElementById("net-error");
  const base = (name) => `/api/v1/networks/${encodeURIComponent(name)}`;
  let selected = null;

  const act = (action, refreshAfter = true) =>
    kvmgr.attempt(tableError, action, refreshAfter ? refresh : null);

  const actions = (n) => kvmgr.group(
    n.active
      ? kvmgr.button("stop", () => act(() => kvmgr.api("POST", `${base(n.name)}/stop`)))
      : kvmgr.button("start", () => act(() => kvmgr.api("POST", `${base(n.name)}/start`))),
    kvmgr.button(n.autostart ? "disable autostart" : "enable autostart",
      () => act(() => kvmgr.api("PUT", `${base(n.name)}/autostart`, { enabled: !n.autostart })), "secondary"),
    kvmgr.button("delete…", async () => {
      const sure = await kvmgr.confirmByName(
        `Delete network ${n.name}? VMs using it lose their connection to it.`, n.name);
      if (!sure) return;
      await act(async () => {
        await kvmgr.api("DELETE", base(n.name));
        if (selected === n.name) { selected = null; document.getElementById("net-detail").hidden = true; }
      });
    }, "danger"),
  );

  const columns = [
    (n) => kvmgr.button(n.name, () => showDetail(n.name), "link-dark"),
    (n) => n.mode, (n) => n.subnet ?? "–",
    (n) => (n.dhcp_start ? `${n.dhcp_start} – ${n.dhcp_end}` : "–"),
    (n) => n.bridge ?? "–", (n) => (n.active ? "yes" : "no"), (n) => (n.autostart ? "yes" : "no"),
    (n) => n.vms.join(", ") || "–",
  ];
  if (admin) columns.push(actions);

  async function refresh() {
    const rows = await kvmgr.api("GET", "/api/v1/networks");
    kvmgr.fillTable("net-table", rows, columns);
    for (const tr of document.querySelectorAll("#net-table tbody tr")) {
      const name = tr.querySelector("td button")?.textContent;
      if (name) tr.dataset.network = name;
    }
    if (selected) await showDetail(selected);
  }

  async function showDetail(name) {
    selected = name;
    const info = await kvmgr.attempt(tableError, () => kvmgr.api("GET", base(name)));
    if (!info) return;
    document.getElementById("net-detail").hidden = false;
    document.getElementById("net-detail-name").textContent = name;
    const resColumns = [(r) => r.mac ?? "–", (r) => r.ip ?? "–", (r) => r.hostname ?? "–"];
    if (admin) {
      resColumns.push((r) => kvmgr.button("remove", () => kvmgr.attempt(
        document.getElementById("res-error"),
        () => kvmgr.api("DELETE", `${base(name)}/reservations/${encodeURIComponent(r.ip)}`),
        () => showDetail(name)), "danger"));
    }
    kvmgr.fillTable("res-table", info.reservations, resColumns);
    const note = document.getElementById("lease-note");
    if (!info.active) {
      kvmgr.fillTable("lease-table", [], []);
      note.textContent = "The network is not running, so it hands out no leases.";
      note.hidden = false;
      return;
    }
    note.hidden = true;
    const leases = await kvmgr.api("GET", `${base(name)}/leases`).catch((err) => { note.textContent = err.message; note.hidden = false; return []; });
    kvmgr.fillTable("lease-table", leases, [
      (l) => l.mac, (l) => `${l.ip}/${l.prefix}`, (l) => l.hostname ?? "–",
      (l) => kvmgr.utc(new Date(l.expires * 1000).toISOString()),
    ]);
  }

  const form = document.getElementById("net-form");
  if (form) {
    const mode = document.getElementById("net-mode");
    const syncMode = () => {
      const bridged = mode.value === "bridge";
      document.getElementById("net-bridge-label").hidden = !bridged;
      for (const label of form.querySelectorAll(".ip-only")) label.hidden = bridged;
    };
    mode.addEventListener("change", syncMode);
    syncMode();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = (id) => document.getElementById(id).value.trim() || null;
      const bridged = mode.value === "bridge";
      const created = await kvmgr.attempt(document.getElementById("net-form-error"), () =>
        kvmgr.api("POST", "/api/v1/networks", {
          name: value("net-name"),
          mode: mode.value,
          subnet: bridged ? null : value("net-subnet"),
          dhcp_range: bridged ? null : value("net-dhcp"),
          bridge: bridged ? value("net-bridge") : null,
          autostart: document.getElementById("net-autostart").checked,
        }), refresh);
      if (created) { form.reset(); syncMode(); kvmgr.flash(`network ${created.name} created`, false); }
    });
  }

  document.getElementById("res-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = (id) => document.getElementById(id).value.trim() || null;
    const made = await kvmgr.attempt(document.getElementById("res-error"), () =>
      kvmgr.api("POST", `${base(selected)}/reservations`, {
        ip: value("res-ip"), mac: value("res-mac"), vm: value("res-vm"), hostname: value("res-hostname"),
      }), () => showDetail(selected));
    if (made) event.target.reset();
  });

  await refresh();
};
