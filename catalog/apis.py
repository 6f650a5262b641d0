"""The catalog over the REST API: published products for anyone, publishing for staff."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from catalog import selectors, services
from catalog.models import Product
from portal.apis import ApiPagination, PorticoApi


class ProductCategorySerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()


class ProductPlanSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_day = serializers.IntegerField(allow_null=True)
    token_quota = serializers.IntegerField(allow_null=True)


class ProductListApi(PorticoApi):
    """Published products of this portal, by name; `q` matches every word, `kind` filters."""

    permission_classes = [AllowAny]
    pagination_class = ApiPagination

    class FilterSerializer(serializers.Serializer):
        q = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)
        kind = serializers.ChoiceField(choices=Product.Kind.choices, required=False)
        category = serializers.SlugField(required=False)

    class OutputSerializer(serializers.Serializer):
        slug = serializers.SlugField()
        name = serializers.CharField()
        kind = serializers.CharField()
        description = serializers.CharField()
        category = ProductCategorySerializer(allow_null=True)
        tags = serializers.ListField(child=serializers.CharField())
        models = serializers.SerializerMethodField()

        def get_models(self, product: Product) -> list[str]:
            # model_routes is prefetched by the selector: no query per product.
            return sorted(route.name for route in product.model_routes.all())

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        products = selectors.product_search(
            portal=request.portal,
            q=filters.validated_data["q"],
            kind=filters.validated_data.get("kind"),
            category=filters.validated_data.get("category"),
        )
        # A page of primary keys first, then its rows: see selectors.products_in_order.
        paginator = ApiPagination()
        # (The stubs only allow querysets of models here; one of ids works the same.)
        pks: list[int] | None = paginator.paginate_queryset(  # type: ignore[assignment]
            products.values_list("pk", flat=True),  # type: ignore[type-var]
            request,
            self,
        )
        page = selectors.products_in_order(products=products, pks=pks or [])
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class ProductDetailApi(PorticoApi):
    """One published product of this portal, with its plans and model names."""

    permission_classes = [AllowAny]

    class OutputSerializer(ProductListApi.OutputSerializer):
        guide_markdown = serializers.CharField(help_text="Markdown; render it sanitised.")
        plans = ProductPlanSerializer(many=True, source="plans.all")

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        product = selectors.product_get_published(portal=request.portal, slug=slug)
        return Response(self.OutputSerializer(product).data)


class ProductStatusSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    status = serializers.CharField()


class ProductPublishApi(PorticoApi):
    """Staff: publish a product (of any status) on this portal; the gateway serves it next."""

    permission_classes = [IsAuthenticated, IsAdminUser]

    @extend_schema(request=None, responses=ProductStatusSerializer)
    def post(self, request: Request, slug: str) -> Response:
        product = get_object_or_404(Product, slug=slug)
        portal = request.portal
        product = services.product_publish(
            product=product, portals=[portal] if portal is not None else []
        )
        return Response(ProductStatusSerializer(product).data)


class ProductRetireApi(PorticoApi):
    """Staff: retire a product: it leaves every portal and the gateway refuses it."""

    permission_classes = [IsAuthenticated, IsAdminUser]

    @extend_schema(request=None, responses=ProductStatusSerializer)
    def post(self, request: Request, slug: str) -> Response:
        product = services.product_retire(product=get_object_or_404(Product, slug=slug))
        return Response(ProductStatusSerializer(product).data)
