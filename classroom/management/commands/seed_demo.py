import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from classroom.services.demo import demo_password_get, demo_seed


class Command(BaseCommand):
    help = (
        "Create (idempotently) demo users and a class, and print their logins and URLs. Only on the "
        "embedded default unless asked for (--allow-production or CLASSCAST_DEMO_DATA=true)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--allow-production", action="store_true",
            help="create the demo logins on a deployment that is not the embedded default too",
        )

    def handle(self, *args, **options):
        if not (settings.CLASSCAST_EMBEDDED_DEFAULT or settings.CLASSCAST_DEMO_DATA or options["allow_production"]):
            raise CommandError(
                "Not creating demo data: this is not the one-machine embedded default (DATABASE_URL is not "
                "SQLite, or REDIS_URL is set), and demo logins there are a staff account and class anyone "
                "who reads this output can use. To create them anyway, pass --allow-production or set "
                "CLASSCAST_DEMO_DATA=true."
            )
        password, new = demo_password_get()
        demo = demo_seed(password=password, reset_passwords=new)
        if options["json"]:
            self.stdout.write(json.dumps(demo))
            return
        self.stdout.write(f"Demo class {demo['class_id']}")
        self.stdout.write(f"  instructor  {demo['instructor']['username']} / {demo['instructor']['password']}")
        for student in demo["students"]:
            self.stdout.write(f"  student     {student['username']} / {student['password']}")
        self.stdout.write(f"  admin       {demo['admin']['username']} / {demo['admin']['password']}  (/admin/)")
        for name, url in demo["urls"].items():
            self.stdout.write(f"  {name:<11} {url}")
        self.stdout.write(f"  (this install's demo password, kept in {settings.VAR_DIR / 'demo_password'})")
