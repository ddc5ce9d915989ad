// The storage page: directory pools (create, refresh, delete) and the volumes of one pool
// (create, resize, delete).  A volume a VM uses cannot be deleted: its button is disabled and
// says which VM; the API refuses it anyway.  Controls exist only for admins.
"use strict";

pages.storage = async () => {
  const admin = document.getElementById("storage").dataset.admin === "true";
  const poolError = document.getElementById("pool-error");
  const volError = document.getElementById("vol-error");
  const poolBase = (name) => `/api/v1/pools/${encodeURIComponent(name)}`;
  const volBase = (pool, name) => `${poolBase(pool)}/volumes/${encodeURIComponent(name)}`;
  let selected = null;

  async function deletePool(p, force) {
    const count = `${p.volumes} volume${p.volumes === 1 ? "" : "s"}`;
    const question = force
      ? `Delete storage pool ${p.name} and its ${count}? Their data is gone for good.`
      : `Delete storage pool ${p.name}? Its directory goes too if empty; the pool must hold no volumes.`;
    if (!await kvmgr.confirmByName(question, p.name)) return;
    await kvmgr.attempt(poolError, async () => {
      await kvmgr.api("DELETE", poolBase(p.name) + (force ? "?force=true" : ""));
      if (selected === p.name) { selected = null; document.getElementById("vol-detail").hidden = true; }
    }, refresh);
  }

  const poolActions = (p) => kvmgr.group(
    kvmgr.button("refresh", () => kvmgr.attempt(poolError, () => kvmgr.api("POST", `${poolBase(p.name)}/refresh`), refresh), "secondary"),
    kvmgr.button("delete…", () => deletePool(p, false), "danger"),
    // A pool that still holds volumes: the plain delete is refused, so offer the API's force,
    // which deletes exactly the pool's volumes (and is still refused while a VM uses one).
    p.volumes ? kvmgr.button("delete with its volumes…", () => deletePool(p, true), "danger") : null,
  );

  const poolColumns = [
    (p) => kvmgr.button(p.name, () => showVolumes(p.name), "link-dark"),
    (p) => p.type ?? "–", (p) => p.path ?? "–", (p) => (p.active ? "yes" : "no"),
    (p) => kvmgr.bytes(p.capacity), (p) => kvmgr.bytes(p.allocation), (p) => kvmgr.bytes(p.available),
    (p) => p.volumes,
  ];
  if (admin) poolColumns.push(poolActions);

  async function refresh() {
    kvmgr.fillTable("pool-table", await kvmgr.api("GET", "/api/v1/pools"), poolColumns);
    if (selected) await showVolumes(selected);
  }

  function volumeActions(v) {
    const size = document.createElement("input");
    size.placeholder = "new size"; size.maxLength = 32; size.className = "vol-new-size";
    const resize = kvmgr.button("resize", () => kvmgr.attempt(volError,
      () => kvmgr.api("PATCH", volBase(v.pool, v.name), { size: size.value.trim() }), refresh), "secondary");
    const remove = kvmgr.button("delete…", async () => {
      if (!await kvmgr.confirmByName(`Delete volume ${v.name} of pool ${v.pool}? Its data is gone for good.`, v.name)) return;
      await kvmgr.attempt(volError, () => kvmgr.api("DELETE", volBase(v.pool, v.name)), refresh);
    }, "danger");
    let reason = null;
    if (v.used_by.length) {
      remove.disabled = true;
      remove.title = `in use by ${v.used_by.join(", ")}: remove it from the VM first`;
      reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = `in use by ${v.used_by.join(", ")}`;
    }
    return kvmgr.group(size, resize, remove, reason);
  }

  async function showVolumes(pool) {
    selected = pool;
    const volumes = await kvmgr.attempt(poolError, () => kvmgr.api("GET", `${poolBase(pool)}/volumes`));
    if (!volumes) return;
    document.getElementById("vol-detail").hidden = false;
    document.getElementById("vol-pool").textContent = pool;
    const columns = [
      (v) => v.name, (v) => v.format ?? "–", (v) => kvmgr.bytes(v.capacity),
      (v) => kvmgr.bytes(v.allocation), (v) => v.used_by.join(", ") || "–",
    ];
    if (admin) columns.push(volumeActions);
    kvmgr.fillTable("vol-table", volumes, columns);
  }

  document.getElementById("pool-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const made = await kvmgr.attempt(document.getElementById("pool-form-error"), () =>
      kvmgr.api("POST", "/api/v1/pools", {
        name: document.getElementById("pool-name").value.trim(),
        path: document.getElementById("pool-path").value.trim(),
      }), refresh);
    if (made) { event.target.reset(); await showVolumes(made.name); }
  });

  document.getElementById("vol-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const made = await kvmgr.attempt(volError, () =>
      kvmgr.api("POST", `${poolBase(selected)}/volumes`, {
        name: document.getElementById("vol-name").value.trim(),
        size: document.getElementById("vol-size").value.trim(),
        format: document.getElementById("vol-format").value,
      }), refresh);
    if (made) event.target.reset();
  });

  await refresh();
};
