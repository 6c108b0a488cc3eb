from django.core.management.base import BaseCommand, CommandError

from classroom.hls_views import hls_token_issue
from classroom.models import Classroom
from classroom.services.broadcast import studio_info
from django.urls import reverse


class Command(BaseCommand):
    help = "Print a class's RTMP ingest URL with its stream key (for OBS/ffmpeg) and the playlist it feeds."

    def add_arguments(self, parser):
        parser.add_argument("class_id", type=int)

    def handle(self, *args, **options):
        classroom = Classroom.objects.filter(pk=options["class_id"]).first()
        if classroom is None:
            raise CommandError(f"no class {options['class_id']}")
        playlist = reverse("classroom:hls", args=[classroom.pk, "live.m3u8"])
        if not classroom.is_public:
            playlist += f"?token={hls_token_issue(classroom_id=classroom.pk)}"
        self.stdout.write(studio_info(classroom_id=classroom.pk)["publish_url"])
        self.stdout.write(playlist)
