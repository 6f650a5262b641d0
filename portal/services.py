"""Writes for portals and developers' standing on them."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO

from django.contrib.auth.models import AbstractBaseUser, User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from gateway.keys import SecretFormat, hash_key
from gatewaysync.services import gateway_changed
from portal import audit
from portal.models import Membership, PersonalAccessToken, Portal, PortalLogo

# Logos: what an admin may upload, and what is kept of it.
LOGO_MAX_UPLOAD_BYTES = 2 * 1024 * 1024
LOGO_MAX_SOURCE_PIXELS = 25_000_000  # refuse decompression bombs before decoding
LOGO_MAX_SIDE = 512
LOGO_FORMATS = {"PNG", "JPEG", "GIF", "WEBP"}


@dataclass(frozen=True, slots=True)
class LogoImage:
    png: bytes = field(repr=False)
    width: int
    height: int


def logo_from_upload(upload: IO[bytes]) -> LogoImage:
    """Decode an uploaded image and re-encode it as a bounded PNG, or raise ValidationError.

    Re-encoding keeps only pixels: an upload that is also a script, an HTML page or a
    zip (a polyglot), or that carries metadata, comes out as a plain image.
    """
    from PIL import Image, UnidentifiedImageError

    data = upload.read(LOGO_MAX_UPLOAD_BYTES + 1)
    if len(data) > LOGO_MAX_UPLOAD_BYTES:
        raise ValidationError({"logo": "The logo must be at most 2 MB."})
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in LOGO_FORMATS:
                raise ValidationError({"logo": "Upload a PNG, JPEG, GIF or WebP image."})
            if image.width * image.height > LOGO_MAX_SOURCE_PIXELS:
                raise ValidationError({"logo": "The image is too large."})
            image.seek(0)  # an animation's first frame
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValidationError({"logo": "That file is not an image we can read."}) from exc
    rgba.thumbnail((LOGO_MAX_SIDE, LOGO_MAX_SIDE))
    out = io.BytesIO()
    rgba.save(out, format="PNG", optimize=True)
    return LogoImage(png=out.getvalue(), width=rgba.width, height=rgba.height)


@transaction.atomic
def portal_set_logo(*, portal: Portal, logo: LogoImage) -> Portal:
    """Replace the portal's logo (made by ``logo_from_upload``)."""
    PortalLogo.objects.update_or_create(
        portal=portal, defaults={"image": logo.png, "width": logo.width, "height": logo.height}
    )
    portal.logo_version = hashlib.sha256(logo.png).hexdigest()[:12]
    portal.save(update_fields=["logo_version"])
    audit.record("portal.logo_set", portal)
    return portal


@transaction.atomic
def portal_clear_logo(*, portal: Portal) -> Portal:
    PortalLogo.objects.filter(portal=portal).delete()
    portal.logo_version = ""
    portal.save(update_fields=["logo_version"])
    audit.record("portal.logo_clear", portal)
    return portal


@transaction.atomic
def membership_join(*, portal: Portal, user: AbstractBaseUser) -> Membership:
    """The user's membership of ``portal``, created on first sight per its approval rule."""
    automatic = portal.developer_approval == Portal.Approval.AUTOMATIC
    membership, _ = Membership.objects.get_or_create(
        portal=portal,
        user=user,
        defaults={
            "status": Membership.Status.APPROVED if automatic else Membership.Status.PENDING,
            "decided_at": timezone.now() if automatic else None,
        },
    )
    return membership


@transaction.atomic
def membership_set_status(*, membership: Membership, status: Membership.Status) -> Membership:
    """Approve or suspend a developer; suspension cuts their apps' keys at the gateway."""
    membership.status = status
    membership.decided_at = timezone.now()
    membership.save(update_fields=["status", "decided_at"])
    audit.record(f"membership.{status}", membership)
    gateway_changed()
    return membership


# Personal access tokens: a developer's credential for the REST API from scripts. They
# have the shape of API keys (gateway/keys.py) under their own prefix, so secret scanners
# and people can tell the two apart, and the gateway, which only accepts ``portico_`` keys
# of exactly its own length and checksum, can never take one for a key.

ACCESS_TOKEN = SecretFormat("portico_pat_")
# last_used_at is a hint for the developer, not an audit trail: writing it on every
# call would turn each read of the API into a write.
ACCESS_TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


def access_token_is_well_formed(token: str) -> bool:
    """True when ``token`` has the personal-access-token shape and a matching checksum."""
    return ACCESS_TOKEN.is_well_formed(token)


def access_token_hash(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored and looked up."""
    return hash_key(token)


@transaction.atomic
def access_token_create(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[PersonalAccessToken, str]:
    """Generate a token server-side from the CSPRNG; store only its hash and prefix.

    Returns the row and the plaintext token, which exists only in this return value:
    show it once and forget it.
    """
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    plaintext = ACCESS_TOKEN.generate()
    token = PersonalAccessToken(
        user=user,
        name=name,
        token_hash=access_token_hash(plaintext),
        display_prefix=ACCESS_TOKEN.display_prefix(plaintext),
        expires_at=expires_at,
    )
    token.full_clean(exclude=["token_hash", "display_prefix"])
    token.save()
    audit.record("access_token.create", token)
    return token, plaintext


@transaction.atomic
def access_token_revoke(*, token: PersonalAccessToken) -> PersonalAccessToken:
    """Revoke a token for good; the next request that presents it gets a 401."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit.record("access_token.revoke", token)
    return token


def access_token_touch(*, token: PersonalAccessToken) -> None:
    """Record that ``token`` was just used, at most once per ``ACCESS_TOKEN_TOUCH_INTERVAL``."""
    now = timezone.now()
    if token.last_used_at is not None and token.last_used_at > now - ACCESS_TOKEN_TOUCH_INTERVAL:
        return
    # Conditional, so concurrent requests with the same token write once, not each.
    PersonalAccessToken.objects.filter(pk=token.pk).exclude(
        last_used_at__gt=now - ACCESS_TOKEN_TOUCH_INTERVAL
    ).update(last_used_at=now)
    token.last_used_at = now
