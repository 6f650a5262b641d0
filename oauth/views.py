"""The authorization server's endpoints (RFC 8414 metadata, RFC 7591 registration,
the authorization and token endpoints of OAuth 2.1, RFC 7009 revocation) and the
developer's consent page.

Protocol endpoints answer JSON with ``Cache-Control: no-store`` and RFC 6749 errors;
they are CSRF-exempt (no cookie authenticates them) and open to cross-origin calls, as
browser-based MCP clients need. The consent page is the opposite: signed in, CSRF on
the decision, never framed, never cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    QueryDict,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from catalog.models import Product
from oauth import protocol, selectors, services
from oauth.models import OAuthClient
from oauth.protocol import OAuthError

View = Callable[..., HttpResponse]

MAX_REGISTRATION_BYTES = 16 * 1024
MAX_CLIENT_NAME = 120
REGISTRATIONS_PER_HOUR = 20  # per source address
TOKEN_FAILURES_PER_MINUTE = 30  # per source address; then 429 until the minute is over
_FORM = "application/x-www-form-urlencoded"
# Parameters that carry secrets: accepted in a POST body only, never in a URL (which
# ends up in logs and histories).
_SECRET_PARAMS = ("code", "code_verifier", "refresh_token", "token")


# Helpers ---------------------------------------------------------------------------------


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


def _json(data: Mapping[str, object], status: int = 200) -> HttpResponse:
    return _no_store(JsonResponse(data, status=status))


def _error(exc: OAuthError) -> HttpResponse:
    response = _json(exc.as_json(), exc.status)
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Basic realm="portico"'
    return response


def _cors(view: View) -> View:
    """Let browser-based clients call a protocol endpoint from any origin. Safe because
    no cookie authenticates these endpoints (and credentials are not allowed)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if request.method == "OPTIONS":
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, MCP-Protocol-Version"
            )
            response["Access-Control-Max-Age"] = "86400"
        else:
            response = view(request, *args, **kwargs)
        response["Access-Control-Allow-Origin"] = "*"
        return response

    return wrapped


def _address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def _count(kind: str, address: str, window: int) -> int:
    """How many times ``kind`` happened from ``address`` in the current window,
    counting this one. Kept in the cache: shared by the portal's processes with Redis,
    per process without (the embedded default)."""
    key = f"portico:oauth:{kind}:{address}"
    if cache.add(key, 1, timeout=window):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        return 1


def _over(kind: str, address: str, limit: int) -> bool:
    return int(cache.get(f"portico:oauth:{kind}:{address}") or 0) >= limit


def _single_values(params: QueryDict) -> None:
    """RFC 6749 §3.1: parameters must not be repeated."""
    for name in params:
        if len(params.getlist(name)) > 1:
            raise OAuthError("invalid_request", f"The {name} parameter is repeated.")


def _form_params(request: HttpRequest) -> QueryDict:
    """The POST body's parameters; secrets in the URL are refused."""
    if any(name in request.GET for name in _SECRET_PARAMS):
        raise OAuthError(
            "invalid_request",
            "Send the parameters in the form-encoded body of the POST, never in the URL.",
        )
    if request.content_type != _FORM:
        raise OAuthError("invalid_request", f"Send the parameters as {_FORM}.")
    _single_values(request.POST)
    return request.POST


def _client(params: QueryDict) -> OAuthClient:
    client = selectors.client_get(client_id=params.get("client_id", ""))
    if client is None:
        raise OAuthError(
            "invalid_client",
            "Unknown client_id: register the client first (see registration_endpoint "
            "in /.well-known/oauth-authorization-server).",
            status=401,
        )
    return client


def _required(params: QueryDict, name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise OAuthError("invalid_request", f"The {name} parameter is required.")
    return value


# Metadata and registration ---------------------------------------------------------------


@_cors
@require_GET
def server_metadata(request: HttpRequest) -> HttpResponse:
    """RFC 8414 authorization server metadata."""
    endpoint = protocol.endpoint_url
    response = JsonResponse(
        {
            "issuer": protocol.issuer(),
            "authorization_endpoint": endpoint(reverse("oauth:authorize")),
            "token_endpoint": endpoint(reverse("oauth:token")),
            "registration_endpoint": endpoint(reverse("oauth:register")),
            "revocation_endpoint": endpoint(reverse("oauth:revoke")),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": [protocol.SCOPE],
        }
    )
    response["Cache-Control"] = "public, max-age=300"
    return response


@csrf_exempt
@_cors
@require_POST
def register(request: HttpRequest) -> HttpResponse:
    """RFC 7591 dynamic client registration, of public clients only."""
    address = _address(request)
    if _count("register", address, 3600) > REGISTRATIONS_PER_HOUR:
        return _json(
            {
                "error": "temporarily_unavailable",
                "error_description": "Too many registrations from this address; try again "
                "in an hour.",
            },
            429,
        )
    try:
        metadata = _registration_metadata(request)
    except OAuthError as exc:
        return _error(exc)
    client = services.client_register(
        client_name=metadata.client_name,
        redirect_uris=metadata.redirect_uris,
        registered_from=None if address == "unknown" else address,
    )
    return _json(
        {
            "client_id": client.client_id,
            "client_id_issued_at": int(client.created_at.timestamp()),
            "client_name": client.client_name,
            "redirect_uris": client.redirect_uris,
            "grant_types": metadata.grant_types,
            "response_types": ["code"],
            # Whatever the client asked for: this server registers public clients,
            # which PKCE protects (RFC 7591 §3.2.1 lets it replace requested values).
            "token_endpoint_auth_method": "none",
            "scope": protocol.SCOPE,
        },
        201,
    )


@dataclass(frozen=True)
class _Metadata:
    client_name: str
    redirect_uris: list[str]
    grant_types: list[str]


def _registration_metadata(request: HttpRequest) -> _Metadata:
    def invalid(description: str) -> OAuthError:
        return OAuthError("invalid_client_metadata", description)

    if len(request.body) > MAX_REGISTRATION_BYTES:
        raise invalid(f"The registration is larger than {MAX_REGISTRATION_BYTES} bytes.")
    try:
        data = json.loads(request.body)
    except ValueError:
        raise invalid("Send the client metadata as a JSON object.") from None
    if not isinstance(data, dict):
        raise invalid("Send the client metadata as a JSON object.")
    uris = data.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > protocol.MAX_REDIRECT_URIS:
        raise OAuthError(
            "invalid_redirect_uri",
            f"redirect_uris must list 1 to {protocol.MAX_REDIRECT_URIS} URIs.",
        )
    for uri in uris:
        problem = protocol.redirect_uri_problem(uri)
        if problem:
            raise OAuthError("invalid_redirect_uri", problem)
    grant_types = data.get("grant_types", ["authorization_code", "refresh_token"])
    if (
        not isinstance(grant_types, list)
        or "authorization_code" not in grant_types
        or not set(grant_types) <= {"authorization_code", "refresh_token"}
    ):
        raise invalid("grant_types may list authorization_code (required) and refresh_token only.")
    response_types = data.get("response_types", ["code"])
    if response_types != ["code"]:
        raise invalid('response_types must be ["code"].')
    scope = data.get("scope")
    if scope is not None:
        try:
            protocol.parse_scope(scope if isinstance(scope, str) else "?")
        except OAuthError as exc:
            raise invalid(exc.description) from None
    name = data.get("client_name", "")
    if not isinstance(name, str) or len(name) > MAX_CLIENT_NAME:
        raise invalid(f"client_name must be text of at most {MAX_CLIENT_NAME} characters.")
    name = "".join(c for c in name if c.isprintable()).strip() or "Unnamed client"
    return _Metadata(
        client_name=name,
        redirect_uris=list(dict.fromkeys(uris)),
        grant_types=list(dict.fromkeys(grant_types)),
    )


# Authorization and consent ---------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationRequest:
    client: OAuthClient
    redirect_uri: str
    state: str
    code_challenge: str
    target: protocol.ResourceTarget
    product: Product | None
    scope: str

    def fields(self) -> dict[str, str]:
        """The request, as the consent form sends it back."""
        return {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "resource": self.target.resource,
            "scope": self.scope,
        }


class _Unredirectable(Exception):
    """The client or its redirect URI is not known: nowhere safe to send an error."""


@dataclass
class _ClientError(Exception):
    """An error the client should hear about at its redirect URI."""

    error: OAuthError
    redirect_uri: str
    state: str
    client: OAuthClient


def _authorization_request(params: QueryDict) -> AuthorizationRequest:
    for name in ("client_id", "redirect_uri"):
        if len(params.getlist(name)) > 1:
            raise _Unredirectable(f"The {name} parameter is repeated.")
    client = selectors.client_get(client_id=params.get("client_id", ""))
    if client is None:
        raise _Unredirectable(
            "The application that sent you here is not registered with this portal "
            "(unknown client_id)."
        )
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        raise _Unredirectable(
            "The application that sent you here asked to return to an address it did not "
            "register (redirect_uri)."
        )
    state = params.get("state", "")[: protocol.MAX_STATE_LENGTH]
    try:
        _single_values(params)
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not protocol.challenge_is_well_formed(
            challenge
        ):
            raise OAuthError(
                "invalid_request",
                "PKCE is required: send code_challenge (43 base64url characters) with "
                "code_challenge_method=S256.",
            )
        scope = protocol.parse_scope(params.get("scope"))
        target = protocol.parse_resource(params.get("resource"))
        product = selectors.mcp_product_for(target=target)
    except OAuthError as exc:
        raise _ClientError(exc, redirect_uri, state, client) from None
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        target=target,
        product=product,
        scope=scope,
    )


def _page(
    request: HttpRequest, template: str, context: dict[str, object], status: int
) -> HttpResponse:
    response = render(request, template, context, status=status)
    # The consent page must never be framed (clickjacking an "Approve") nor cached.
    response["Content-Security-Policy"] = "frame-ancestors 'none'"
    response["X-Frame-Options"] = "DENY"
    return _no_store(response)


def _error_page(request: HttpRequest, message: str, back: str | None = None) -> HttpResponse:
    return _page(
        request,
        "oauth/error.html",
        {"message": message, "back": back, "back_host": urlsplit(back).netloc if back else ""},
        400,
    )


def _client_error_page(request: HttpRequest, exc: _ClientError) -> HttpResponse:
    # Shown rather than redirected at once: anyone can register a client with any
    # https redirect URI, so an automatic error redirect would make this endpoint an
    # open redirector (RFC 9700 §4.11.2). The developer follows the link if they wish.
    params = {**exc.error.as_json(), **_response_params(exc.state)}
    return _error_page(
        request,
        exc.error.description,
        protocol.redirect_with(exc.redirect_uri, params),
    )


def _response_params(state: str) -> dict[str, str]:
    """What every authorization response carries besides its result: the client's
    ``state``, and ``iss`` (RFC 9207), which lets a client talking to several
    authorization servers tell whose answer this is. Support is not advertised in the
    metadata: clients that check it when present then do, and the others need not."""
    return {**({"state": state} if state else {}), "iss": protocol.issuer()}


def _consent(
    request: HttpRequest, auth: AuthorizationRequest, *, error: str = "", status: int = 200
) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]
    apps = selectors.consent_apps(user=user, product=auth.product)
    return _page(
        request,
        "oauth/authorize.html",
        {
            "auth": auth,
            "client": auth.client,
            "product": auth.product,
            "apps": apps,
            "fields": auth.fields(),
            "redirect_host": urlsplit(auth.redirect_uri).netloc,
            "error": error,
        },
        status,
    )


@login_required
@require_GET
def authorize(request: HttpRequest) -> HttpResponse:
    """The authorization endpoint: the consent page."""
    try:
        auth = _authorization_request(request.GET)
    except _Unredirectable as exc:
        return _error_page(request, str(exc))
    except _ClientError as exc:
        return _client_error_page(request, exc)
    return _consent(request, auth)


@login_required
@require_POST
def authorize_decide(request: HttpRequest) -> HttpResponse:
    """The developer's answer on the consent page: back to the client with a code, or
    with ``access_denied``."""
    try:
        auth = _authorization_request(request.POST)
    except _Unredirectable as exc:
        return _error_page(request, str(exc))
    except _ClientError as exc:
        return _client_error_page(request, exc)
    extra = _response_params(auth.state)
    if request.POST.get("decision") != "approve":
        denied = {
            "error": "access_denied",
            "error_description": "The developer did not approve.",
            **extra,
        }
        return _no_store(HttpResponseRedirect(protocol.redirect_with(auth.redirect_uri, denied)))
    user: User = request.user  # type: ignore[assignment]
    chosen = request.POST.get("consumer", "")
    # Only the apps the page offered: the user's own, usable, subscribed ones.
    app = next(
        (
            app
            for app in selectors.consent_apps(user=user, product=auth.product)
            if str(app.consumer.pk) == chosen
        ),
        None,
    )
    if app is None:
        return _consent(request, auth, error="Choose one of your apps listed.", status=400)
    code = services.authorization_approve(
        user=user,
        client=auth.client,
        consumer=app.consumer,
        product=auth.product,
        resource=auth.target.resource,
        scope=auth.scope,
        redirect_uri=auth.redirect_uri,
        code_challenge=auth.code_challenge,
    )
    return _no_store(
        HttpResponseRedirect(protocol.redirect_with(auth.redirect_uri, {"code": code, **extra}))
    )


# Token and revocation --------------------------------------------------------------------


@csrf_exempt
@_cors
@require_POST
def token(request: HttpRequest) -> HttpResponse:
    """The token endpoint: the authorization-code and refresh-token grants."""
    address = _address(request)
    if _over("token-failure", address, TOKEN_FAILURES_PER_MINUTE):
        return _json(
            {
                "error": "temporarily_unavailable",
                "error_description": "Too many failed token requests from this address; "
                "wait a minute.",
            },
            429,
        )
    try:
        if "HTTP_AUTHORIZATION" in request.META:
            raise OAuthError(
                "invalid_client",
                "Clients here are public: send client_id in the body and no Authorization header.",
                status=401,
            )
        params = _form_params(request)
        client = _client(params)
        grant_type = params.get("grant_type", "")
        resource = params.get("resource") or None
        if grant_type == "authorization_code":
            tokens = services.token_for_code(
                client=client,
                code=_required(params, "code"),
                redirect_uri=_required(params, "redirect_uri"),
                code_verifier=_required(params, "code_verifier"),
                resource=resource,
            )
        elif grant_type == "refresh_token":
            tokens = services.token_for_refresh(
                client=client,
                refresh_token=_required(params, "refresh_token"),
                resource=resource,
                scope=params.get("scope") or None,
            )
        else:
            raise OAuthError(
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token.",
            )
    except OAuthError as exc:
        _count("token-failure", address, 60)
        return _error(exc)
    return _json(tokens.as_json())


@csrf_exempt
@_cors
@require_POST
def revoke(request: HttpRequest) -> HttpResponse:
    """RFC 7009 token revocation: a refresh or access token ends its whole grant."""
    try:
        params = _form_params(request)
        client = _client(params)
        services.token_revoke(client=client, token=_required(params, "token"))
    except OAuthError as exc:
        return _error(exc)
    return _no_store(HttpResponse(status=200))


# The developer's connections -------------------------------------------------------------


@login_required
@require_POST
def grant_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Disconnect an MCP client: revoke its grant (listed on the Tokens page)."""
    grant = selectors.grant_get_for_user(user=request.user, pk=pk)
    services.grant_revoke(grant=grant, reason=f"revoked by {request.user.get_username()}")
    messages.success(request, f"Disconnected “{grant.client.client_name}”.")
    return redirect("portal:tokens")
