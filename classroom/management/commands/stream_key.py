from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from classroom.hls_views import hls_operator_token_issue, hls_tokens_revoke
from classroom.models import Classroom
from classroom.services.broadcast import studio_info


class Command(BaseCommand):
    help = (
        "Print a class's RTMP ingest URL with its stream key (for OBS/ffmpeg) and the playlist it feeds. A private "
        "class's playlist carries an operator token, valid until --revoke-tokens or a stream key rotation."
    )

    def add_arguments(self, parser):
        parser.add_argument("class_id", type=int)
        parser.add_argument(
            "--revoke-tokens", action="store_true",
            help="Refuse every operator playlist link printed so far (a leaked link), then print a new one.",
        )

    def handle(self, *args, **options):
        classroom = Classroom.objects.filter(pk=options["class_id"]).first()
        if classroom is None:
            raise CommandError(f"no class {options['class_id']}")
        if options["revoke_tokens"]:
            generation = hls_tokens_revoke(classroom_id=classroom.pk)
            self.stderr.write(f"operator playlist links of class {classroom.pk} revoked (generation {generation})")
        playlist = reverse("classroom:hls", args=[classroom.pk, "live.m3u8"])
        if not classroom.is_public:
            playlist += f"?token={hls_operator_token_issue(classroom_id=classroom.pk)}"
        self.stdout.write(studio_info(classroom_id=classroom.pk)["publish_url"])
        self.stdout.write(playlist)
