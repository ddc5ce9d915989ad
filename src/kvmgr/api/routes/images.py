"""The cloud image library, read-only here: what the create wizard offers ("from cloud image").

Importing an image reads a file on the host, which only the CLI (``kvmgr image import``) does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kvmgr.api.deps import Ctx, Viewer

router = APIRouter(prefix="/api/v1/images", tags=["images"])


@router.get("", summary="Cloud images VMs can be created from (with cloud-init)")
def list_images(_who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    from kvmgr.services.cloud_images import list_images as list_cloud_images

    return [image.as_dict() for image in list_cloud_images(ctx.conn())]
