"""A clock the tests drive, shared by the app's services and the ServiceNow stand-in."""

from datetime import UTC, datetime, timedelta

from connections import services as services_module
from servicenow.client import ServiceNowClient


class DrivenClock:
    def __init__(self, stack) -> None:
        self.moment = datetime.now(UTC).replace(microsecond=0)
        self._servicenow = stack.servicenow.state

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self._servicenow.advance_clock(seconds)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def drive_services(clock: DrivenClock, monkeypatch):
    """The app's cached services with the driven clock and no real pauses."""
    services = services_module.services()
    monkeypatch.setattr(services, "clock", clock.now)
    monkeypatch.setattr(services, "sleep", clock.sleep)
    client = ServiceNowClient(services.policy, sleep=lambda seconds: None)
    monkeypatch.setattr(services, "servicenow", client)
    return services
