from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self) -> None:
        # The rollup writes ask the configured event store whether it keeps the sums by end
        # user itself; the store is above them (it calls them), so they are told how here.
        from usage.eventstore.current import event_store
        from usage.rollup_writes import ask_store_keeps_users

        ask_store_keeps_users(lambda: event_store().keeps_user_rollups)
