"""What a gateway revision says about OAuth (``gateway.schema.OAuth``).

Read by the revision compiler, so it imports nothing that imports the compiler.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway import schema
from gateway.access_tokens import ACCESS_TOKEN_SECONDS
from oauth import protocol
from oauth.models import OAuthGrant

# A gateway's clock may run behind the portal's: a revoked grant stays listed this much
# longer than its last access token can live.
REVOKED_GRANT_MARGIN_SECONDS = 300


def revoked_grant_ids(*, now: datetime) -> list[int]:
    """Grants revoked while access tokens issued under them may still be unexpired.

    A grant never used has no tokens (issuing them and revoking take turns on the
    grant's row, see ``oauth.services``), so it need not travel.
    """
    since = now - timedelta(seconds=ACCESS_TOKEN_SECONDS + REVOKED_GRANT_MARGIN_SECONDS)
    return list(
        OAuthGrant.objects.filter(revoked_at__gte=since, used_at__isnull=False)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def revision_oauth(*, now: datetime) -> schema.OAuth:
    """The revision's ``oauth`` part: who issues the tokens, for which URLs, and which
    grants no longer hold."""
    return schema.OAuth(
        issuer=protocol.issuer(),
        resource_base=protocol.resource_base(),
        revoked_grants=revoked_grant_ids(now=now),
    )
