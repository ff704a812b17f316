"""GatewayService start-up: what starting does to the process beyond listening."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase


class HeapTests(SynchronousTestCase):
    """Starting the service freezes the startup heap out of full collections."""

    def test_start_freezes_heap(self) -> None:
        """After startService, the collector's permanent generation holds the startup objects."""
        import gc

        from twisted.internet.testing import MemoryReactorClock

        from gateway.service import GatewayService
        from gateway.testing import simple_config

        gc.unfreeze()
        self.addCleanup(gc.unfreeze)
        service = GatewayService(MemoryReactorClock(), simple_config())
        service.startService()
        self.addCleanup(service.stopService)
        self.assertGreater(gc.get_freeze_count(), 1000)
