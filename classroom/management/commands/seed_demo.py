import json

from django.core.management.base import BaseCommand

from classroom.services.demo import demo_seed


class Command(BaseCommand):
    help = "Create (idempotently) demo users and a class, and print their logins and URLs."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        demo = demo_seed()
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
