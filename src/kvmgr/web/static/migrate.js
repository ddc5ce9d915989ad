// Moving VMs from the web UI: the VM page's "Migrate" card and the hosts page's "Evacuate".
// Everything here is a view of the API: the host picker shows each host's dry-run preflight
// (POST .../migrate with dry_run), progress is the task's result.live (the migration job's
// statistics, written by the worker), Cancel is POST /api/v1/tasks/{id}/cancel.  The server
// decides who may move VMs (admins); the cards are only rendered for them.  Text from the
// server goes in with textContent only.
"use strict";

const kvmgrMoves = (() => {
  const MIB = 1024 * 1024;
  const mib = (bytes) => `${Math.round((bytes || 0) / MIB)}`;
  const el = (id) => document.getElementById(id);
  const text = (id, value) => { const node = el(id); if (node) node.textContent = value; };

  // One job-stats sample in words, shared by the VM page and each evacuation row.
  function describe(live) {
    const parts = [];
    if (live.disk_total) parts.push(`disks ${mib(live.disk_done)}/${mib(live.disk_total)} MiB`);
    if (live.memory_total) parts.push(`memory ${mib(live.memory_done)}/${mib(live.memory_total)} MiB`);
    if (live.memory_total) parts.push(`${mib(live.memory_remaining)} MiB left`);
    if (live.rate) parts.push(`${(live.rate / MIB).toFixed(1)} MiB/s`);
    if (live.eta !== null && live.eta !== undefined) parts.push(`ETA ${Math.round(live.eta)} s`);
    return parts.join(", ");
  }

  // ------------------------------------------------------------------ the VM page
  async function migrateCard() {
    const card = el("migrate-card");
    if (!card) return;
    const name = card.dataset.name;
    const url = `/api/v1/vms/${encodeURIComponent(name)}/migrate`;
    const error = el("migrate-error");
    let chosen = null;

    // Every host's preflight, asked in parallel.  A refusal the route answers with an error
    // (maintenance, the VM's own host, an unreachable host) is that host's reason too.
    const dryRun = (to) => kvmgr.api("POST", url, { to, dry_run: true })
      .then((answer) => ({ answer }), (err) => ({ refused: err.message }));

    const row = (to, label, verdict) => {
      const tr = document.createElement("tr");
      tr.dataset.host = to;
      const pick = document.createElement("input");
      pick.type = "radio"; pick.name = "migrate-to"; pick.value = to;
      pick.disabled = !verdict.ok;
      pick.addEventListener("change", () => {
        chosen = to;
        el("migrate-start").disabled = false;
        document.querySelectorAll("#migrate-hosts tr").forEach((r) => r.classList.toggle("selected", r === tr));
      });
      const cells = [pick, label, verdict.summary];
      for (const value of cells) {
        const td = document.createElement("td");
        if (value instanceof Node) td.appendChild(value); else td.textContent = value;
        tr.appendChild(td);
      }
      const why = tr.lastChild;
      why.className = verdict.ok ? "preflight ok" : "preflight refused";
      for (const line of verdict.details) {
        const small = document.createElement("div");
        small.className = "reason";
        small.textContent = line;
        why.appendChild(small);
      }
      return tr;
    };

    const verdictOf = ({ answer, refused }) => {
      if (refused) return { ok: false, summary: `refused: ${refused}`, details: [] };
      const check = answer.preflight;
      const details = check.warnings.map((w) => `warning: ${w}`);
      if (check.problems.length) {
        return { ok: false, summary: `refused: ${check.problems.join("; ")}`, details };
      }
      return { ok: true, summary: `ok: ${check.mode}, ${mib(check.copy_bytes)} MiB of disk to copy`, details };
    };

    const load = async () => {
      kvmgr.showError(error, null);
      el("migrate-panel").hidden = false;
      const body = document.querySelector("#migrate-hosts tbody");
      body.replaceChildren();
      text("migrate-mode", "asking every host…");
      const hosts = await kvmgr.api("GET", "/api/v1/hosts");
      const targets = ["auto", ...hosts.map((h) => h.name)];
      const answers = await Promise.all(targets.map(dryRun));
      const auto = answers[0];
      const any = answers.find((a) => a.answer);
      // Live or offline is the VM's state's choice (running: live); the server says which.
      text("migrate-mode", any ? `Mode: ${any.answer.preflight.mode} (the VM is ${card.dataset.state}); from host ${any.answer.from}` : "");
      const autoVerdict = verdictOf(auto);
      if (auto.answer) {
        autoVerdict.summary = `${autoVerdict.ok ? "picks" : "would pick"} ${auto.answer.to}: ${autoVerdict.summary}`;
        autoVerdict.details = [
          ...(auto.answer.placement || []).map((v) => `${v.host}: ${v.eligible ? "eligible" : "skipped"}, ${v.reason}`),
          ...autoVerdict.details,
        ];
      }
      body.appendChild(row("auto", "auto (placement)", autoVerdict));
      hosts.forEach((host, i) => body.appendChild(row(host.name, host.name, verdictOf(answers[i + 1]))));
      chosen = null;
      el("migrate-start").disabled = true;
    };

    el("migrate-open").addEventListener("click", () => load().catch((err) => kvmgr.showError(error, err)));

    el("migrate-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!chosen) return;
      const body = { to: chosen };
      const downtime = Number(el("migrate-downtime").value);
      const bandwidth = Number(el("migrate-bandwidth").value);
      if (downtime) body.max_downtime_ms = downtime;
      if (bandwidth) body.bandwidth_mib = bandwidth;
      el("migrate-start").disabled = true;
      const task = await kvmgr.attempt(error, () => kvmgr.api("POST", url, body));
      if (task) await follow(task);
      else el("migrate-start").disabled = false;
    });

    const follow = async (task) => {
      el("migrate-panel").hidden = true;
      el("migrate-progress").hidden = false;
      el("migrate-progress").dataset.task = task.id;
      const cancel = el("migrate-cancel");
      cancel.hidden = false;
      cancel.disabled = false;
      cancel.onclick = async () => {
        cancel.disabled = true;
        await kvmgr.attempt(error, () => kvmgr.api("POST", `/api/v1/tasks/${encodeURIComponent(task.id)}/cancel`));
      };
      const done = await kvmgr.waitForTask(task.id, show);
      cancel.hidden = true;
      const result = el("migrate-result");
      if (done.state === "done") {
        const r = done.result.result;
        // The VM has left this host: its power actions here would act on nothing.
        text("vm-state", `moved to ${done.result.to}`);
        document.querySelectorAll("[data-action]").forEach((button) => { button.disabled = true; });
        result.replaceChildren(`Moved ${r.mode} to ${done.result.to} in ${r.seconds.toFixed(1)} s`
          + (r.downtime_ms !== null ? `, downtime ${r.downtime_ms} ms. ` : ". "),
        kvmgr.link(`/vms/${encodeURIComponent(name)}?host=${encodeURIComponent(done.result.to)}`, "Open it there"));
        result.className = "ok";
      } else {
        // The VM stayed: show its state now, not the "paused" of the switch-over it never had.
        const info = await kvmgr.api("GET", `/api/v1/vms/${encodeURIComponent(name)}`).catch(() => null);
        if (info) text("vm-state", info.state);
        result.textContent = done.state === "cancelled"
          ? `Cancelled: ${done.error || "the VM stays on the source"}`
          : `Failed: ${done.error}`;
        result.className = done.state === "cancelled" ? "muted" : "error";
      }
      result.dataset.state = done.state;
    };

    // One task snapshot: the numbers of the latest job-stats sample, the step-by-step
    // downtime raise, and the task's own progress bar.  While QEMU mirrors the disks its job
    // stats carry no rate, so the page derives one: the bytes done since the first sample it
    // saw over the time between (an average, because the mirror advances in bursts), and says so.
    let first = null;
    const show = (task) => {
      text("migrate-phase", `${task.state}: ${task.message}`);
      el("migrate-bar").value = task.progress;
      const live = task.state === "running" && task.result && task.result.live;
      if (!live) return;
      const done = live.disk_done + live.memory_done;
      const left = (live.disk_total - live.disk_done) + live.memory_remaining;
      let rate = live.rate, derived = false;
      if (!first) first = { elapsed: live.elapsed, done };
      if (!rate && live.elapsed > first.elapsed && done > first.done) {
        rate = (done - first.done) / (live.elapsed - first.elapsed);
        derived = true;
      }
      const eta = live.eta ?? (rate ? left / rate : null);
      text("migrate-disk", live.disk_total ? `${mib(live.disk_done)} of ${mib(live.disk_total)} MiB` : "–");
      text("migrate-memory", live.memory_total ? `${mib(live.memory_done)} of ${mib(live.memory_total)} MiB` : "–");
      text("migrate-remaining", `${mib(live.disk_total - live.disk_done)} MiB of disk, ${mib(live.memory_remaining)} MiB of memory`);
      text("migrate-rate", rate ? `${(rate / MIB).toFixed(1)} MiB/s${derived ? " (from the bytes done)" : ""}` : "–");
      text("migrate-eta", eta !== null && eta !== undefined ? `${Math.round(eta)} s` : "–");
      text("migrate-downtime-steps", (live.downtime_steps || []).map((ms) => `${ms} ms`).join(" → ") || "–");
      text("migrate-passes", `${live.passes}`);
      el("migrate-stats").dataset.samples = String(Number(el("migrate-stats").dataset.samples || 0) + 1);
    };
  }

  // ------------------------------------------------------------------ the hosts page
  // Shown by the hosts table's "evacuate…" button: the plan (the dry run) first, then, once
  // started, each VM's state and its move's numbers from the evacuation task.
  async function evacuate(host, refresh) {
    const card = el("evacuate-card");
    const error = el("evacuate-error");
    const url = `/api/v1/hosts/${encodeURIComponent(host)}/evacuate`;
    card.hidden = false;
    card.dataset.host = host;
    text("evacuate-host", host);
    text("evacuate-result", "");
    kvmgr.showError(error, null);
    el("evacuate-form").hidden = true;
    el("evacuate-cancel").hidden = true;
    const body = document.querySelector("#evacuate-plan tbody");
    body.replaceChildren();
    const plan = await kvmgr.attempt(error, () => kvmgr.api("POST", url, { dry_run: true }));
    if (!plan) return;  // no plan: the reason (a VM with nowhere to go) is shown instead
    const cells = new Map();
    for (const move of plan.moves) {
      const tr = document.createElement("tr");
      tr.dataset.vm = move.vm;
      const why = (plan.placement[move.vm] || []).find((v) => v.host === move.to);
      const state = document.createElement("td");
      const numbers = document.createElement("td");
      for (const value of [move.vm, move.to, move.live ? "live" : "offline", why ? why.reason : ""]) {
        const td = document.createElement("td"); td.textContent = value; tr.appendChild(td);
      }
      state.textContent = "planned";
      tr.append(state, numbers);
      body.appendChild(tr);
      cells.set(move.vm, { state, numbers });
    }
    if (!plan.moves.length) text("evacuate-result", "No VMs here: evacuating only puts the host in maintenance.");
    el("evacuate-form").hidden = false;
    el("evacuate-form").onsubmit = async (event) => {
      event.preventDefault();
      el("evacuate-form").hidden = true;
      const parallel = Number(el("evacuate-parallel").value) || undefined;
      const task = await kvmgr.attempt(error, () => kvmgr.api("POST", url, { parallel }));
      if (!task) { el("evacuate-form").hidden = false; return; }
      card.dataset.task = task.id;
      const cancel = el("evacuate-cancel");
      cancel.hidden = false; cancel.disabled = false;
      cancel.onclick = async () => {
        cancel.disabled = true;
        await kvmgr.attempt(error, () => kvmgr.api("POST", `/api/v1/tasks/${encodeURIComponent(task.id)}/cancel`));
      };
      const done = await kvmgr.waitForTask(task.id, (t) => {
        text("evacuate-result", `${t.state}: ${t.message}`);
        const moves = (t.state === "running" && t.result && t.result.live && t.result.live.moves) || {};
        for (const [vm, live] of Object.entries(moves)) {
          const cell = cells.get(vm);
          if (!cell) continue;
          cell.state.textContent = live.state || "moving";
          cell.numbers.textContent = live.state === "moving" ? describe(live) : (live.error || "");
        }
      });
      cancel.hidden = true;
      if (done.state === "done") {
        for (const outcome of done.result.outcomes) {
          const cell = cells.get(outcome.vm);
          if (cell) { cell.state.textContent = outcome.state; cell.numbers.textContent = outcome.result ? `${outcome.result.seconds.toFixed(1)} s` : ""; }
        }
        text("evacuate-result", done.result.empty ? `Done: host ${host} is empty and in maintenance.` : `Done, but host ${host} still has VMs.`);
      } else {
        text("evacuate-result", `${done.state}: ${done.error || ""}`);
      }
      card.dataset.state = done.state;
      if (refresh) await refresh();
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    migrateCard().catch((err) => kvmgr.flash(err.message));
    el("evacuate-close")?.addEventListener("click", () => { el("evacuate-card").hidden = true; });
  });

  return { evacuate, describe };
})();
