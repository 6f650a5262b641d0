from django.apps import AppConfig


class GatewaysyncConfig(AppConfig):
    name = "gatewaysync"
    verbose_name = "Gateway sync"
