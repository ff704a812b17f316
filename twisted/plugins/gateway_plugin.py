"""Makes ``twistd gateway`` exist; the application itself is imported lazily."""
from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "gateway",
    "gateway.tap",
    "A reverse proxy and front door: TLS, balancing, on-disk cache, spooling.",
    "gateway",
)
