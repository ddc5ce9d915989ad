// Graphical console: noVNC (ES modules from npm) over a websocket to the VM's VNC unix socket.
import RFB from "/static/vendor/novnc/core/rfb.js";

const screen = document.getElementById("vnc-screen");
const status = document.getElementById("vnc-status");
const name = screen.dataset.name;
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

// a VM of another host (the page opened with ?host=NAME): ask that host's console
const host = new URLSearchParams(location.search).get("host");
const hostQuery = host ? `?host=${encodeURIComponent(host)}` : "";
const response = await fetch(`/api/v1/vms/${encodeURIComponent(name)}/console-token${hostQuery}`, {
  method: "POST",
  credentials: "same-origin",
  headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
  body: JSON.stringify({ kind: "vnc" }),
});
const grant = await response.json();
if (!response.ok) {
  status.textContent = grant.error || "refused";
} else {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const rfb = new RFB(screen, `${scheme}://${location.host}${grant.url}`);
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { status.textContent = "connected"; });
  rfb.addEventListener("disconnect", (event) => {
    status.textContent = event.detail.clean ? "disconnected" : "connection lost";
  });
  window.kvmgrVnc = rfb;
}
