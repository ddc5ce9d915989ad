// The ISO library: imported ISOs with the OS detected on them, import from a path on the kvmgr
// host (a task whose progress is shown), delete (the API refuses while a VM uses the ISO).
"use strict";

pages.isos = async () => {
  const admin = document.getElementById("isos").dataset.admin === "true";
  const listError = document.getElementById("iso-error");

  const columns = [
    (i) => i.name,
    (i) => (i.matched ? `${i.os_name} (${i.os_id})` : `${i.os_name} (not recognised: generic profile)`),
    (i) => kvmgr.bytes(i.size),
    (i) => `${kvmgr.bytes(i.recommended.memory)}, ${i.recommended.vcpus} vCPU, ${kvmgr.bytes(i.recommended.disk)} disk`,
  ];
  if (admin) {
    columns.push((i) => kvmgr.group(kvmgr.button("delete…", async () => {
      if (!await kvmgr.confirmByName(`Delete ISO ${i.name} from the library?`, i.name)) return;
      await kvmgr.attempt(listError, () => kvmgr.api("DELETE", `/api/v1/isos/${encodeURIComponent(i.name)}`), refresh);
    }, "danger")));
  }

  async function refresh() {
    kvmgr.fillTable("iso-table", await kvmgr.api("GET", "/api/v1/isos"), columns);
  }

  const form = document.getElementById("iso-form");
  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const formError = document.getElementById("iso-form-error");
    const submit = document.getElementById("iso-import");
    const progress = document.getElementById("iso-progress");
    const message = document.getElementById("iso-message");
    submit.disabled = true;
    try {
      const task = await kvmgr.attempt(formError, () => kvmgr.api("POST", "/api/v1/isos", {
        path: document.getElementById("iso-path").value.trim(),
        name: document.getElementById("iso-name").value.trim() || null,
      }));
      if (!task) return;
      document.getElementById("iso-task").hidden = false;
      const done = await kvmgr.attempt(formError, () => kvmgr.waitForTask(task.id, (t) => {
        progress.value = t.progress ?? 0;
        message.textContent = `${t.state}: ${t.message || ""}`;
      }));
      if (!done) return;
      if (done.state === "done") {
        progress.value = 100;
        message.textContent = `imported ${done.result?.name ?? ""}: ${done.result?.os_name ?? ""}`;
        form.reset();
      } else {
        kvmgr.showError(formError, new Error(done.error || "the import failed"));
        message.textContent = done.state;
      }
      await refresh();
    } finally {
      submit.disabled = false;
    }
  });

  await refresh();
};
