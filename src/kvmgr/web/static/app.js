// kvmgr web UI: small vanilla JS over the REST API.  Text from the server is only ever put in
// the page with textContent, never innerHTML, so a VM or user name cannot inject markup.
"use strict";

// Where to go after login: a path of this site only.  Resolved by the browser's own URL parser,
// because browsers read '/\host' and '/<tab>/host' as '//host' (another site).
function sameOriginPath(next) {
  if (!next) return "/";
  let target;
  try { target = new URL(next, location.origin); } catch { return "/"; }
  return target.origin === location.origin ? target.pathname + target.search + target.hash : "/";
}

const kvmgr = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  // A page opened with ?host=NAME (a VM of another host) sends every API call there too.
  const pageHost = new URLSearchParams(location.search).get("host");

  function withHost(path) {
    if (!pageHost || !path.startsWith("/api/v1/") || path.startsWith("/api/v1/hosts")) return path;
    const url = new URL(path, location.origin);
    if (!url.searchParams.has("host") && !url.searchParams.has("all_hosts")) url.searchParams.set("host", pageHost);
    return url.pathname + url.search;
  }

  async function api(method, path, body) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method !== "GET") options.headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(withHost(path), options);
    const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const message = data?.error ? data.error + (data.hint ? ` (${data.hint})` : "") : response.statusText;
      throw new Error(message);
    }
    return data;
  }

  function flash(message, isError = true) {
    const box = document.getElementById("flash");
    box.textContent = message;
    box.className = isError ? "flash error" : "flash ok";
    box.hidden = false;
    setTimeout(() => { box.hidden = true; }, 6000);
  }

  function bytes(value) {
    if (value === null || value === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = Number(value), i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(n < 10 && i ? 1 : 0)}\u00a0${units[i]}`;  // no-break space: "24 GiB" never splits
  }

  function cell(row, text) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text ?? "";
    row.appendChild(td);
    return td;
  }

  function fillTable(id, rows, columns) {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren();
    if (!rows.length) {
      // An empty table says so, rather than looking like it is still loading.
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = columns.length; td.className = "empty"; td.textContent = "none";
      tr.appendChild(td); body.appendChild(tr);
      return;
    }
    for (const item of rows) {
      const tr = document.createElement("tr");
      for (const column of columns) cell(tr, column(item));
      body.appendChild(tr);
    }
  }

  function link(href, text) {
    const a = document.createElement("a");
    a.href = href; a.textContent = text;
    return a;
  }

  function events(onEvent, onStatus, types = ["vm", "task"]) {
    const source = new EventSource("/api/v1/events");
    source.onopen = () => onStatus && onStatus("live");
    source.onerror = () => onStatus && onStatus("reconnecting…");
    for (const type of types) {
      source.addEventListener(type, (message) => onEvent(JSON.parse(message.data)));
    }
    return source;
  }

  async function waitForTask(id, onProgress) {
    for (;;) {
      const task = await api("GET", `/api/v1/tasks/${encodeURIComponent(id)}`);
      onProgress && onProgress(task);
      if (!["queued", "running"].includes(task.state)) return task;
      await new Promise((resolve) => setTimeout(resolve, 700));
    }
  }

  // A destructive action asks for the thing's name to be typed, like the VM page does; the
  // Delete button stays disabled until it matches, so a stray Enter deletes nothing.
  function confirmByName(question, expected) {
    const dialog = document.getElementById("confirm-dialog");
    const input = document.getElementById("confirm-name");
    const ok = document.getElementById("confirm-ok");
    document.getElementById("confirm-question").textContent = question;
    document.getElementById("confirm-expected").textContent = expected;
    input.value = "";
    ok.disabled = true;
    input.oninput = () => { ok.disabled = input.value !== expected; };
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" && input.value === expected), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      input.focus();
    });
  }

  function button(text, onClick, className = "") {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = text; b.className = className;
    if (onClick) b.addEventListener("click", onClick);
    return b;
  }

  // Several controls in one table cell.
  function group(...nodes) {
    const span = document.createElement("span");
    span.className = "row-actions";
    for (const node of nodes) if (node) span.append(node);
    return span;
  }

  // Errors of a form go next to it, in words, and stay until the next try.
  function showError(element, err) {
    element.textContent = err ? (err.message || String(err)) : "";
    element.hidden = !err;
  }

  // Runs an action for a form: clears its error line, shows a failure there, refreshes on success.
  async function attempt(errorElement, action, refresh) {
    showError(errorElement, null);
    try {
      const result = await action();
      if (refresh) await refresh();
      return result;
    } catch (err) {
      showError(errorElement, err);
      return undefined;
    }
  }

  // Audit and task times are stored in UTC: say so rather than let them pass for local time.
  function utc(iso) {
    if (!iso) return "–";
    return `${iso.replace("T", " ").slice(0, 19)} UTC`;
  }

  return { api, pageHost, flash, bytes, fillTable, link, events, waitForTask, confirmByName, button, group, showError, attempt, utc };
})();

// ---------------------------------------------------------------------------------- pages
const pages = {
  login() {
    document.getElementById("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = document.getElementById("login-error");
      try {
        await kvmgr.api("POST", "/api/v1/auth/login", {
          name: document.getElementById("login-name").value,
          password: document.getElementById("login-password").value,
        });
        location.href = sameOriginPath(new URLSearchParams(location.search).get("next"));
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    });
  },

  async dashboard() {
    // The VM list comes from /api/v1/vms when something changes (a lifecycle or task event, or a
    // stats sample whose VMs or states differ from the table); CPU and memory come pushed in the
    // server's "stats" events: one bulk libvirt call per interval for all open dashboards.
    let rows = [], live = new Map();
    const cpu = (vm) => {
      const rate = live.get(vm.name);
      if (!rate || rate.state !== "running" || rate.cpu_percent == null) return "–";
      return `${rate.cpu_percent.toFixed(0)} %`;
    };
    const memory = (vm) => {
      const rate = live.get(vm.name);
      if (rate && rate.memory_used != null) {
        return `${kvmgr.bytes(rate.memory_used)} used of ${kvmgr.bytes(rate.memory_total)}`;
      }
      return `${kvmgr.bytes(vm.memory)} / ${kvmgr.bytes(vm.max_memory)}`;
    };
    // Which host's VMs: all of them (one parallel request), or the one picked; the live stats
    // come from the server's own host, so only its rows get them.
    const filter = document.getElementById("host-filter");
    const own = document.getElementById("vm-table").dataset.ownHost;
    const ownRows = () => rows.filter((vm) => (vm.host ?? own) === own && vm.name);
    const render = () => {
      const vmsShown = rows.filter((vm) => vm.name);
      document.getElementById("vm-count").textContent = vmsShown.length;
      const hostOf = (vm) => vm.host ?? filter.value ?? own;
      kvmgr.fillTable("vm-table", rows, [
        (vm) => hostOf(vm),
        (vm) => (vm.name ? kvmgr.link(`/vms/${encodeURIComponent(vm.name)}?host=${encodeURIComponent(hostOf(vm))}`, vm.name) : "–"),
        (vm) => (vm.error ? `${vm.state}: ${vm.error}` : vm.state_reason ? `${vm.state} (${vm.state_reason})` : vm.state),
        (vm) => vm.vcpus ?? "–",
        (vm) => (hostOf(vm) === own ? cpu(vm) : "–"),
        (vm) => (vm.name ? (hostOf(vm) === own ? memory(vm) : `${kvmgr.bytes(vm.memory)} / ${kvmgr.bytes(vm.max_memory)}`) : "–"),
        addresses,
        (vm) => vm.owner ?? "–",
      ]);
    };
    // Each address with where it was seen (lease, agent, arp...).
    const addresses = (vm) => {
      const span = document.createElement("span");
      span.className = "addresses";
      for (const a of vm.addresses ?? []) {
        if (span.childNodes.length) span.append(", ");
        const source = document.createElement("span");
        source.className = "addr-source";
        source.textContent = ` (${a.source})`;
        span.append(a.ip, source);
      }
      if (!span.childNodes.length) span.textContent = "–";
      return span;
    };
    const refresh = async () => {
      const query = filter.value ? `host=${encodeURIComponent(filter.value)}` : "all_hosts=true";
      rows = await kvmgr.api("GET", `/api/v1/vms?${query}&ips=true`);
      render();
    };
    // A guest gets its address some seconds after it starts, with no event to say so: look
    // again while a running VM shows none.
    setInterval(() => {
      if (rows.some((vm) => vm.state === "running" && !vm.addresses?.length)) refresh();
    }, 10000);
    const onStats = (event) => {
      live = new Map(event.vms.map((rate) => [rate.name, rate]));
      const mine = ownRows();
      const watching = !filter.value || filter.value === own;
      const changed = watching && (mine.length !== live.size ||
        mine.some((vm) => !live.has(vm.name) || live.get(vm.name).state !== vm.state));
      if (changed) refresh(); else render();
    };
    const hosts = await kvmgr.api("GET", "/api/v1/hosts").catch(() => []);
    for (const h of hosts) filter.add(new Option(h.reachable ? h.name : `${h.name} (down)`, h.name));
    filter.value = kvmgr.pageHost && hosts.some((h) => h.name === kvmgr.pageHost) ? kvmgr.pageHost : "";
    filter.addEventListener("change", refresh);
    const refreshTasks = async () => renderTasks(await kvmgr.api("GET", "/api/v1/tasks?limit=10"));
    refresh(); refreshTasks();
    kvmgr.events(
      (event) => (event.type === "stats" ? onStats(event)
        : event.type === "vm" ? refresh() : refreshTasks()),
      (status) => { document.getElementById("events-status").textContent = `events: ${status}`; },
      ["vm", "task", "stats"],
    );
  },

  async create() {
    const form = document.getElementById("create-form");
    if (!form) return;
    const [isos, networks, images, pools] = await Promise.all([
      kvmgr.api("GET", "/api/v1/isos").catch(() => []),
      kvmgr.api("GET", "/api/v1/networks").catch(() => []),
      kvmgr.api("GET", "/api/v1/images").catch(() => []),
      kvmgr.api("GET", "/api/v1/pools").catch(() => []),
    ]);
    const poolSelect = document.getElementById("vm-pool");
    for (const pool of pools.filter((p) => p.active)) {
      poolSelect.add(new Option(`${pool.name} — ${kvmgr.bytes(pool.available)} free`, pool.name));
    }
    // Typing in the unattended fields means an unattended install: without this, a form
    // filled in but not ticked made a plain install and dropped the user and key silently.
    for (const id of ["u-user", "u-password", "u-root-password", "u-ssh-key", "u-product-key", "u-hostname"]) {
      document.getElementById(id).addEventListener("input", () => {
        document.getElementById("unattended").checked = true;
      });
    }
    const isoSelect = document.getElementById("iso");
    for (const iso of isos) isoSelect.add(new Option(`${iso.name} — ${iso.os_name}`, iso.name));
    const imageSelect = document.getElementById("image");
    for (const image of images) imageSelect.add(new Option(`${image.name} — ${image.os_id}`, image.name));
    const value = (id) => document.getElementById(id).value.trim();
    const showSources = () => {
      const iso = isos.find((item) => item.name === isoSelect.value);
      const kind = iso && !imageSelect.value ? iso.install_script : null;
      document.getElementById("unattended-set").hidden = !kind;
      document.getElementById("unattended-kind").textContent = kind || "";
      // Windows (an autounattend.xml): a product key, an Administrator password, a required
      // user; no SSH key, which Windows Setup has no place for.
      const windows = kind === "autounattend";
      for (const id of ["u-product-key-row", "u-windows-note", "u-user-required", "u-hostname-windows"]) {
        document.getElementById(id).hidden = !windows;
      }
      document.getElementById("u-ssh-key-row").hidden = windows;
      document.getElementById("u-root-label").textContent = windows ? "Administrator password" : "Root password";
      document.getElementById("cloud-set").hidden = !imageSelect.value;
      // An ISO without a script is said so, rather than the section silently missing.
      const none = document.getElementById("unattended-none");
      none.hidden = !iso || Boolean(kind) || Boolean(imageSelect.value);
      none.textContent = iso && !kind
        ? `No unattended install: osinfo-db has no install script (kickstart, preseed or Windows answer file) for ${iso.os_name}; install it at the console.`
        : "";
    };
    isoSelect.addEventListener("change", showSources);
    imageSelect.addEventListener("change", () => {
      if (imageSelect.value) isoSelect.value = "";
      // The ISO's "Detected:" line no longer applies once the ISO is cleared for an image.
      const image = images.find((item) => item.name === imageSelect.value);
      document.getElementById("iso-os").textContent = image
        ? `Cloud image: ${image.os_id}, booted on an overlay with a cloud-init seed.`
        : "Pick an ISO to see the detected OS.";
      showSources();
    });
    const netSelect = document.getElementById("vm-network");
    for (const net of networks.filter((n) => n.active)) netSelect.add(new Option(net.name, net.name));
    netSelect.add(new Option("(no network)", "none"));
    isoSelect.addEventListener("change", () => {
      const iso = isos.find((item) => item.name === isoSelect.value);
      const note = document.getElementById("iso-os");
      if (!iso) { note.textContent = "No ISO: generic OS profile."; return; }
      const r = iso.recommended;
      note.textContent = `Detected: ${iso.os_name} (${iso.os_id}). Recommended: ${kvmgr.bytes(r.memory)} memory, ${r.vcpus} vCPU, ${kvmgr.bytes(r.disk)} disk.`;
      document.getElementById("vm-memory").value = `${Math.round(r.memory / 1048576)}M`;
      document.getElementById("vm-vcpus").value = r.vcpus;
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = document.getElementById("vm-name").value;
      let disk = document.getElementById("vm-disk").value.trim() || "default";
      // A picked pool applies to a plain size (or the recommended one); pool=/path= typed
      // in the disk field say where already.
      if (poolSelect.value && disk !== "none" && !disk.includes("=")) {
        disk = disk === "default" ? `pool=${poolSelect.value}` : `pool=${poolSelect.value},size=${disk}`;
      }
      const body = {
        name,
        iso: isoSelect.value || null,
        memory: document.getElementById("vm-memory").value || null,
        vcpus: Number(document.getElementById("vm-vcpus").value) || null,
        disks: disk === "none" ? [] : [disk],
        networks: [netSelect.value],
      };
      const keys = (id) => (value(id) ? [value(id)] : []);
      if (imageSelect.value) {
        body.iso = null;
        body.image = imageSelect.value;
        body.cloud_init = {
          user: value("c-user") || null, password: value("c-password") || null,
          ssh_keys: keys("c-ssh-key"), hostname: value("c-hostname") || null,
          user_data: value("c-user-data") || null,
        };
      } else if (document.getElementById("unattended").checked) {
        const iso = isos.find((item) => item.name === isoSelect.value);
        const windows = Boolean(iso) && iso.install_script === "autounattend";
        if (windows && !value("u-user")) {
          kvmgr.flash("A Windows install needs a user: Setup logs it on once, which ends the install.");
          document.getElementById("u-user").focus();
          return;
        }
        body.unattended = {
          user: value("u-user") || null, password: value("u-password") || null,
          root_password: value("u-root-password") || null,
          ssh_keys: windows ? [] : keys("u-ssh-key"),
          hostname: value("u-hostname") || null,
        };
        if (windows) body.unattended.product_key = value("u-product-key") || null;
      }
      try {
        const task = await kvmgr.api("POST", "/api/v1/vms", body);
        document.getElementById("create-task").hidden = false;
        const done = await kvmgr.waitForTask(task.id, (t) => {
          document.getElementById("create-progress").value = t.progress;
          document.getElementById("create-message").textContent = `${t.state}: ${t.message}`;
        });
        if (done.state === "done") location.href = `/vms/${encodeURIComponent(name)}`;
        else kvmgr.flash(done.error || "creation failed");
      } catch (err) { kvmgr.flash(err.message); }
    });
  },

  // networks, storage and isos: their own files (networks.js, storage.js, isos.js).

  async tasks() {
    const refresh = async () => renderTasks(await kvmgr.api("GET", "/api/v1/tasks"));
    await refresh();
    kvmgr.events((event) => event.type === "task" && refresh());
  },

  async users() {
    // Admin only (the server refuses this page to anyone else).  Role changes and deletes of
    // one's own account are left to another admin, so nobody locks themselves out by a click.
    const me = document.getElementById("users").dataset.me;
    const tableError = document.getElementById("user-error");
    const base = (name) => `/api/v1/users/${encodeURIComponent(name)}`;
    const roleControl = (u) => {
      const select = document.createElement("select");
      select.className = "user-role";
      for (const role of ["viewer", "operator", "admin"]) select.add(new Option(role, role, false, role === u.role));
      select.disabled = u.name === me;
      select.addEventListener("change", () => kvmgr.attempt(tableError,
        () => kvmgr.api("PATCH", base(u.name), { role: select.value }), refresh));
      return select;
    };
    const groupControl = (u) => {
      // Empty takes the user out of their group: access to the group's objects ends at once.
      const input = document.createElement("input");
      input.className = "user-group";
      input.maxLength = 64;
      input.placeholder = "no group";
      input.value = u.group ?? "";
      input.addEventListener("change", () => kvmgr.attempt(tableError,
        () => kvmgr.api("PATCH", base(u.name), { group: input.value || null }), refresh));
      return input;
    };
    const actions = (u) => {
      if (u.name === me) return "(you)";
      return kvmgr.button("delete…", async () => {
        if (!await kvmgr.confirmByName(`Delete user ${u.name}? Their VMs stay.`, u.name)) return;
        await kvmgr.attempt(tableError, () => kvmgr.api("DELETE", base(u.name)), refresh);
      }, "danger");
    };
    const refresh = async () => kvmgr.fillTable("user-table", await kvmgr.api("GET", "/api/v1/users"),
      [(u) => u.name, roleControl, groupControl, (u) => kvmgr.utc(u.created), actions]);
    await refresh();
    document.getElementById("user-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const made = await kvmgr.attempt(document.getElementById("user-form-error"), () =>
        kvmgr.api("POST", "/api/v1/users", {
          name: document.getElementById("user-name").value,
          password: document.getElementById("user-password").value,
          role: document.getElementById("user-role").value,
          group: document.getElementById("user-group").value || null,
        }), refresh);
      if (made) event.target.reset();
    });
  },

  async audit() {
    kvmgr.fillTable("audit-table", await kvmgr.api("GET", "/api/v1/audit"), [
      (a) => kvmgr.utc(a.at), (a) => a.user, (a) => a.action, (a) => a.target, (a) => a.result, (a) => a.detail,
    ]);
  },
};

function renderTasks(rows) {
  kvmgr.fillTable("task-table", rows, [
    (t) => t.kind, (t) => t.target, (t) => t.state, (t) => `${t.progress} %`,
    (t) => t.error || t.message,
  ]);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-bytes]").forEach((el) => { el.textContent = kvmgr.bytes(el.dataset.bytes); });
  document.getElementById("logout")?.addEventListener("click", async () => {
    await kvmgr.api("POST", "/api/v1/auth/logout").catch(() => null);
    location.href = "/login";
  });
  const page = pages[document.body.dataset.page];
  if (page) Promise.resolve(page()).catch((err) => kvmgr.flash(err.message));
});
