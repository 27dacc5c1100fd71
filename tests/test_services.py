"""The app's cached `Services`: assembled once, from settings, on first use."""

import gc

from connections import services as services_module


def test_services_are_made_once_and_freeze_what_lives_as_long_as_the_process(stack):
    services_module.services.cache_clear()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    first = services_module.services()
    frozen = gc.get_freeze_count()
    assert frozen > 1000, "the SDK modules and clients are out of the collector's reach"
    assert services_module.services() is first
    assert gc.get_freeze_count() <= frozen, "frozen once, not again on each call"
