"""factory_boy factories for the portal's models (keys and secrets through the services)."""

import factory
from django.utils import timezone

from integrations import models
from integrations.webhooks import generate_secret


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Tenant

    owner = factory.Sequence(lambda n: f"tenant{n:04d}owner")
    name = factory.Sequence(lambda n: f"Tenant {n}")
    engine_signing_secret = factory.LazyFunction(generate_secret)


class PartnerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Partner
        skip_postgeneration_save = True  # the hook writes a SigningSecret, not the partner

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Partner {n}")
    base_url = "http://127.0.0.1:9"
    incoming_message_path = "/incoming"
    send_message_path = "/send"

    @factory.post_generation
    def secret(self, create, extracted, **kwargs):
        if create:
            models.SigningSecret.objects.create(partner=self, secret=extracted or generate_secret())


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Contact

    tenant = factory.SubFactory(TenantFactory)
    contact_id = factory.Sequence(lambda n: f"contact{n}")
    customer_name = "Farhan Akbar"
    channel = "whatsapp"
    account_id = "628128778222"
    first_seen = factory.LazyFunction(timezone.now)
    last_seen = factory.LazyFunction(timezone.now)


class TicketFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Ticket

    tenant = factory.SubFactory(TenantFactory)
    ticket_number = factory.Sequence(lambda n: f"ticket{n}")
    channel = "whatsapp"
    account_id = "628128778222"
    customer_name = "Farhan Akbar"
    created_date = factory.LazyFunction(timezone.now)
