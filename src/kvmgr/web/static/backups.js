// Backups in the web UI: the backups page (every VM's last good point, the failures, and for
// admins the schedules and retention policies) and the VM page's backups card (its points,
// back up now, restore a point into a new VM).  Text only through textContent (app.js).
"use strict";

const backupUI = (() => {
  const when = (iso) => kvmgr.utc(iso);
  const seconds = (value) => (value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} s`);
  const by = (point) => point.by || "–";

  // A task's progress into a status line; resolves with the ended task.
  async function follow(task, status, what) {
    status.textContent = `${what}: queued`;
    const done = await kvmgr.waitForTask(task.id, (t) => { status.textContent = `${what}: ${t.message || t.state}`; });
    status.textContent = done.state === "done" ? `${what}: done` : `${what} failed: ${done.error || done.state}`;
    return done;
  }

  // ------------------------------------------------------------------ the VM page's card
  async function vmCard(card) {
    const vm = card.dataset.vm;
    const mayAct = card.dataset.mayAct === "true";
    const status = document.getElementById("vm-backup-status");
    const error = document.getElementById("vm-backup-error");
    const dialog = document.getElementById("restore-dialog");

    async function restore(point) {
      document.getElementById("restore-point").textContent = point.id;
      const name = document.getElementById("restore-name");
      name.value = `${vm}-restored`;
      dialog.returnValue = "";
      dialog.showModal();
      const chosen = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
      if (chosen !== "ok" || !name.value.trim()) return;
      const task = await kvmgr.attempt(error, () => kvmgr.api("POST", `/api/v1/backups/${encodeURIComponent(point.id)}/restore`, {
        as_name: name.value.trim(),
        start: document.getElementById("restore-start").checked,
      }));
      if (!task) return;
      const done = await follow(task, status, `restoring ${point.id} as ${name.value.trim()}`);
      if (done.state === "done" && done.result?.name) {
        status.replaceChildren(`restored as `, kvmgr.link(`/vms/${encodeURIComponent(done.result.name)}`, done.result.name));
      }
    }

    async function refresh() {
      const rows = (await kvmgr.api("GET", `/api/v1/backups?vm=${encodeURIComponent(vm)}`)).reverse();
      kvmgr.fillTable("vm-backup-table", rows, [
        (p) => p.id,
        (p) => p.kind || "–",
        (p) => (p.state === "failed" ? `failed: ${p.error || ""}` : p.state),
        (p) => when(p.created),
        (p) => seconds(p.duration),
        (p) => (p.state === "failed" ? "–" : kvmgr.bytes(p.stored)),
        by,
        (p) => (p.state === "good" ? kvmgr.button("restore…", () => restore(p)) : ""),
      ]);
    }

    if (mayAct) {
      document.getElementById("vm-backup-now").addEventListener("click", async (event) => {
        event.target.disabled = true;
        try {
          const task = await kvmgr.attempt(error, () => kvmgr.api("POST", `/api/v1/vms/${encodeURIComponent(vm)}/backups`, {}));
          if (task) await follow(task, status, "backing up");
          await refresh();
        } finally { event.target.disabled = false; }
      });
    }
    await kvmgr.attempt(error, refresh);
  }

  // ------------------------------------------------------------------ the backups page
  async function page() {
    const admin = document.getElementById("backups").dataset.admin === "true";
    const error = document.getElementById("backups-error");
    const vmLink = (name) => kvmgr.link(`/vms/${encodeURIComponent(name)}`, name);

    async function refresh() {
      const [overview, points] = await Promise.all([
        kvmgr.api("GET", "/api/v1/backups/overview"),
        kvmgr.api("GET", "/api/v1/backups"),
      ]);
      kvmgr.fillTable("backup-overview", overview, [
        (o) => vmLink(o.vm),
        (o) => o.last_good?.id || "none",
        (o) => when(o.last_good?.created),
        (o) => o.last_good?.kind || "–",
        (o) => (o.last_good ? kvmgr.bytes(o.last_good.stored) : "–"),
        (o) => String(o.failures_since),
        (o) => (o.last_failure ? `${when(o.last_failure.created)}: ${o.last_failure.error || ""}` : "–"),
      ]);
      const failures = points.filter((p) => p.state === "failed").reverse();
      kvmgr.fillTable("backup-failures", failures, [
        (p) => vmLink(p.vm), (p) => when(p.created), (p) => seconds(p.duration), by, (p) => p.error || "",
      ]);
      if (!admin) return;
      kvmgr.fillTable("backup-schedules", await kvmgr.api("GET", "/api/v1/backup-schedules"), [
        (s) => String(s.id),
        (s) => (s.vm === "--all" ? "every VM" : vmLink(s.vm)),
        (s) => s.every,
        (s) => (s.at ? `${s.at} ${s.tz || "UTC"}` : "–"),
        (s) => when(s.next),
        (s) => s.last_run || "not yet",
        (s) => seconds(s.last_duration),
        (s) => s.last_error || "",
        (s) => kvmgr.button("remove", () => kvmgr.attempt(error,
          () => kvmgr.api("DELETE", `/api/v1/backup-schedules/${s.id}`), refresh), "danger"),
      ]);
      kvmgr.fillTable("backup-policies", await kvmgr.api("GET", "/api/v1/backup-policies"), [
        (p) => vmLink(p.vm), (p) => String(p.keep_last), (p) => String(p.keep_daily), (p) => String(p.keep_weekly),
        (p) => p.updated_by,
        (p) => kvmgr.button("remove", () => kvmgr.attempt(error,
          () => kvmgr.api("DELETE", `/api/v1/vms/${encodeURIComponent(p.vm)}/backup-policy`), refresh), "danger"),
      ]);
    }

    document.getElementById("schedule-form")?.addEventListener("submit", async (event) => {
      event.preventDefault();
      await kvmgr.attempt(document.getElementById("schedule-error"), () => kvmgr.api("POST", "/api/v1/backup-schedules", {
        vm: document.getElementById("schedule-vm").value.trim() || null,
        every: document.getElementById("schedule-every").value.trim(),
        at: document.getElementById("schedule-at").value.trim() || null,
        tz: document.getElementById("schedule-tz").value.trim() || null,
      }), refresh);
    });
    document.getElementById("policy-form")?.addEventListener("submit", async (event) => {
      event.preventDefault();
      const vm = document.getElementById("policy-vm").value.trim();
      await kvmgr.attempt(document.getElementById("policy-error"), () => kvmgr.api("PUT", `/api/v1/vms/${encodeURIComponent(vm)}/backup-policy`, {
        keep_last: Number(document.getElementById("policy-last").value || 0),
        keep_daily: Number(document.getElementById("policy-daily").value || 0),
        keep_weekly: Number(document.getElementById("policy-weekly").value || 0),
      }), refresh);
    });
    await kvmgr.attempt(error, refresh);
  }

  return { vmCard, page };
})();

pages.backups = backupUI.page;
// The VM page is vm.js's; its backups card starts on its own, after app.js's page start.
document.addEventListener("DOMContentLoaded", () => {
  const card = document.getElementById("vm-backups");
  if (card) backupUI.vmCard(card).catch((err) => kvmgr.flash(err.message));
});
