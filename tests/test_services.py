"""The app's cached `Services`: assembled once, from settings, on first use."""

import gc

from connections import services as services_module
from proxy import api as proxy_api
from triggers.services import trigger_services


def test_services_are_made_once_and_freeze_what_lives_as_long_as_the_process(stack):
    services_module.services.cache_clear()
    # what holds the old Services is made again from the new one (tests patch the new one)
    proxy_api._proxy.cache_clear()
    trigger_services.cache_clear()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    first = services_module.services()
    frozen = gc.get_freeze_count()
    assert frozen > 1000, "the SDK modules and clients are out of the collector's reach"
    assert services_module.services() is first
    assert gc.get_freeze_count() <= frozen, "frozen once, not again on each call"
