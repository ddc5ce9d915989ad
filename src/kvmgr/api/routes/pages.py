"""The web UI's pages: server-rendered Jinja2 (autoescaped) with small vanilla JS that calls the
REST API.  Pages check roles on the server like the API does; hiding a button is only courtesy,
the API refuses the action anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from kvmgr.api.deps import Admin, Ctx, Viewer, identify
from kvmgr.api.routes.host import host_info
from kvmgr.services import vms as vms_service
from kvmgr.store.models import Role
from kvmgr.store.users import Principal

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
templates = Jinja2Templates(directory=WEB_DIR / "templates")  # autoescape on for .html
router = APIRouter(include_in_schema=False)


def _optional_snapshots() -> bool:
    import importlib.util

    return importlib.util.find_spec("kvmgr.services.snapshots") is not None


def render(request: Request, who: Principal | None, name: str, **data: Any) -> HTMLResponse:
    context = {
        "request": request,
        "user": who,
        "is_operator": bool(who and who.at_least(Role.operator)),
        "is_admin": bool(who and who.at_least(Role.admin)),
        **data,
    }
    return templates.TemplateResponse(request, name, context)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, ctx: Ctx) -> Response:
    if identify(request, ctx) is not None:
        return RedirectResponse("/", status_code=303)
    return render(request, None, "login.html")


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, who: Viewer, ctx: Ctx) -> Response:
    return render(
        request, who, "dashboard.html", host=host_info(ctx.conn()), own_host=ctx.own_host()
    )


@router.get("/vms/new", response_class=HTMLResponse)
def create_page(request: Request, who: Viewer) -> Response:
    return render(request, who, "create.html")


@router.get("/vms/{name}", response_class=HTMLResponse)
def vm_page(request: Request, name: str, who: Viewer, ctx: Ctx) -> Response:
    conn = ctx.conn()
    info = vms_service.vm_info(conn, name)
    may_act = ctx.authz(conn, who).may_act_on_uuid(info["uuid"])
    return render(
        request,
        who,
        "vm.html",
        vm=info,
        may_act=may_act,
        has_snapshots=_optional_snapshots(),
    )


@router.get("/vms/{name}/vnc", response_class=HTMLResponse)
def vnc_page(request: Request, name: str, who: Viewer, ctx: Ctx) -> Response:
    info = vms_service.vm_info(ctx.conn(), name)
    return render(request, who, "vnc.html", vm=info)


@router.get("/hosts", response_class=HTMLResponse)
def hosts_page(request: Request, who: Viewer) -> Response:
    from kvmgr.control.move_limits import EVACUATE_PARALLEL, EVACUATE_PARALLEL_MAX

    return render(
        request,
        who,
        "hosts.html",
        evacuate_parallel=EVACUATE_PARALLEL,
        evacuate_max=EVACUATE_PARALLEL_MAX,
    )


@router.get("/networks", response_class=HTMLResponse)
def networks_page(request: Request, who: Viewer) -> Response:
    return render(request, who, "networks.html")


@router.get("/storage", response_class=HTMLResponse)
def storage_page(request: Request, who: Viewer) -> Response:
    return render(request, who, "storage.html")


@router.get("/isos", response_class=HTMLResponse)
def isos_page(request: Request, who: Viewer) -> Response:
    return render(request, who, "isos.html")


@router.get("/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, who: Viewer) -> Response:
    return render(request, who, "tasks.html")


@router.get("/backups", response_class=HTMLResponse)
def backups_page(request: Request, who: Viewer) -> Response:
    return render(request, who, "backups.html")


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, who: Admin) -> Response:
    return render(request, who, "users.html")


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, who: Admin) -> Response:
    return render(request, who, "audit.html")


@router.get("/api/openapi.json")
def openapi_schema(request: Request, _who: Viewer) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/api/docs", response_class=HTMLResponse)
def api_docs(request: Request, who: Viewer) -> Response:
    return render(request, who, "docs.html")
