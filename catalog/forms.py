"""Forms of the catalog pages, and of the admin's REST-to-MCP pages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms
from django.core.validators import URLValidator

from catalog.models import Category
from catalog.openapi import (
    ARGUMENT_NAME,
    MAX_DESCRIPTION,
    MAX_DOCUMENT_BYTES,
    REST_LOCATIONS,
    REST_METHODS,
    TOOL_NAME,
    OpenApiError,
    input_properties,
    load_document,
    rest_call_from_json,
    rest_call_to_json,
)
from gateway.schema import RestArgument, RestCall


class CatalogSearchForm(forms.Form):
    """The catalog's search box and category filter, read from the query string."""

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=200,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Search by name, model, tag…"}
        ),
    )
    category = forms.ChoiceField(
        label="Category",
        required=False,
        error_messages={
            "invalid_choice": "That category has no products here; showing all categories."
        },
    )

    def __init__(self, *args: object, categories: Iterable[Category], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["category"].choices = [("", "All categories")] + [  # type: ignore[attr-defined]
            (category.slug, category.name) for category in categories
        ]

    def search_arguments(self) -> dict[str, str]:
        """The valid part of the input: a bad field is reported and ignored, not fatal."""
        self.is_valid()
        cleaned = getattr(self, "cleaned_data", {})
        return {"q": cleaned.get("q") or "", "category": cleaned.get("category") or ""}


# REST-to-MCP (admin) ------------------------------------------------------------------------


class OpenApiImportForm(forms.Form):
    """An OpenAPI document to import: uploaded, or fetched from a URL."""

    url = forms.URLField(
        label="Document URL",
        required=False,
        max_length=2000,
        assume_scheme="https",
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Fetched once, now, without following redirects. It must be a public "
        "address unless PORTICO_EGRESS_ALLOW allows it.",
        widget=forms.URLInput(
            attrs={"size": 80, "placeholder": "https://api.example.com/openapi.json"}
        ),
    )
    document = forms.FileField(
        label="Or upload it",
        required=False,
        help_text=f"OpenAPI 3.0 or 3.1, JSON or YAML, up to {MAX_DOCUMENT_BYTES >> 20} MiB.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        url, upload = cleaned.get("url"), cleaned.get("document")
        if not self.errors and bool(url) == bool(upload):
            raise forms.ValidationError("Give either the document's URL or the file, not both.")
        if upload is not None and upload.size > MAX_DOCUMENT_BYTES:
            self.add_error(
                "document",
                f"The file is larger than {MAX_DOCUMENT_BYTES >> 20} MiB, which is as much as "
                "Portico imports.",
            )
        return cleaned

    def uploaded_document(self) -> dict[str, Any]:
        """The uploaded file, parsed; raises ``ValidationError`` saying what is wrong."""
        upload = self.cleaned_data["document"]
        try:
            return load_document(upload.read(MAX_DOCUMENT_BYTES + 1))
        except OpenApiError as exc:
            raise forms.ValidationError(str(exc)) from None


ARGUMENT_TYPES = ["string", "integer", "number", "boolean", "array", "object"]
LOCATION_LABELS = {
    "path": "path: fills {field} in the path",
    "query": "query parameter",
    "header": "header",
    "body": "body: a field of the JSON body",
    "whole_body": "whole body: the argument is the JSON body",
}


class RestToolForm(forms.Form):
    """A REST tool defined by hand: what the model sees, and the request it makes."""

    name = forms.RegexField(
        regex=TOOL_NAME,
        max_length=64,
        help_text="What apps call it: letters, digits, _ and -, at most 64. It cannot be "
        "changed later (apps' allow-lists name it).",
        error_messages={"invalid": "Use letters, digits, _ and - only (at most 64)."},
    )
    title = forms.CharField(required=False, max_length=200, help_text="A short display name.")
    description = forms.CharField(
        max_length=MAX_DESCRIPTION,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text="What the tool does and when to use it: the model reads this.",
    )
    method = forms.ChoiceField(choices=[(method, method) for method in REST_METHODS])
    path = forms.CharField(
        max_length=2000,
        widget=forms.TextInput(attrs={"size": 60, "placeholder": "/pets/{id}"}),
        help_text="After the upstream's base URL; each {name} is filled by a path argument.",
    )
    select = forms.CharField(
        label="Select",
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "data.items"}),
        help_text="A dotted path into the JSON answer that becomes the result (empty: all of "
        "it), e.g. data.items or items.0.name.",
    )
    read_only = forms.BooleanField(
        label="Read-only", required=False, help_text="It changes nothing (readOnlyHint)."
    )
    destructive = forms.BooleanField(
        required=False, help_text="It may delete or overwrite data (destructiveHint)."
    )

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            self.fields["name"].disabled = True


class RestArgumentForm(forms.Form):
    """One argument: its name and type for the model, where it goes in the request."""

    name = forms.RegexField(
        regex=ARGUMENT_NAME,
        max_length=64,
        error_messages={"invalid": "Letters, digits, _ . and - only (at most 64)."},
        widget=forms.TextInput(attrs={"size": 16}),
    )
    location = forms.ChoiceField(
        label="Goes in", choices=[(value, LOCATION_LABELS[value]) for value in REST_LOCATIONS]
    )
    field = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"size": 14}),
        help_text="Its name there, if not the argument's.",
    )
    type = forms.ChoiceField(choices=[(kind, kind) for kind in ARGUMENT_TYPES])
    required = forms.BooleanField(required=False)
    description = forms.CharField(
        required=False, max_length=2000, widget=forms.TextInput(attrs={"size": 40})
    )


RestArgumentFormSet = forms.formset_factory(
    RestArgumentForm, extra=3, can_delete=True, max_num=100, validate_max=True
)


def rest_tool_initial(
    definition: dict[str, Any], call: RestCall
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The forms' initial data for an existing tool."""
    annotations = definition.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    tool = {
        "name": definition.get("name", ""),
        "title": definition.get("title", ""),
        "description": definition.get("description", ""),
        "method": call.method,
        "path": call.path,
        "select": call.select,
        "read_only": annotations.get("readOnlyHint") is True,
        "destructive": annotations.get("destructiveHint") is True,
    }
    properties = input_properties(definition)
    schema = definition.get("inputSchema")
    required = schema.get("required", []) if isinstance(schema, dict) else []
    arguments = []
    for argument in call.arguments:
        prop = properties.get(argument.name)
        prop = prop if isinstance(prop, dict) else {}
        kind = _type_of(prop)  # ["string", "null"]: the first named type
        arguments.append(
            {
                "name": argument.name,
                "location": argument.in_,
                "field": argument.field,
                "type": kind if kind in ARGUMENT_TYPES else "string",
                "required": argument.name in required,
                "description": prop.get("description", ""),
            }
        )
    return tool, arguments


def rest_tool_build(
    tool: RestToolForm,
    arguments: forms.BaseFormSet,
    *,
    previous: dict[str, Any] | None = None,
    name: str | None = None,
) -> tuple[dict[str, Any], RestCall]:
    """The MCP definition and the REST call the (valid) forms describe.

    Editing a tool (``previous``, its definition) keeps what the form does not show of
    an argument whose type is unchanged (an imported enum, format or item schema).
    Raises ``ValidationError`` listing what could not work.
    """
    data = tool.cleaned_data
    previous_properties = input_properties(previous or {})
    properties: dict[str, Any] = {}
    required: list[str] = []
    rest_arguments: list[RestArgument] = []
    for form in arguments.forms:
        row = getattr(form, "cleaned_data", None)
        if not row or row.get("DELETE") or not row.get("name"):
            continue
        kept = previous_properties.get(row["name"])
        schema: dict[str, Any] = {"type": row["type"]}
        if isinstance(kept, dict) and _type_of(kept) == row["type"]:
            schema = dict(kept)  # its type as it was: ["string", "null"] stays nullable
        if row["description"]:
            schema["description"] = row["description"]
        else:
            schema.pop("description", None)
        properties[row["name"]] = schema
        if row["required"] or row["location"] == "path":
            required.append(row["name"])
        field = row["field"] if row["field"] != row["name"] else ""
        rest_arguments.append(RestArgument(name=row["name"], in_=row["location"], field=field))
    input_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        input_schema["required"] = required
    definition: dict[str, Any] = {"name": name or data["name"]}
    if data["title"]:
        definition["title"] = data["title"]
    definition["description"] = data["description"]
    definition["inputSchema"] = input_schema
    annotations: dict[str, Any] = {"readOnlyHint": bool(data["read_only"])}
    if data["destructive"]:
        annotations["destructiveHint"] = True
    definition["annotations"] = annotations
    try:
        call = RestCall(
            method=data["method"],
            path=data["path"],
            arguments=rest_arguments,
            select=data["select"],
        )
        # The constructor does not check constraints: decoding what it encodes does.
        call = rest_call_from_json(rest_call_to_json(call))
    except ValueError as exc:
        raise forms.ValidationError(str(exc)) from None
    return definition, call


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    return kind if isinstance(kind, str) else None
