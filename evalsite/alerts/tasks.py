"""Celery tasks of the alerts app (thin: ids in, service call)."""

from celery import shared_task


@shared_task(bind=True, max_retries=None)
def webhook_deliver_task(self, delivery_id: int) -> str:
    from evalsite.alerts.services import webhook_deliver

    outcome, retry_in = webhook_deliver(delivery_id=delivery_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
    return outcome


@shared_task
def alerts_evaluate_listening_task() -> list[int]:
    from evalsite.alerts.listening import alerts_evaluate_listening_all

    return alerts_evaluate_listening_all()
